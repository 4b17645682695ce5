"""The expert-trajectory experiment (`experiments.experts`): trains MTT's experts.

`experts_experiment` trains `--num_experts` networks (the config's ConvNet, in one `vmap`) on the
real training set, as the data and network flags of a distillation run would prepare it, and
writes to its workdir:

  experts.npz   `trajectories` (E, T + 1, P): every expert's flat parameters after each epoch
                (epoch 0: the initialisation), float32;
  experts.json  the config and the fingerprint a distillation checks before using the buffer:
                the data and network flags, the parameter count, and a hash of the preprocessed
                training images.

`expert_buffer.load_experts` reads the buffer back for a distillation.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable

import jax
from jax.flatten_util import ravel_pytree
import jax.numpy as jnp
import numpy as np

from robust_dd import config as config_lib
from robust_dd import evaluate
from robust_dd import expert_buffer
from robust_dd import experiment
from robust_dd import io
from robust_dd import methods as methods_lib
from robust_dd import models
from robust_dd import parallel
from robust_dd import progress
from robust_dd import trajectory

Log = Callable[[str], None]
EXPERTS_STREAM = 8  # The experts' key stream (`experiment.stream(seed, EXPERTS_STREAM)`).


def experts_experiment(config: config_lib.ExpertsConfig, workdir: str,
                       log: Log = print) -> dict[str, Any]:
  """Trains the experts and writes experts.npz and experts.json (module docstring), each
  atomically; a workdir that already holds a buffer is refused. Returns experts.json."""
  config_lib.validate_experts_config(config)
  if os.path.exists(os.path.join(workdir, expert_buffer.BUFFER)):
    raise ValueError(f"--workdir={workdir} already holds {expert_buffer.BUFFER}; use a new "
                     "--workdir.")
  config_lib.check_workdir(workdir, config)
  dataset = experiment.load_config_dataset(config)
  prep, x_train, _ = experiment.preprocess(config, dataset)
  model = methods_lib.network_model(config, dataset.num_classes, x_train.shape[1:])
  init_fn = models.init_fn(model, tuple(x_train.shape[1:]))
  num_params = ravel_pytree(init_fn(jax.random.key(0)))[0].size
  io.make_dirs(workdir)
  io.save_json(os.path.join(workdir, "config.json"), config.to_dict())
  log(f"Mesh: {parallel.describe(experiment.config_mesh(config))['axes']}.")
  log(f"{config.data.dataset}: {len(x_train)} training images of shape {x_train.shape[1:]}; "
      f"{config.num_experts} experts ({type(model).__name__}, {num_params:,} parameters), "
      f"{config.epochs} epochs each, SGD lr {config.expert_lr} momentum "
      f"{config.expert_momentum}, batch {config.expert_batch}, DSA "
      f"{'on' if config.expert_augment else 'off'}.")
  keys = jax.vmap(lambda i: jax.random.fold_in(experiment.stream(config.seed, EXPERTS_STREAM),
                                               i))(jnp.arange(config.num_experts))
  t0 = time.time()
  with progress.Progress(config.epochs, desc=f"{config.num_experts} experts", unit="epoch",
                         log=log) as bar:
    trajectories = trajectory.train_experts(
        keys, jnp.asarray(x_train), jnp.asarray(dataset.y_train),
        apply_fn=models.logits_fn(model), init_fn=init_fn, epochs=config.epochs,
        batch_size=config.expert_batch, learning_rate=config.expert_lr,
        momentum=config.expert_momentum,
        augment=evaluate.dsa_per_sample if config.expert_augment else None,
        on_epoch=lambda _: bar.update(1), mesh=experiment.config_mesh(config))
  seconds = time.time() - t0
  trajectories = np.asarray(trajectories, np.float32)
  if not np.all(np.isfinite(trajectories)):
    raise FloatingPointError("An expert's parameters became NaN or infinite; lower --expert_lr.")
  moved = np.linalg.norm(trajectories[:, 1:] - trajectories[:, :-1], axis=-1).mean(0)
  meta = {"config": config.to_dict(),
          "fingerprint": expert_buffer.fingerprint(config, x_train, num_params),
          "shape": list(trajectories.shape), "seconds": round(seconds, 2),
          "mean_epoch_step_norm": [round(float(v), 4) for v in moved],
          "preprocessing": {k: np.asarray(v).tolist() for k, v in prep.as_arrays().items()
                            if k != "zca"}}
  io.save_npz(os.path.join(workdir, expert_buffer.BUFFER), trajectories=trajectories)
  io.save_json(os.path.join(workdir, expert_buffer.META), meta)
  log(f"Trained {config.num_experts} experts x {config.epochs} epochs in {seconds:.1f} s; "
      f"parameter change per epoch {moved[0]:.3g} (first) to {moved[-1]:.3g} (last).")
  return meta
