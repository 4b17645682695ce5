"""The distillation experiment: data -> init -> loop -> evaluate -> save, and re-evaluation.

`distill_experiment(config, workdir)` is what `python -m experiments.distill` runs and what tests
call in-process (as flax examples keep `train_and_evaluate(config, workdir)`):

1. validate the config, load the data, resolve the method's presets, check everything that
   depends on the data, and check the workdir: nothing is written before all of this passes;
2. pick the initial synthetic set (`initial_indices`), restore a checkpoint if there is one;
3. cluster the real data for robust runs (`make_reclusterer`), build the method's step
   (`methods.build_step`) and run `distill.run_distillation`;
4. save distilled.npz / distilled.png, evaluate the set and random real subsets under one
   `Evaluator`, and write metrics.json.

`evaluate_workdir` re-evaluates a finished run (what `python -m experiments.evaluate` runs).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import resource
import shutil
import tempfile
import time
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from robust_dd import cluster
from robust_dd import config as config_lib
from robust_dd import data as data_lib
from robust_dd import distill
from robust_dd import evaluate
from robust_dd import io
from robust_dd import methods as methods_lib
from robust_dd import models
from robust_dd import parallel
from robust_dd import presets
from robust_dd import progress
from robust_dd import reporting
from robust_dd import risk
from robust_dd import select
from robust_dd import training

DistillConfig = config_lib.DistillConfig
Log = Callable[[str], None]

# Every random stream of a run is `fold_in(key(seed), STREAM)` with one of these constants: no key
# is split and then reused, and no stream of seed s equals a stream of seed s + 1.
(INIT_STREAM, LOOP_STREAM, BASELINE_STREAM, CLUSTER_STREAM, EVAL_STREAM, REEVAL_STREAM,
 FEATURE_STREAM) = range(7)


def config_mesh(config):
  """The device mesh of a config's `--mesh` (configs without one, e.g. `SelectConfig`: all local
  devices)."""
  return parallel.make_mesh(parallel.parse_mesh(getattr(config, "mesh", None)))


def stream(seed: int, name: int) -> jax.Array:
  """The key of stream `name` (one of the *_STREAM constants) of a run with `seed`."""
  return jax.random.fold_in(jax.random.key(seed), name)


# ----------------------------------------------------------------------------------------- data


def load_config_dataset(config) -> data_lib.Dataset:
  """The config's dataset and split, made a rare-subgroup benchmark when `data.subgroup` is set
  (the subgroup draw is seeded by `split_seed`)."""
  d = config.data
  dataset = data_lib.load_dataset(d.dataset, data_dir=d.data_dir, data_path=d.data_path,
                                  split_seed=d.split_seed)
  if d.subgroup != "none":
    dataset = data_lib.make_rare_subgroup(dataset, transform=d.subgroup,
                                          train_fraction=d.subgroup_train_fraction,
                                          test_fraction=d.subgroup_test_fraction,
                                          seed=d.split_seed)
  return dataset


def preprocess(config, dataset: data_lib.Dataset):
  """Fits standardisation (and ZCA) on the training split only. Returns (prep, x_train, x_test)."""
  prep = data_lib.fit_preprocessing(dataset.x_train, zca=config.data.zca,
                                    zca_reg=config.data.zca_reg)
  return (prep, data_lib.apply_preprocessing(dataset.x_train, prep),
          data_lib.apply_preprocessing(dataset.x_test, prep))


def prepare_data(config: DistillConfig):
  """Loads the dataset, resolves the config and checks everything that depends on the data.

  Returns (dataset, preprocessing, x_train, x_test, resolved config).
  """
  dataset = load_config_dataset(config)
  config = presets.resolve_config(config, dataset.num_classes)
  methods_lib.get(config.method).check_inputs(config, dataset.x_train)
  _, counts = data_lib.class_index_table(dataset.y_train, dataset.num_classes)
  data_lib.check_per_class(counts, config.ipc, what=f"--ipc={config.ipc}")
  data_lib.check_per_class(counts, config.optim.real_per_class,
                           what=f"--real_per_class={config.optim.real_per_class}")
  if methods_lib.robust_on_matching(config):
    check_clusters(config, counts)
  if methods_lib.robust_on_network(config):
    per_class = max(1, config.robust.robust_net_batch // dataset.num_classes)
    data_lib.check_per_class(counts, per_class, what=f"--robust_net_batch="
                             f"{config.robust.robust_net_batch} ({per_class} per class)")
  prep, x_train, x_test = preprocess(config, dataset)
  return dataset, prep, x_train, x_test, config


def check_clusters(config: DistillConfig, counts) -> None:
  """Raises ValueError when k-means cannot make `num_clusters` clusters of this data."""
  r = config.robust
  if r.cluster_assignment != "kmeans":
    return
  if r.cluster_scope == "class":
    cluster.check_k(r.num_clusters, counts)
  elif r.num_clusters > int(np.sum(counts)):
    raise ValueError(f"--num_clusters={r.num_clusters} exceeds the {int(np.sum(counts))} "
                     "training samples.")


# ----------------------------------------------------------------------------------- clusters


def _splits_by_class(config: DistillConfig) -> bool:
  """Global clusters are split by class for methods whose losses are per class."""
  return (config.robust.cluster_scope == "global"
          and methods_lib.get(config.method).trains_network)


def prototype_cluster_class(config: DistillConfig, num_classes: int) -> np.ndarray:
  """(K,) class of each prototype cluster (-1: clusters that mix classes)."""
  proto_labels = np.repeat(np.arange(num_classes), config.ipc)
  if config.robust.cluster_scope == "class":
    return proto_labels
  if _splits_by_class(config):
    return np.repeat(np.arange(num_classes), len(proto_labels))
  return np.full(len(proto_labels), -1)


def prototype_ids(config: DistillConfig, key: jax.Array, x_train, y_train, syn_images, *,
                  num_classes: int, embed=None) -> jax.Array:
  """(n,) prototype cluster of each real sample: its nearest synthetic image in the config's
  feature space (of its own class with scope 'class'; split by class for network methods with
  scope 'global'). Pure jnp: jittable."""
  k_feat, _ = jax.random.split(key)
  kind = config.robust.cluster_features
  feats = cluster.features(kind, x_train, key=k_feat, embed=embed)
  protos = cluster.features(kind, syn_images, key=k_feat, embed=embed)
  proto_labels = jnp.repeat(jnp.arange(num_classes), config.ipc)
  per_class = config.robust.cluster_scope == "class"
  y = jnp.asarray(y_train, jnp.int32)
  ids = cluster.nearest_prototype(feats, protos, labels=y if per_class else None,
                                  prototype_labels=proto_labels if per_class else None)
  return y * protos.shape[0] + ids if _splits_by_class(config) else ids


def cluster_real(config: DistillConfig, key: jax.Array, x_train, y_train, *, num_classes: int,
                 syn_images=None, embed=None) -> tuple[np.ndarray, np.ndarray]:
  """Cluster ids of the real training samples and the class of each cluster: (ids (n,), (K,)).

  - kmeans, scope 'class': `num_clusters` k-means clusters inside each class (K = C · k).
  - kmeans, scope 'global': k-means on all samples (K = k); for methods that train a network,
    whose losses are per class, each global cluster is split by class (K = C · k, some possibly
    empty).
  - prototype: each sample joins its nearest synthetic image (`prototype_ids`), K = C · IPC
    (split by class for network methods with scope 'global').
  Features (`cluster_features`): pixels, random ReLU features, or `embed` (network features).
  `cluster_class` is -1 for clusters that mix classes (global KIP clusters).
  """
  r = config.robust
  if r.cluster_assignment == "prototype":
    ids = prototype_ids(config, key, x_train, y_train, jnp.asarray(syn_images),
                        num_classes=num_classes, embed=embed)
    return np.asarray(ids), prototype_cluster_class(config, num_classes)
  k_feat, k_means = jax.random.split(key)
  feats = cluster.features(r.cluster_features, x_train, key=k_feat, embed=embed)
  y = np.asarray(y_train)
  k = r.num_clusters
  if r.cluster_scope == "class":
    ids = cluster.kmeans_per_class(k_means, feats, y, num_classes=num_classes, k=k,
                                   mesh=config_mesh(config))
    return ids, np.repeat(np.arange(num_classes), k)
  ids = np.asarray(cluster.kmeans(k_means, feats, k=k).assignment)
  if _splits_by_class(config):
    return y * k + ids, np.repeat(np.arange(num_classes), k)
  return ids, np.full(k, -1)


def with_clusters(real: dict[str, jax.Array], ids, cluster_class, *, width: int) -> dict:
  """`real` plus the padded cluster table, counts and classes that `cluster_batch` samples."""
  table, counts = risk.cluster_index_table(jnp.asarray(ids), len(cluster_class), width=width)
  return dict(real, cluster_table=table, cluster_counts=counts,
              cluster_class=jnp.asarray(cluster_class, jnp.int32))


def make_reclusterer(config: DistillConfig, real: dict[str, jax.Array], x_train, y_train, *,
                     num_classes: int, key: jax.Array
                     ) -> Callable[[distill.DistillState, int], dict]:
  """`recluster(state, step) -> real` with the cluster table of `cluster_real` at that step.

  Step s uses `fold_in(key, s)` (k-means seeding, random features, the embedding network), so a
  resumed run reclusters exactly as an uninterrupted one. Prototype clusters, which follow the
  synthetic set and are recomputed every step by default, are one jitted call that stays on
  device (features, nearest prototypes, padded table); k-means runs once by default and returns
  through the host.
  """
  embed_model = methods_lib.network_model(config, num_classes, x_train.shape[1:])
  init_embed = models.init_fn(embed_model, tuple(x_train.shape[1:]))
  embed_apply = models.embed_fn(embed_model)
  y_train = np.asarray(y_train)

  def embed_at(k):
    if config.robust.cluster_features != "embed":
      return None
    net = init_embed(k)
    return lambda x: embed_apply(net, x)

  def width_of(cluster_class) -> int:
    within_class = bool(np.all(cluster_class >= 0))
    return int(np.bincount(y_train).max()) if within_class else len(y_train)

  if config.robust.cluster_assignment == "prototype":
    cluster_class = prototype_cluster_class(config, num_classes)
    width = width_of(cluster_class)

    @jax.jit
    def prototype_table(syn_images, k, x, y):
      ids = prototype_ids(config, k, x, y, syn_images, num_classes=num_classes, embed=embed_at(k))
      return risk.cluster_index_table(ids, len(cluster_class), width=width)

    y_device = jnp.asarray(y_train, jnp.int32)
    classes = jnp.asarray(cluster_class, jnp.int32)

    def recluster_prototypes(state: distill.DistillState, step: int) -> dict:
      table, counts = prototype_table(state.params["images"], jax.random.fold_in(key, step),
                                      real["images"], y_device)
      return dict(real, cluster_table=table, cluster_counts=counts, cluster_class=classes)

    return recluster_prototypes

  def recluster(state: distill.DistillState, step: int) -> dict:
    k = jax.random.fold_in(key, step)
    ids, cluster_class = cluster_real(config, k, x_train, y_train, num_classes=num_classes,
                                      syn_images=state.params["images"], embed=embed_at(k))
    return with_clusters(real, ids, cluster_class, width=width_of(cluster_class))

  return recluster


# --------------------------------------------------------------------------------------- init


def initial_indices(config: DistillConfig, key: jax.Array, x_train, y_train, *,
                    num_classes: int) -> tuple[np.ndarray, np.ndarray]:
  """Indices (class-major) and importance weights of the real samples that initialise the set.

  random: a class-balanced uniform draw. kmeans_centers / sensitivity_kmeans / sensitivity_krr:
  `select.select_indices` with k = IPC per class on the preprocessed inputs (sensitivity_krr with
  the config's kernel, exact or Nyström with `init_rank` landmarks).
  """
  s = config.sampler
  method = config_lib.INIT_METHODS[s.init]
  if method is None:
    idx = evaluate.random_subset_indices(key, y_train, per_class=config.ipc,
                                         num_classes=num_classes)
    return idx, np.ones(len(idx), np.float32)
  kernel_fn = (methods_lib.config_eval_kernel_fn(config) if method == "sensitivity_krr"
               else None)
  return select.select_indices(method, key, x_train, y_train, num_classes=num_classes,
                               budget=config.ipc, kernel_fn=kernel_fn, ridge=s.init_ridge,
                               rank=s.init_rank, dedup_quantile=s.dedup_quantile,
                               mesh=config_mesh(config))


# --------------------------------------------------------------------------------- evaluation


class RobustnessData(NamedTuple):
  """Extra test data for robustness metrics (`evaluate.robustness_metrics`)."""
  test_sets: dict          # name -> preprocessed corrupted test images
  clusters: np.ndarray     # (n_test,) k-means cluster of each test sample (pixels)
  num_clusters: int
  groups: Optional[np.ndarray]  # (n_test,) 1 on the rare subgroup, or None
  feature_clusters: Optional[np.ndarray] = None  # (n_test,) k-means cluster in an embedding


def robustness_data(dataset: data_lib.Dataset, prep: data_lib.Preprocessing, x_test, *,
                    num_clusters: int = 10) -> RobustnessData:
  """Corrupted test sets (from the raw test images), k-means (k = 10) test clusters on the
  preprocessed test inputs, and the rare-subgroup ids when the dataset has them (no feature
  clusters: `config_robustness_data` adds them)."""
  test_sets = {name: _frozen(x) for name, x in evaluate.corrupted_test_sets(dataset.x_test,
                                                                            prep).items()}
  return RobustnessData(test_sets,
                        evaluate.cluster_test_set(x_test, k=num_clusters), num_clusters,
                        dataset.group_test)


def trained_embedding(config, x_train, y_train, *, num_classes: int, epochs: int,
                      log: Optional[Log] = None) -> Callable:
  """`f(x) -> features`: the penultimate layer of the config's evaluation network (`--net`)
  trained for `epochs` on all of (x_train, y_train) with the evaluation schedule (no
  augmentation). Its key depends on nothing but a constant, so every run on the same data and
  preprocessing gets the same embedding, hence the same test clusters. With `log`, training
  reports its progress."""
  e = config.evaluation
  shape = tuple(x_train.shape[1:])
  model = methods_lib.network_model(config, num_classes, shape)
  params, _ = training.train_network(
      stream(0, FEATURE_STREAM), x_train, np.asarray(y_train), apply_fn=models.logits_fn(model),
      init_fn=models.init_fn(model, shape), epochs=epochs, batch_size=e.eval_batch,
      chunk=methods_lib.grad_chunk(config),
      progress=None if log is None else progress.Progress(
          epochs, desc="feature-cluster network", unit="epoch", log=log))
  embed = models.embed_fn(model)
  return lambda x: embed(params, x)


def _feature_cluster_path(config, x_train, y_train, x_test, num_clusters: int) -> str:
  """The --feature_cluster_cache file of these clusters, named by a hash of everything they
  depend on: the data as preprocessed, the network and its schedule."""
  digest = hashlib.sha256()
  for a in (x_train, y_train, x_test):
    digest.update(np.ascontiguousarray(a).tobytes())
  n, e = config.network, config.evaluation
  digest.update(json.dumps([n.net, n.net_depth, n.net_width, n.conv_impl, n.net_padding,
                            e.feature_cluster_epochs, e.eval_batch, num_clusters,
                            FEATURE_STREAM, methods_lib.grad_chunk(config)]).encode())
  return os.path.join(e.feature_cluster_cache, f"feature_clusters_{digest.hexdigest()[:16]}.npz")


def config_robustness_data(config, dataset: data_lib.Dataset, prep: data_lib.Preprocessing,
                           x_train, x_test, *, log: Log = print) -> Optional[RobustnessData]:
  """`robustness_data` as the config asks (None without --robust_eval; feature clusters with
  --feature_cluster_epochs, kept in --feature_cluster_cache when given)."""
  e = config.evaluation
  if not e.robust_eval:
    return None
  data = robustness_data(dataset, prep, x_test)
  if not e.feature_cluster_epochs:
    return data
  cache = (_feature_cluster_path(config, x_train, dataset.y_train, x_test, data.num_clusters)
           if e.feature_cluster_cache else None)
  if cache and os.path.exists(cache):
    log(f"Feature clusters from {cache}")
    return data._replace(feature_clusters=io.load_npz(cache)["clusters"])
  log(f"Training the feature-cluster network ({e.feature_cluster_epochs} epochs on "
      f"{len(x_train)} images) ...")
  embed = trained_embedding(config, x_train, dataset.y_train, num_classes=dataset.num_classes,
                            epochs=e.feature_cluster_epochs, log=log)
  features = np.asarray(cluster.features("embed", jnp.asarray(x_test), embed=embed))
  clusters = evaluate.cluster_test_set(features, k=data.num_clusters)
  if cache:
    io.make_dirs(e.feature_cluster_cache)
    io.save_npz(cache, clusters=clusters)
  return data._replace(feature_clusters=clusters)


def _jsonable(value):
  """`value` as it reads back from JSON (tuples become lists), so returned and saved dicts agree."""
  return json.loads(json.dumps(value))


def _frozen(x) -> np.ndarray:
  """A read-only view of x (test sets: their random features can then be cached)."""
  view = np.asarray(x).view()
  view.flags.writeable = False
  return view


class Evaluator(NamedTuple):
  """Test predictions of a support set, and of random real subsets, under one fixed evaluator.

  predict: `(images, labels, test_sets, seeds=None) -> {name: (runs, n) predicted classes}`.
  predict_random: `(key, per_class, test_sets) -> {name: (draws, n)}`, random real subsets.
  """
  name: str
  describe: Callable[[], str]
  predict: Callable[..., dict]
  predict_random: Callable[..., dict]
  baseline_draws: int
  x_test: np.ndarray
  y_test: np.ndarray

  def accuracies(self, images, labels, seeds=None) -> np.ndarray:
    """(runs,) test accuracies of the support set (images, labels)."""
    preds = self.predict(images, labels, {"test": self.x_test}, seeds)["test"]
    return np.mean(preds == np.asarray(self.y_test)[None], axis=1)


def make_evaluator(config, x_train, y_train, x_test, y_test, *, num_classes: int,
                   evaluator: str, net: Optional[str] = None,
                   log: Optional[Log] = None) -> Evaluator:
  """KRR with the config's kernel ('krr') or the config's finite network ('network'; `net`
  replaces `--net`, for cross-architecture evaluation; `log`: where its training reports
  progress, `evaluate.network_predictions`).

  `config` is any config with kernel, network and evaluation sections and a seed
  (`DistillConfig`, `SelectConfig`).
  """
  e = config.evaluation
  x_test = _frozen(x_test)  # Read-only: kernels.feature_matrix may keep its features.
  mesh = config_mesh(config)
  if evaluator == "krr":
    kernel_fn = methods_lib.config_eval_kernel_fn(config)
    krr_kw = dict(diag_reg=config.kernel.diag_reg, batch_size=e.kernel_batch, mesh=mesh)

    def krr_predict(images, labels, test_sets, seeds=None):
      del seeds
      return evaluate.krr_label_predictions(kernel_fn, np.asarray(images), np.asarray(labels),
                                            test_sets, **krr_kw)

    def krr_random(key, per_class, test_sets):
      return evaluate.random_subset_predictions(
          key, lambda _, x, y: krr_predict(x, data_lib.one_hot_centered(y, num_classes),
                                           test_sets),
          x_train, y_train, per_class=per_class, num_classes=num_classes,
          draws=e.baseline_draws)

    k = config.kernel
    kind = k.kernel_kind
    if kind == "empirical_ntk":
      kind += (f" of one width-{k.empirical_width} network ({k.empirical_implementation}, "
               "seed 0)")
    if k.eval_features:
      readout = "integrated" if k.rf_integrate_readout else "sampled"
      kind += (f", random features of {k.eval_features // k.rf_width} networks "
               f"(M={k.eval_features}, readout {readout})")
    return Evaluator("krr", lambda: f"KRR, {k.arch}{k.depth}{'-pool' if k.pool else ''} {kind}",
                     krr_predict, krr_random, e.baseline_draws, x_test, y_test)
  if evaluator != "network":
    raise ValueError(f"Unknown evaluator {evaluator!r}; use 'krr' or 'network'.")
  model = methods_lib.network_model(config, num_classes, x_train.shape[1:], net=net)
  settings = dict(model=model, epochs=e.eval_epochs, batch_size=e.eval_batch,
                  augment=e.eval_augment and x_train.ndim == 4, seed_batch=e.eval_seed_batch,
                  mesh=mesh, log=log, chunk=methods_lib.grad_chunk(config))

  def net_predict(images, labels, test_sets, seeds=None, key=None):
    key = stream(config.seed, EVAL_STREAM) if key is None else key
    return evaluate.network_predictions(key, images, labels, test_sets,
                                        seeds=seeds or e.eval_seeds, **settings)

  def net_random(key, per_class, test_sets):
    return evaluate.network_subset_predictions(key, x_train, y_train, test_sets,
                                               per_class=per_class, num_classes=num_classes,
                                               draws=e.eval_seeds, **settings)

  def describe():
    n = config.network
    size = (f"-{n.net_depth} w{n.net_width}" if isinstance(model, (models.ConvNet, models.MLP))
            else "")
    return (f"{type(model).__name__}{size}, {e.eval_epochs} epochs, "
            f"DSA {'on' if settings['augment'] else 'off'}")

  return Evaluator("network", describe, net_predict, net_random, e.eval_seeds, x_test, y_test)


def evaluate_support_set(evaluator: Evaluator, images, labels, *, key: jax.Array,
                         per_class: int, robustness: Optional[RobustnessData] = None,
                         baseline: bool = True, log: Log = print) -> dict[str, Any]:
  """Test accuracy of a support set and of random real subsets of `per_class` per class under
  `evaluator`, plus, with `robustness`, per-cluster, rare-subgroup and corruption accuracy of
  both. Returns the metrics.json fields."""
  test_sets = {"test": evaluator.x_test, **(robustness.test_sets if robustness else {})}

  def summarise(preds, keys):
    list_key, mean_key, std_key, robust_key = keys
    accs = np.mean(preds["test"] == np.asarray(evaluator.y_test)[None], axis=1)  # (runs,)
    out = {list_key: accs.tolist(), mean_key: float(accs.mean()), std_key: float(accs.std())}
    if robustness:
      out[robust_key] = evaluate.robustness_metrics(
          preds, evaluator.y_test, clusters=robustness.clusters,
          num_clusters=robustness.num_clusters, groups=robustness.groups,
          feature_clusters=robustness.feature_clusters)
    return out

  log(f"Evaluating the distilled set ({evaluator.describe()}) ...")
  entry = {"evaluator": evaluator.describe(),
           **summarise(evaluator.predict(images, labels, test_sets),
                       ("distilled_test_accs", "distilled_test_acc", "distilled_test_acc_std",
                        "distilled_robustness"))}
  if baseline:
    log(f"Evaluating {evaluator.baseline_draws} random real subsets of {per_class} per class ...")
    entry.update(summarise(evaluator.predict_random(key, per_class, test_sets),
                           ("random_subset_test_acc", "random_subset_test_acc_mean",
                            "random_subset_test_acc_std", "random_subset_robustness")))
  return entry


def cross_architecture(config, x_train, y_train, x_test, y_test, images, labels, *,
                       num_classes: int, key: jax.Array, per_class: int, report: dict,
                       path: str, log: Log = print) -> dict[str, Any]:
  """`--eval_nets`: the set, and random real subsets of the same size, trained into each named
  network with the same schedule (`evaluate_support_set` with that network as evaluator).

  Adds {net: metrics} to `report` as 'eval_nets', writing `report` to `path` after every network
  (a long evaluation's finished networks survive a crash), logs the table and returns `report`.
  """
  results: dict[str, Any] = {}
  for net in config.evaluation.eval_nets:
    evaluator = make_evaluator(config, x_train, y_train, x_test, y_test,
                               num_classes=num_classes, evaluator="network", net=net, log=log)
    log(f"Cross-architecture evaluation: {net} ({evaluator.describe()}) ...")
    results[net] = evaluate_support_set(evaluator, images, labels, key=key,
                                        per_class=per_class, log=log)
    report["eval_nets"] = results
    io.save_json(path, report)
  log(reporting.eval_nets_table(report))
  return report


# --------------------------------------------------------------------------------- experiment


TENSORBOARD_DIR = "tensorboard"  # Event files of a workdir: `tensorboard --logdir runs`.


def write_progress(writer: io.MetricWriter, record: dict[str, Any], state, *, rows: int) -> None:
  """A progress record's scalars (loss, step time, test accuracy when monitored), the importance
  sampler's effective sample fraction 1 / (n Σ q²), q its probabilities normalised over all n
  samples (1: uniform), when it has one, and the set as an image
  grid (one row per class), at the record's step."""
  step = record["step"]
  scalars = {f"distill/{k}": v for k, v in record.items() if k != "step"}
  if state.sampler is not None:
    p = np.asarray(state.sampler, np.float64)
    p = p / p.sum()
    scalars["sampler/effective_fraction"] = 1.0 / (len(p) * float(np.sum(p * p)))
  writer.scalars(step, scalars)
  writer.image(step, "distilled", io.image_grid(np.asarray(state.params["images"]), rows=rows))


def _timed_refresh(refresh, writer, state, step):
  """`refresh(state, step)` (reclustering), its wall time written as `recluster/seconds`."""
  t0 = time.time()
  real = jax.block_until_ready(refresh(state, step))
  writer.scalars(step, {"recluster/seconds": time.time() - t0})
  return real


def _replicated(refresh, mesh, state, step):
  return parallel.replicate(refresh(state, step), mesh)


def _first_line(config: DistillConfig, dataset, x_train, x_test, prep) -> str:
  return (f"{config.data.dataset}: {len(x_train)} train / {len(x_test)} test samples of shape "
          f"{x_train.shape[1:]}, {dataset.num_classes} classes; preprocessing: standardise"
          f"{' + ZCA' if prep.zca is not None else ''}; method {config.method}"
          + methods_lib.get(config.method).describe(config, dataset.num_classes))


def distill_experiment(config: DistillConfig, workdir: str, log: Log = print) -> dict[str, Any]:
  """Distills, evaluates and writes every output to `workdir`; resumes from its checkpoints.

  Writes: config.json (resolved), distilled.npz (images in the space the method sees, labels,
  any other learned parameter such as Platt's log_scale, and the preprocessing mean/std[/zca]),
  distilled.png, metrics.json (config, accuracies, split recipe, history), progress.json,
  checkpoints/ckpt_*.npz. Evaluation: the method's evaluator (KRR with the config's kernel, or the
  finite network over `eval_seeds` seeds), in both cases beside random real subsets of the same
  size under the same evaluator. Nothing is written until the config, the data and the workdir
  have passed every check. Returns the metrics.
  """
  presets.validate_config(config)
  dataset, prep, x_train, x_test, config = prepare_data(config)
  config_lib.check_workdir(workdir, config)
  real_extras = methods_lib.get(config.method).real_extras(config, x_train, log=log)  # Checked.
  check_saved_steps(workdir, config.steps)
  with io.WorkdirLock(workdir):  # Held to the end: a second run on `workdir` stops at once.
    return _distill_locked(config, workdir, dataset, prep, x_train, x_test, real_extras, log=log)


def check_saved_steps(workdir: str, steps: int) -> None:
  """Raises ValueError if `workdir` holds a checkpoint past `steps`: resuming it would report
  more steps than asked for, and config.json would disagree with the saved set."""
  ckpt_dir = os.path.join(workdir, "checkpoints")
  saved = io.checkpoint_steps(ckpt_dir) + io.npz_checkpoint_steps(ckpt_dir)
  if saved and max(saved) > steps:
    raise ValueError(f"--workdir={workdir} holds a run checkpointed at step {max(saved)}, past "
                     f"--steps={steps}; rerun with --steps={max(saved)} (or more) to continue or "
                     "evaluate it (python -m experiments.evaluate), or choose another --workdir.")


def _distill_locked(config: DistillConfig, workdir: str, dataset, prep, x_train, x_test,
                    real_extras: dict, *, log: Log) -> dict[str, Any]:
  """The rest of `distill_experiment`, with the data loaded and checked and the workdir locked;
  `real_extras` are the method's additions to the real data (MTT's experts)."""
  method = methods_lib.get(config.method)
  mesh = config_mesh(config)
  config = config.replace(mesh=f"{parallel.AXIS}:{parallel.size(mesh)}")  # The mesh used.
  ckpt_dir = os.path.join(workdir, "checkpoints")
  io.make_dirs(workdir, ckpt_dir)
  io.save_json(os.path.join(workdir, "config.json"), config.to_dict())
  num_classes = dataset.num_classes
  log(_first_line(config, dataset, x_train, x_test, prep))
  mesh_info = parallel.describe(mesh)
  log(f"Mesh: {mesh_info['axes']} of {mesh_info['device_kind']} ({mesh_info['platform']}).")

  init_key, loop_key, baseline_key = (stream(config.seed, s) for s in (
      INIT_STREAM, LOOP_STREAM, BASELINE_STREAM))
  init_idx, init_weights = initial_indices(config, init_key, x_train, dataset.y_train,
                                           num_classes=num_classes)
  if config.sampler.init != "random":
    log(f"Initialised with --init={config.sampler.init}: {len(init_idx)} real samples.")
  o = config.optim
  optimizer = distill.make_optimizer(learning_rate=o.learning_rate, learn_labels=o.learn_labels,
                                     name=o.optimizer, momentum=o.momentum,
                                     learning_rates=method.learning_rates(config))
  importance = config.sampler.kind == "importance"
  state = distill.init_state(
      x_train[init_idx], data_lib.one_hot_centered(dataset.y_train[init_idx], num_classes),
      optimizer, num_real=len(x_train) if importance else None,
      extra_params=methods_lib.get(config.method).extra_params(config))
  state = parallel.replicate(state, mesh)
  with io.Checkpoints(ckpt_dir) as checkpoints:  # Restored onto this run's mesh.
    restored, restored_step = checkpoints.restore(state)
    from_npz = restored is not None and restored_step not in checkpoints.steps()
  progress_path = os.path.join(workdir, "progress.json")
  history = []
  if restored is not None:
    state = parallel.replicate(jax.tree_util.tree_map(jnp.asarray, restored), mesh)
    if os.path.exists(progress_path):
      history = [h for h in io.load_json(progress_path) if h["step"] <= restored_step]
    log(f"Resuming from step {restored_step} ({ckpt_dir}"
        + (", an npz checkpoint of an older robust_dd; new checkpoints are Orbax step "
           "directories beside it)." if from_npz else ")."))

  table, counts = data_lib.class_index_table(dataset.y_train, num_classes)
  real = {"images": jnp.asarray(x_train),
          "labels": data_lib.one_hot_centered(jnp.asarray(dataset.y_train), num_classes),
          "table": jnp.asarray(table), "counts": jnp.asarray(counts), **real_extras}
  refresh, num_clusters, r = None, None, config.robust
  if methods_lib.robust_on_network(config):
    log(f"Robust network (--robust_on={r.robust_on}): {config.matching.inner_loop} SGD steps on "
        f"real batches of {r.robust_net_batch} before and between updates, CVaR("
        f"tail_fraction={r.tail_fraction}) with robust_weight {r.robust_weight} over the "
        "real images' nearest synthetic images in the network's embedding.")
  if methods_lib.robust_on_matching(config):
    refresh = make_reclusterer(config, real, x_train, dataset.y_train, num_classes=num_classes,
                               key=stream(config.seed, CLUSTER_STREAM))
    real = refresh(state, int(state.step))
    num_clusters = int(real["cluster_class"].shape[0])
    log(f"Robust objective: CVaR(tail_fraction={r.tail_fraction}) with robust_weight "
        f"{r.robust_weight} over {num_clusters} clusters ({r.cluster_assignment} on "
        f"{r.cluster_features}, per {r.cluster_scope}"
        + (f", reclustered every {r.recluster_every} steps" if r.recluster_every else "")
        + f"), {o.real_per_class * num_classes // num_clusters} real samples per cluster.")
  if importance:
    s = config.sampler
    log(f"Importance-sampled real batches: rescored every {s.sampler_every} steps, "
        f"beta {s.sampler_beta}" + (", unbiased weights" if s.sampler_unbiased else "") + ".")
  step_fn = methods_lib.build_step(config, optimizer, num_classes=num_classes,
                                   input_shape=x_train.shape[1:], num_clusters=num_clusters,
                                   mesh=mesh)
  real = parallel.replicate(real, mesh)
  if refresh is not None:
    refresh = functools.partial(_replicated, refresh, mesh)
  evaluator = make_evaluator(config, x_train, dataset.y_train, x_test, dataset.y_test,
                             num_classes=num_classes,
                             evaluator=methods_lib.get(config.method).evaluator, log=log)

  def monitor(params):  # One evaluation seed: for watching progress, nothing is chosen on it.
    accs = evaluator.accuracies(params["images"], params["labels"], seeds=1)
    return {"test_acc": float(accs[0])}

  writer = io.MetricWriter(os.path.join(workdir, TENSORBOARD_DIR),
                           purge_step=restored_step + 1 if restored is not None else None)
  if refresh is not None:
    refresh = functools.partial(_timed_refresh, refresh, writer)

  def on_log(history, state):
    io.save_json(progress_path, history)
    write_progress(writer, history[-1], state, rows=num_classes)

  t0 = time.time()
  with writer:
    state, history = distill.run_distillation(
        step_fn, state, real, key=loop_key, num_steps=config.steps, log_every=config.log_every,
        eval_fn=monitor if config.eval_during else None, checkpoint_dir=ckpt_dir,
        checkpoint_every=config.checkpoint_every, history=history, log=log, on_log=on_log,
        refresh_real=refresh, refresh_every=r.recluster_every or 0)
    distill_seconds = time.time() - t0
    images, labels = np.asarray(state.params["images"]), np.asarray(state.params["labels"])
    learned = {k: np.asarray(v) for k, v in state.params.items() if k not in ("images", "labels")}
    io.save_npz(os.path.join(workdir, "distilled.npz"), images=images, labels=labels, **learned,
                **prep.as_arrays())
    io.save_image_grid(os.path.join(workdir, "distilled.png"), images, rows=num_classes)
    entry = evaluate_support_set(
        evaluator, images, labels, key=baseline_key, per_class=config.ipc,
        robustness=config_robustness_data(config, dataset, prep, x_train, x_test, log=log),
        log=log)
    writer.scalars(int(state.step), {f"final/{k}": v for k, v in entry.items()})

  metrics = {
      "config": config.to_dict(),
      "flags": _jsonable(config.flat()),
      **entry,
      "final_loss": history[-1]["loss"] if history else None,
      "steps": int(state.step),
      "distill_seconds_this_run": round(distill_seconds, 2),
      # This process's peak resident memory so far (Linux: ru_maxrss in KiB).
      "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
      "split": dataset.split,
      "init": {"method": config.sampler.init, "indices": [int(i) for i in init_idx],
               "weights": [float(w) for w in init_weights]},
      "history": history,
      "jax_version": jax.__version__,
      "backend": jax.default_backend(),
      "mesh": mesh_info,
  }
  metrics_path = os.path.join(workdir, "metrics.json")
  io.save_json(metrics_path, metrics)
  log(reporting.results_table([metrics]))
  if config.evaluation.eval_nets:
    cross_architecture(config, x_train, dataset.y_train, x_test, dataset.y_test, images, labels,
                       num_classes=num_classes, key=baseline_key, per_class=config.ipc,
                       report=metrics, path=metrics_path, log=log)
  return metrics


EVAL_OVERRIDES = config_lib.EVAL_OVERRIDES


def evaluate_workdir(workdir: str, *, network: bool = True, krr: Optional[bool] = None,
                     baseline: bool = True, output: str = "evaluation.json", log: Log = print,
                     **overrides) -> dict[str, Any]:
  """Evaluates the distilled set saved in `workdir` (what `experiments.evaluate` runs).

  The dataset and split come from the run's config.json, the preprocessing from distilled.npz.
  `overrides` replace evaluation fields of the config (EVAL_OVERRIDES, by flag name). KRR (with
  the run's kernel) runs when `krr` is True, or by default for methods evaluated by KRR. Writes
  `workdir/output` and returns it as a dict.
  """
  config_path, set_path = (os.path.join(workdir, n) for n in ("config.json", "distilled.npz"))
  for path in (config_path, set_path):
    if not os.path.exists(path):
      raise FileNotFoundError(f"{path} does not exist: is {workdir} a finished distillation run?")
  unknown = sorted(set(overrides) - set(EVAL_OVERRIDES))
  if unknown:
    raise ValueError(f"Unknown evaluation settings {unknown}; choose from {EVAL_OVERRIDES}.")
  # The mesh the run used may exceed this machine's devices; evaluation does not use it.
  config = DistillConfig.from_dict(io.load_json(config_path)).replace(mesh=None, **overrides)
  presets.validate_config(config)
  arrays = io.load_npz(set_path)
  prep = data_lib.Preprocessing(arrays["mean"], arrays["std"], arrays.get("zca"))
  dataset = load_config_dataset(config)
  config = presets.resolve_config(config, dataset.num_classes)
  x_train = data_lib.apply_preprocessing(dataset.x_train, prep)
  x_test = data_lib.apply_preprocessing(dataset.x_test, prep)
  images, labels = arrays["images"], arrays["labels"]
  ipc = len(images) // dataset.num_classes
  if krr is None:
    krr = methods_lib.get(config.method).evaluator == "krr"
  results = {"workdir": workdir, "config": config.to_dict(),
             "flags": _jsonable(config.flat()), "ipc": ipc}
  robustness = config_robustness_data(config, dataset, prep, x_train, x_test, log=log)
  for name in (["network"] if network else []) + (["krr"] if krr else []):
    evaluator = make_evaluator(config, x_train, dataset.y_train, x_test, dataset.y_test,
                               num_classes=dataset.num_classes, evaluator=name, log=log)
    log(f"{name}: {evaluator.describe()} ...")
    results[name] = evaluate_support_set(
        evaluator, images, labels, key=stream(config.seed, REEVAL_STREAM), per_class=ipc,
        robustness=robustness, baseline=baseline, log=log)
  out_path = os.path.join(workdir, output)
  io.save_json(out_path, results)
  log(reporting.evaluation_table(results))
  if config.evaluation.eval_nets:
    cross_architecture(config, x_train, dataset.y_train, x_test, dataset.y_test, images, labels,
                       num_classes=dataset.num_classes, key=stream(config.seed, REEVAL_STREAM),
                       per_class=ipc, report=results, path=out_path, log=log)
  return results


EXPORT_FILE_BY = ("row", "label")


def export_workdir(workdir: str, out: Optional[str] = None, *, file_by: str = "row",
                   log: Log = print) -> dict[str, Any]:
  """Exports the distilled set of `workdir` in the raw data's pixel space, for other tools.

  The saved preprocessing is undone (`data.invert_preprocessing`: un-ZCA, un-standardise), and
  `out` (default `workdir/export`) receives:
    train/<class>/<class>_<i>.png  8-bit PNGs of the pixels clipped to [0, 1] (the range every
                                   image loader here scales to), readable by `tfds.ImageFolder`;
                                   <class> is, with `file_by='row'`, the class the image was
                                   distilled for (rows are class-major: row i is class i // IPC),
                                   with 'label' the argmax of its stored (possibly learned) label;
    labels.csv                     file, class, row class, label argmax, and the stored label
                                   vector (learned or not);
    pixels.npz                     the unclipped float32 pixels and the labels, nothing rounded;
    export.json                    source, counts, and how many pixel values were clipped.
  It is written in a temporary directory beside `out` and renamed when complete, so a killed
  export leaves nothing; an existing `out` is refused. Returns export.json's contents.
  """
  out = out or os.path.join(workdir, "export")
  set_path = os.path.join(workdir, "distilled.npz")
  if not os.path.exists(set_path):
    raise FileNotFoundError(f"{set_path} does not exist: is {workdir} a finished distillation run?")
  if os.path.exists(out):
    raise ValueError(f"--out={out} exists; choose another --out, or delete it to export again.")
  arrays = io.load_npz(set_path)
  if arrays["images"].ndim != 4 or arrays["images"].shape[-1] not in (1, 3):
    raise ValueError(f"The set in {workdir} holds samples of shape {arrays['images'].shape[1:]}; "
                     "only images (H, W, 1 or 3) export to PNG. Its arrays are in distilled.npz.")
  if file_by not in EXPORT_FILE_BY:
    raise ValueError(f"file_by={file_by!r}; choose one of {EXPORT_FILE_BY}.")
  prep = data_lib.Preprocessing(arrays["mean"], arrays["std"], arrays.get("zca"))
  pixels = data_lib.invert_preprocessing(arrays["images"], prep)
  labels = np.asarray(arrays["labels"], np.float32)
  num_classes = labels.shape[1]
  row_class = np.arange(len(labels)) // max(len(labels) // num_classes, 1)
  argmax = labels.argmax(-1)
  classes = row_class if file_by == "row" else argmax
  moved = int(np.sum(row_class != argmax))
  outside = int(np.sum((pixels < 0) | (pixels > 1)))
  png = np.round(np.clip(pixels, 0.0, 1.0) * 255.0).astype(np.uint8)
  parent = os.path.dirname(os.path.abspath(out))
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(dir=parent, prefix=f".tmp-{os.path.basename(out)}-")
  try:
    files = io.save_image_folder(tmp, png, classes, num_classes=num_classes)
    io.save_csv(os.path.join(tmp, "labels.csv"),
                ["file", "class", "row_class", "label_argmax"]
                + [f"label_{c}" for c in range(num_classes)],
                [[f, int(c), int(r), int(a), *(f"{v:.6g}" for v in row)]
                 for f, c, r, a, row in zip(files, classes, row_class, argmax, labels)])
    io.save_npz(os.path.join(tmp, "pixels.npz"), images=pixels, labels=labels)
    summary = {"source": os.path.abspath(set_path), "images": len(pixels),
               "shape": list(pixels.shape[1:]), "classes": int(labels.shape[1]),
               "pixel_range": [0.0, 1.0], "clipped_values": outside,
               "clipped_fraction": outside / pixels.size,
               "layout": "tfds.ImageFolder: train/<class>/<class>_<i>.png",
               "file_by": file_by, "label_argmax_differs_from_row": moved}
    io.save_json(os.path.join(tmp, "export.json"), summary)
    os.replace(tmp, out)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  how = ("the class each image was distilled for" if file_by == "row"
         else "the argmax of each image's stored label")
  log(f"Exported {len(pixels)} images ({num_classes} classes) to {out}/: PNGs under "
      f"train/<class>/, filed by {how} (--file_by={file_by}; {moved} images' label argmax is "
      f"another class), labels.csv, pixels.npz; {100 * outside / pixels.size:.2f}% of pixel "
      "values lay outside [0, 1] and were clipped in the PNGs (pixels.npz keeps them).")
  return summary
