"""Runs a few steps of every method on meshes of simulated CPU devices; used by test_parallel.py.

  python tests/multidevice_worker.py OUT.npz [quick]

`quick` (the default test tier) runs KIP on 8, 3 and 1 devices, robust DC on 8 and 1,
and the evaluator on 8 and 1; without it (the extended tier) every case on every mesh of
`MESHES`, and the evaluator, selections, k-means and experts on 8, 4 and 1.

Must start before JAX: it asks XLA for 8 host devices. For each case and each mesh size it saves
the synthetic images and loss after two steps, whether the step's outputs are replicated over
the mesh, and whether the compiled step communicates between devices (an all-reduce or
all-gather), so the parent test compares them without importing JAX on 8 devices itself.
"""

import os
import sys
import time

# Eight simulated devices share CI's two cores: a device thread can wait its turn longer than
# XLA:CPU's 40 s limit for a collective's rendezvous (a CI run aborted on it once), so allow 600 s;
# a real deadlock still fails, at the parent's subprocess timeout.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8"
                           + " --xla_cpu_collective_call_terminate_timeout_seconds=600")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp
import numpy as np

from robust_dd import cluster
from robust_dd import config as config_lib
from robust_dd import data as data_lib
from robust_dd import distill
from robust_dd import evaluate
from robust_dd import experiment
from robust_dd import kernels
from robust_dd import methods
from robust_dd import models
from robust_dd import parallel
from robust_dd import presets
from robust_dd import select
from robust_dd import training
from robust_dd import trajectory

CLASSES, PER_CLASS = 3, 8
# Each case: DistillConfig overrides; robust cases carry 2 clusters per class.
CASES = {
    "kip": dict(method="kip"),
    "kip_cvar": dict(method="kip", robust="cvar"),
    "dc": dict(method="dc"),
    "dsa": dict(method="dsa"),
    "lcmat": dict(method="lcmat"),
    "dc_cvar": dict(method="dc", robust="cvar"),
    "dc_importance": dict(method="dc", sampler="importance", sampler_every=1,
                          sampler_train_steps=2),
}
# Mesh sizes per case (DSA's and LCMat's steps take the longest to compile: 8 and 1 only). On 3
# devices the 3 classes split evenly, so XLA would leave the set split unless the step keeps it
# replicated (the next call's input shardings would then differ from the compiled ones).
MESHES = {case: (8, 1) if case in ("dsa", "lcmat") else (8, 4, 3, 1) for case in CASES}
QUICK_MESHES = {"kip": (8, 3, 1), "dc_cvar": (8, 1)}
CLUSTERS = 2 * CLASSES
INITIAL = [0, 1, 8, 9, 16, 17]  # Two real images of each class.


def _real():
  rng = np.random.default_rng(0)
  y = np.repeat(np.arange(CLASSES), PER_CLASS)
  x = (rng.normal(size=(len(y), 8, 8, 1)) + y[:, None, None, None]).astype(np.float32)
  table, counts = data_lib.class_index_table(y, CLASSES)
  real = {"images": jnp.asarray(x), "labels": data_lib.one_hot_centered(y, CLASSES),
          "table": jnp.asarray(table), "counts": jnp.asarray(counts)}
  ids = 2 * y + (np.arange(len(y)) % 2)  # Two clusters per class, class-major.
  return x, experiment.with_clusters(real, ids, np.repeat(np.arange(CLASSES), 2),
                                     width=PER_CLASS)


def run(case: str, devices: int):
  overrides = CASES[case]
  config = presets.resolve_config(config_lib.DistillConfig.make(
      ipc=2, real_per_class=4, net_width=4, net_depth=2, inner_loop=2, outer_loop=2,
      **overrides), CLASSES)
  x, real = _real()
  optimizer = distill.make_optimizer(learning_rate=0.01, name="sgd")
  state = distill.init_state(x[INITIAL],
                             data_lib.one_hot_centered(np.repeat(np.arange(CLASSES), 2), CLASSES),
                             optimizer,
                             num_real=len(x) if config.sampler.kind == "importance" else None)
  mesh = parallel.make_mesh(devices)
  step = methods.build_step(config, optimizer, num_classes=CLASSES, input_shape=(8, 8, 1),
                            num_clusters=CLUSTERS if config.robust.objective != "none" else None,
                            mesh=mesh)
  state, real = parallel.replicate(state, mesh), parallel.replicate(real, mesh)
  key = jax.random.key(0)
  compiled = step.lower(state, real, key).compile()
  hlo = compiled.as_text()
  losses = []
  for _ in range(2):
    state, metrics = compiled(state, real, key)
    losses.append(float(metrics["loss"]))
  images = state.params["images"]
  replicated = (devices == 1 or (images.sharding.is_fully_replicated
                                 and len(images.sharding.device_set) == devices))
  return {f"{case}/{devices}/images": np.asarray(images),
          f"{case}/{devices}/losses": np.asarray(losses),
          f"{case}/{devices}/replicated": np.asarray(replicated),
          f"{case}/{devices}/communicates": np.asarray("all-reduce" in hlo or "all-gather" in hlo)}


def evaluate_seeds(devices: int):
  """Three evaluation networks (one vmap over seeds, split over the devices): their predictions."""
  x, _ = _real()
  model = models.make_network("convnet", num_classes=CLASSES, input_shape=(8, 8, 1), depth=2,
                              width=4)
  preds = evaluate.network_predictions(
      jax.random.key(1), x[INITIAL], np.repeat(np.arange(CLASSES), 2), {"test": x}, model=model,
      seeds=3, epochs=3, batch_size=4, mesh=parallel.make_mesh(devices))
  trained, _ = training.train_network(
      jnp.stack([jax.random.key(i) for i in range(3)]), x[INITIAL],
      np.repeat(np.arange(CLASSES), 2), apply_fn=models.logits_fn(model),
      init_fn=models.init_fn(model, (8, 8, 1)), epochs=3, batch_size=4,
      mesh=parallel.make_mesh(devices))
  mesh = parallel.make_mesh(devices)
  conv = kernels.make_kernel_fn("conv", kernel="ntk", depth=1)
  k_conv = kernels.kernel_matrix(conv, x[:10], x, batch_size=3, mesh=mesh)  # Padded blocks.
  k_fc = kernels.kernel_matrix(kernels.make_kernel_fn("fc", kernel="ntk", depth=1),
                               x.reshape(len(x), -1), batch_size=5, mesh=mesh)
  return {f"evaluate/{devices}/predictions": preds["test"],
          f"evaluate/{devices}/head": np.asarray(trained["head"]["kernel"]),
          f"evaluate/{devices}/kernel_conv": k_conv, f"evaluate/{devices}/kernel_fc": k_fc}


def select_and_cluster(devices: int):
  """Coreset selection (sensitivity, herding, LCMat-S) and per-class k-means with the classes
  split over the devices; MTT experts (3) split over them."""
  x, _ = _real()
  y = np.repeat(np.arange(CLASSES), PER_CLASS)
  feats = x.reshape(len(x), -1)
  mesh = parallel.make_mesh(devices)
  out = {}
  for method in ("sensitivity", "herding"):
    idx, weights = select.select_indices(method, jax.random.key(2), feats, y,
                                         num_classes=CLASSES, budget=2, mesh=mesh)
    out[f"select_{method}/{devices}/indices"] = idx
    out[f"select_{method}/{devices}/weights"] = weights
  probs = np.asarray(jax.nn.softmax(jnp.asarray(feats[:, :CLASSES]), -1))
  for class_batch in (0, 2):  # LCMat-S, all of a device's classes at once or 2 at a time.
    out[f"select_lcmat{class_batch}/{devices}/indices"] = select.select_indices(
        "lcmat", jax.random.key(2), feats, y, num_classes=CLASSES, budget=2,
        lcmat_inputs=(feats[:, :6], probs), num_coords=4, class_batch=class_batch,
        mesh=mesh)[0]
  model = models.make_network("mlp", num_classes=CLASSES, input_shape=feats.shape[1:], depth=1,
                               width=8)
  keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(4), i))(jnp.arange(3))
  out[f"experts/{devices}/trajectories"] = np.asarray(trajectory.train_experts(
      keys, jnp.asarray(feats), jnp.asarray(y), apply_fn=models.logits_fn(model),
      init_fn=models.init_fn(model, feats.shape[1:]), epochs=2, batch_size=8, mesh=mesh))
  out[f"kmeans/{devices}/ids"] = cluster.kmeans_per_class(jax.random.key(3), feats, y,
                                                          num_classes=CLASSES, k=2, mesh=mesh)
  return out


def main(argv):
  out, quick = argv[1], argv[2:] == ["quick"]
  assert len(jax.devices()) == 8, jax.devices()
  results = {"initial_images": _real()[0][INITIAL]}
  for case, meshes in (QUICK_MESHES if quick else MESHES).items():
    for devices in meshes:
      t0 = time.time()
      results.update(run(case, devices))
      print(f"{case} on {devices}: {time.time() - t0:.1f} s", flush=True)
  for devices in (8, 1) if quick else (8, 4, 1):
    results.update(evaluate_seeds(devices))
    if not quick:  # About 30 s of compilation per mesh: the extended tier only.
      results.update(select_and_cluster(devices))
  np.savez(out, **results)


if __name__ == "__main__":
  main(sys.argv)
