"""The one distillation loop: init -> (sample a real batch -> jitted step)* -> save.

A method plugs in as a `loss_fn(params, batch) -> scalar`, where `params = {'images', 'labels'}`
is the synthetic set and `batch` a real batch drawn on device inside the step. `run_distillation`
drives the jitted step with per-step keys `fold_in(key, step)`, so a run resumed from a checkpoint
continues exactly as an uninterrupted run would. `distill_experiment` is what `experiments.distill`
calls: data, preprocessing, method, loop, evaluation and outputs in `workdir`.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from robust_dd import data as data_lib
from robust_dd import evaluate
from robust_dd import io
from robust_dd import kernels
from robust_dd import krr

Params = dict[str, jax.Array]
Batch = dict[str, jax.Array]
LossFn = Callable[[Params, Batch], jax.Array]


class DistillState(NamedTuple):
  """The synthetic set, its optimiser state and the number of steps taken."""
  params: Params
  opt_state: optax.OptState
  step: jax.Array


def make_optimizer(*, learning_rate: float = 0.01, learn_labels: bool = True
                   ) -> optax.GradientTransformation:
  """Adam on the images (and on the labels when `learn_labels`)."""
  adam = optax.adam(learning_rate)
  if learn_labels:
    return adam
  return optax.multi_transform({"learn": adam, "fixed": optax.set_to_zero()},
                               {"images": "learn", "labels": "fixed"})


def init_state(images, labels, optimizer: optax.GradientTransformation) -> DistillState:
  params = {"images": jnp.asarray(images, jnp.float32), "labels": jnp.asarray(labels, jnp.float32)}
  return DistillState(params, optimizer.init(params), jnp.zeros((), jnp.int32))


def class_balanced_batch(key: jax.Array, real: dict[str, jax.Array], *, per_class: int) -> Batch:
  """Draws a class-balanced real batch from `real = {images, labels, table, counts}` on device."""
  idx = data_lib.sample_class_balanced(key, real["table"], real["counts"], per_class=per_class)
  return {"images": real["images"][idx], "labels": real["labels"][idx]}


def make_step(loss_fn: LossFn, optimizer: optax.GradientTransformation, *, per_class: int):
  """Returns the jitted `step(state, real, key) -> (state, metrics)`; `state` is donated."""

  def step(state: DistillState, real: dict[str, jax.Array], key: jax.Array):
    batch = class_balanced_batch(key, real, per_class=per_class)
    loss, grads = jax.value_and_grad(loss_fn)(state.params, batch)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return DistillState(params, opt_state, state.step + 1), {"loss": loss}

  return jax.jit(step, donate_argnums=0)


def kip_loss_fn(*, kernel_fn, diag_reg: float = 1e-6) -> LossFn:
  """KIP as a distillation method: the KRR loss of the synthetic set on the real batch."""

  def loss_fn(params: Params, batch: Batch) -> jax.Array:
    return krr.kip_loss(params["images"], params["labels"], batch["images"], batch["labels"],
                        kernel_fn=kernel_fn, diag_reg=diag_reg)

  return loss_fn


def _format_seconds(seconds: float) -> str:
  seconds = int(round(seconds))
  return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def run_distillation(step_fn, state: DistillState, real: dict[str, jax.Array], *, key: jax.Array,
                     num_steps: int, log_every: int = 100,
                     eval_fn: Optional[Callable[[Params], dict[str, float]]] = None,
                     checkpoint_dir: Optional[str] = None, checkpoint_every: int = 0,
                     on_log: Optional[Callable[[list[dict[str, Any]]], None]] = None,
                     history: Optional[list[dict[str, Any]]] = None,
                     log: Callable[[str], None] = print) -> tuple[DistillState, list[dict]]:
  """Runs `step_fn` from `state.step` up to `num_steps`, logging and checkpointing.

  Every `log_every` steps (and at the end) it records the loss and `eval_fn(params)`, prints a
  progress line with the time left, and calls `on_log(history)`. Every `checkpoint_every` steps
  (0: never) and at the end it saves `state` atomically in `checkpoint_dir`.

  Raises:
    FloatingPointError: the loss became NaN or infinite (lower the learning rate, raise diag_reg).
  """
  history = list(history or [])
  start = int(state.step)
  t_start, steps_timed, t_first = time.time(), 0, None
  for step in range(start, num_steps):
    state, metrics = step_fn(state, real, jax.random.fold_in(key, step))
    done = step + 1
    if t_first is None:
      jax.block_until_ready(state)
      t_first = time.time()  # Excludes compilation from the time-left estimate.
    else:
      steps_timed += 1
    if done % max(log_every, 1) == 0 or done == num_steps:
      loss = float(metrics["loss"])
      if not np.isfinite(loss):
        raise FloatingPointError(
            f"Loss is {loss} at step {done}. Lower --learning_rate or raise --diag_reg.")
      record = {"step": done, "loss": loss, "elapsed_s": round(time.time() - t_start, 2)}
      if eval_fn is not None:
        record.update(eval_fn(state.params))
      history.append(record)
      per_step = (time.time() - t_first) / steps_timed if steps_timed else 0.0
      extras = " ".join(f"{k}={v:.4f}" for k, v in record.items()
                        if k not in ("step", "loss", "elapsed_s"))
      log(f"step {done:>6d}/{num_steps}  loss={loss:.5f}  {extras}  "
          f"elapsed={_format_seconds(time.time() - t_start)}  "
          f"left≈{_format_seconds(per_step * (num_steps - done))}")
      if on_log is not None:
        on_log(history)
    if checkpoint_dir and ((checkpoint_every and done % checkpoint_every == 0)
                           or done == num_steps):
      io.save_checkpoint(checkpoint_dir, state, step=done)
  return state, history


# ----------------------------------------------------------------------------- experiments


@dataclasses.dataclass(frozen=True)
class DistillConfig:
  """Everything that determines a distillation run's result (plus run-length and logging)."""
  method: str = "kip"
  dataset: str = "mnist5k"
  data_dir: Optional[str] = None
  data_path: Optional[str] = None
  split_seed: int = 0
  ipc: int = 10
  arch: str = "fc"
  kernel: str = "ntk"
  depth: int = 1
  w_std: float = float(np.sqrt(2.0))
  b_std: float = 0.1
  pool: bool = False
  zca: bool = False
  zca_reg: float = 0.1
  diag_reg: float = 1e-6
  learn_labels: bool = True
  learning_rate: float = 0.01
  target_batch: int = 500
  steps: int = 2000
  seed: int = 0
  baseline_draws: int = 5
  kernel_batch: int = 250
  log_every: int = 100
  checkpoint_every: int = 200
  eval_during: bool = True


# Keys that may change between a run and its resumption without changing its result.
RESUMABLE_KEYS = ("steps", "log_every", "checkpoint_every", "eval_during", "data_dir")
METHODS = ("kip",)


def validate_config(config: DistillConfig) -> None:
  """Raises ValueError, saying what to change, for settings that cannot run."""
  if config.method not in METHODS:
    raise ValueError(f"Unknown --method={config.method}; this version supports {METHODS}.")
  if config.ipc < 1:
    raise ValueError(f"--ipc must be at least 1, got {config.ipc}.")
  if config.steps < 0:
    raise ValueError(f"--steps must be >= 0, got {config.steps}.")
  if config.arch not in kernels.ARCHITECTURES:
    raise ValueError(f"Unknown --arch={config.arch}; choose one of {kernels.ARCHITECTURES}.")
  if config.kernel not in kernels.KERNELS:
    raise ValueError(f"Unknown --kernel={config.kernel}; choose one of {kernels.KERNELS}.")
  if config.learning_rate <= 0 or config.diag_reg < 0:
    raise ValueError("--learning_rate must be positive and --diag_reg non-negative.")


def _check_workdir_config(workdir: str, config: DistillConfig) -> None:
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return
  saved = io.load_json(path)
  current = dataclasses.asdict(config)
  diffs = sorted(k for k in set(saved) | set(current)
                 if k not in RESUMABLE_KEYS and saved.get(k) != current.get(k))
  if diffs:
    details = ", ".join(f"{k}: saved {saved.get(k)!r} vs now {current.get(k)!r}" for k in diffs)
    raise ValueError(f"--workdir={workdir} holds a run with a different config ({details}). "
                     "Use a new --workdir, or delete that one to start over.")


def prepare_data(config: DistillConfig):
  """Loads the dataset and fits preprocessing on its training split only."""
  dataset = data_lib.load_dataset(config.dataset, data_dir=config.data_dir,
                                  data_path=config.data_path, split_seed=config.split_seed)
  kernels.check_inputs(config.arch, dataset.x_train)
  _, counts = data_lib.class_index_table(dataset.y_train, dataset.num_classes)
  data_lib.check_per_class(counts, config.ipc, what=f"--ipc={config.ipc}")
  if config.target_batch % dataset.num_classes:
    raise ValueError(f"--target_batch={config.target_batch} must be a multiple of the "
                     f"{dataset.num_classes} classes.")
  data_lib.check_per_class(counts, config.target_batch // dataset.num_classes,
                           what=f"--target_batch={config.target_batch}")
  prep = data_lib.fit_preprocessing(dataset.x_train, zca=config.zca, zca_reg=config.zca_reg)
  x_train = data_lib.apply_preprocessing(dataset.x_train, prep)
  x_test = data_lib.apply_preprocessing(dataset.x_test, prep)
  return dataset, prep, x_train, x_test


def distill_experiment(config: DistillConfig, workdir: str,
                       log: Callable[[str], None] = print) -> dict[str, Any]:
  """Distills, evaluates and writes every output to `workdir`; resumes from its checkpoints.

  Writes: config.json, distilled.npz (images in the space the kernel sees, labels, and the
  preprocessing mean/std[/zca]), distilled.png, metrics.json (config, accuracies, split recipe,
  history), checkpoints/ckpt_*.npz. Returns the metrics dict.
  """
  validate_config(config)
  os.makedirs(workdir, exist_ok=True)
  _check_workdir_config(workdir, config)
  dataset, prep, x_train, x_test = prepare_data(config)
  io.save_json(os.path.join(workdir, "config.json"), dataclasses.asdict(config))
  num_classes = dataset.num_classes
  log(f"{config.dataset}: {len(x_train)} train / {len(x_test)} test samples of shape "
      f"{x_train.shape[1:]}, {num_classes} classes; preprocessing: standardise"
      f"{' + ZCA' if prep.zca is not None else ''}")

  kernel_fn = kernels.make_kernel_fn(config.arch, kernel=config.kernel, depth=config.depth,
                                     w_std=config.w_std, b_std=config.b_std, pool=config.pool)
  key = jax.random.key(config.seed)
  init_key, loop_key, baseline_key = jax.random.split(key, 3)
  init_idx = evaluate.random_subset_indices(init_key, dataset.y_train, per_class=config.ipc,
                                            num_classes=num_classes)
  optimizer = make_optimizer(learning_rate=config.learning_rate, learn_labels=config.learn_labels)
  state = init_state(x_train[init_idx], data_lib.one_hot_centered(dataset.y_train[init_idx],
                                                                  num_classes), optimizer)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  restored, restored_step = io.restore_checkpoint(ckpt_dir, state)
  progress_path = os.path.join(workdir, "progress.json")
  history = []
  if restored is not None:
    state = jax.tree_util.tree_map(jnp.asarray, restored)
    if os.path.exists(progress_path):
      history = [h for h in io.load_json(progress_path) if h["step"] <= restored_step]
    log(f"Resuming from step {restored_step} ({ckpt_dir}).")

  table, counts = data_lib.class_index_table(dataset.y_train, num_classes)
  real = {"images": jnp.asarray(x_train),
          "labels": data_lib.one_hot_centered(jnp.asarray(dataset.y_train), num_classes),
          "table": jnp.asarray(table), "counts": jnp.asarray(counts)}
  step_fn = make_step(kip_loss_fn(kernel_fn=kernel_fn, diag_reg=config.diag_reg), optimizer,
                      per_class=config.target_batch // num_classes)

  def test_accuracy(params):
    return {"test_acc": evaluate.krr_accuracy(
        kernel_fn, np.asarray(params["images"]), np.asarray(params["labels"]), x_test,
        dataset.y_test, diag_reg=config.diag_reg, batch_size=config.kernel_batch)}

  t0 = time.time()
  state, history = run_distillation(
      step_fn, state, real, key=loop_key, num_steps=config.steps, log_every=config.log_every,
      eval_fn=test_accuracy if config.eval_during else None, checkpoint_dir=ckpt_dir,
      checkpoint_every=config.checkpoint_every, history=history, log=log,
      on_log=lambda h: io.save_json(progress_path, h))
  distill_seconds = time.time() - t0

  images, labels = np.asarray(state.params["images"]), np.asarray(state.params["labels"])
  io.save_npz(os.path.join(workdir, "distilled.npz"), images=images, labels=labels,
              **prep.as_arrays())
  io.save_image_grid(os.path.join(workdir, "distilled.png"), images, rows=num_classes)
  last = history[-1] if history else {}
  if last.get("step") == int(state.step) and "test_acc" in last:
    final = last["test_acc"]  # The loop just evaluated these exact params.
  else:
    final = test_accuracy(state.params)["test_acc"]
  baseline = evaluate.random_subset_krr_accuracy(
      baseline_key, kernel_fn, x_train, dataset.y_train, x_test, dataset.y_test,
      per_class=config.ipc, num_classes=num_classes, draws=config.baseline_draws,
      diag_reg=config.diag_reg, batch_size=config.kernel_batch)
  metrics = {
      "config": dataclasses.asdict(config),
      "distilled_test_acc": final,
      "random_subset_test_acc_mean": float(baseline.mean()),
      "random_subset_test_acc_std": float(baseline.std()),
      "random_subset_test_acc": baseline.tolist(),
      "final_loss": history[-1]["loss"] if history else None,
      "steps": int(state.step),
      "distill_seconds_this_run": round(distill_seconds, 2),
      "split": dataset.split,
      "history": history,
      "jax_version": jax.__version__,
      "backend": jax.default_backend(),
  }
  io.save_json(os.path.join(workdir, "metrics.json"), metrics)
  log(results_table([metrics]))
  return metrics


def results_table(runs: list[dict[str, Any]]) -> str:
  """A Markdown table of distilled vs random-subset KRR test accuracy."""
  lines = ["| method | dataset | kernel | IPC | steps | distilled acc | random subset acc |",
           "|---|---|---|---|---|---|---|"]
  for m in runs:
    c = m["config"]
    lines.append(
        f"| {c['method']} | {c['dataset']} | {c['arch']}{c['depth']} {c['kernel']} | {c['ipc']} | "
        f"{m['steps']} | {100 * m['distilled_test_acc']:.1f}% | "
        f"{100 * m['random_subset_test_acc_mean']:.1f}% ± "
        f"{100 * m['random_subset_test_acc_std']:.1f} |")
  return "\n".join(lines)
