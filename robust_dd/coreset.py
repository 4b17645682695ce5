"""The coreset-selection experiment: select a fraction of the real training set per class, then
evaluate it with the finite network and with KRR (what `python -m experiments.select` runs).

The selection algorithms are in `robust_dd.select`; this module adds the LCMat-S warm-up network,
the shared data preparation and evaluation of `robust_dd.distill`, and the outputs:
config.json, selection.npz (indices, importance weights; written before evaluation, so a crash
during evaluation does not lose the selection), metrics.json.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from robust_dd import data as data_lib
from robust_dd import distill
from robust_dd import io
from robust_dd import models
from robust_dd import select
from robust_dd import training


@dataclasses.dataclass(frozen=True)
class SelectConfig:
  """A coreset selection run: the method, the fraction, and (in `base`'s fields) the dataset,
  kernel, network and evaluation settings shared with distillation."""
  method: str = "random"
  fraction: float = 0.01
  seed: int = 0
  ridge: float = 1e-2
  rank: int = 0
  dedup_quantile: Optional[float] = None
  warmup_epochs: int = 5
  num_coords: int = 100
  lcmat_eps: float = 0.01
  class_batch: int = 0
  evaluators: tuple[str, ...] = ("network", "krr")
  base: distill.DistillConfig = distill.DistillConfig(method="dc")


def validate_config(config: SelectConfig) -> None:
  if config.method not in select.METHODS:
    raise ValueError(f"Unknown --method={config.method}; choose one of {select.METHODS}.")
  if not 0 < config.fraction <= 1:
    raise ValueError(f"--fraction must be in (0, 1], got {config.fraction}.")
  if config.warmup_epochs < 1 or config.num_coords < 1 or config.lcmat_eps < 0:
    raise ValueError("--warmup_epochs and --num_coords must be >= 1, --lcmat_eps >= 0.")
  unknown = set(config.evaluators) - {"network", "krr"}
  if unknown or not config.evaluators:
    raise ValueError(f"--evaluators must be a non-empty subset of network,krr; got "
                     f"{','.join(config.evaluators)}.")
  distill.validate_config(config.base)


def lcmat_warmup(key: jax.Array, model, x_train, y_train, *, epochs: int,
                 batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
  """LCMat-S's warm-up: a network trained `epochs` epochs on the whole training set (SGD as in
  evaluation, no augmentation); returns its penultimate features and softmax probabilities for
  every training sample."""
  apply_fn = models.logits_fn(model)
  params, _ = training.train_network(key, x_train, y_train, apply_fn=apply_fn,
                                     init_fn=models.init_fn(model, tuple(x_train.shape[1:])),
                                     epochs=epochs, batch_size=batch_size)
  z = training.map_batches(lambda xb: models.embed_fn(model)(params, xb), jnp.asarray(x_train))
  logits = training.predict(apply_fn, params, x_train)
  return np.asarray(z), np.asarray(jax.nn.softmax(logits, -1))


def run_selection(config: SelectConfig, key: jax.Array, x_train, y_train, *, num_classes: int,
                  log: Callable[[str], None] = print) -> tuple[np.ndarray, np.ndarray]:
  """Selects `select.budget_per_class(fraction)` samples per class by `config.method`."""
  base = config.base
  _, counts = data_lib.class_index_table(y_train, num_classes)
  budget = select.budget_per_class(config.fraction, counts)
  k_warm, k_select = jax.random.split(key)
  kwargs = {}
  if config.method == "lcmat":
    log(f"LCMat-S warm-up: {config.warmup_epochs} epochs on {len(x_train)} training samples ...")
    model = distill.network_model(base, num_classes, x_train.shape[1:])
    kwargs["lcmat_inputs"] = lcmat_warmup(k_warm, model, x_train, y_train,
                                          epochs=config.warmup_epochs)
  if config.method == "sensitivity_krr":
    kwargs["kernel_fn"] = distill.config_kernel_fn(base)
  log(f"Selecting {budget} per class ({budget * num_classes} of {len(x_train)}) by "
      f"{config.method} ...")
  return select.select_indices(config.method, k_select, x_train, y_train,
                               num_classes=num_classes, budget=budget, ridge=config.ridge,
                               rank=config.rank, dedup_quantile=config.dedup_quantile,
                               num_coords=config.num_coords, eps=config.lcmat_eps,
                               class_batch=config.class_batch, **kwargs)


def _config_dict(config: SelectConfig) -> dict[str, Any]:
  return dataclasses.asdict(config)


def select_experiment(config: SelectConfig, workdir: str,
                      log: Callable[[str], None] = print) -> dict[str, Any]:
  """Selects, saves and evaluates a coreset; writes config.json, selection.npz, metrics.json.

  A workdir that already holds this config's selection.npz is evaluated without selecting again.
  """
  validate_config(config)
  os.makedirs(workdir, exist_ok=True)
  base = config.base
  dataset = distill.load_config_dataset(base)
  prep = data_lib.fit_preprocessing(dataset.x_train, zca=base.zca, zca_reg=base.zca_reg)
  x_train = data_lib.apply_preprocessing(dataset.x_train, prep)
  x_test = data_lib.apply_preprocessing(dataset.x_test, prep)
  distill.check_workdir_config(workdir, config)
  io.save_json(os.path.join(workdir, "config.json"), _config_dict(config))
  num_classes = dataset.num_classes
  y_train = np.asarray(dataset.y_train)
  log(f"{base.dataset}: {len(x_train)} train / {len(x_test)} test samples; coreset "
      f"{config.method} at fraction {config.fraction}")
  selection_path = os.path.join(workdir, "selection.npz")
  key = jax.random.key(config.seed)
  if os.path.exists(selection_path):
    saved = io.load_npz(selection_path)
    idx, weights, seconds = saved["indices"], saved["weights"], float(saved["seconds"])
    log(f"Reusing the selection in {selection_path}.")
  else:
    t0 = time.time()
    idx, weights = run_selection(config, jax.random.fold_in(key, 0), x_train, y_train,
                                 num_classes=num_classes, log=log)
    seconds = time.time() - t0
    io.save_npz(selection_path, indices=idx, weights=weights, labels=y_train[idx],
                seconds=np.float64(seconds))
  log(f"Selected {len(idx)} samples in {seconds:.1f} s.")
  images, labels = x_train[idx], data_lib.one_hot_centered(y_train[idx], num_classes)
  metrics: dict[str, Any] = {"config": _config_dict(config), "num_selected": int(len(idx)),
                             "per_class": int(len(idx) // num_classes),
                             "selection_seconds": round(seconds, 2), "split": dataset.split,
                             "jax_version": jax.__version__, "backend": jax.default_backend()}
  for name in config.evaluators:
    evaluator = distill.make_evaluator(base, x_train, y_train, x_test, dataset.y_test,
                                       num_classes=num_classes, evaluator=name)
    log(f"Evaluating the coreset ({evaluator.describe()}) ...")
    accs = evaluator.accuracies(images, labels)
    metrics[name] = {"evaluator": evaluator.describe(), "test_accs": accs.tolist(),
                     "test_acc": float(accs.mean()), "test_acc_std": float(accs.std())}
  io.save_json(os.path.join(workdir, "metrics.json"), metrics)
  log(coreset_table([metrics]))
  return metrics


def coreset_table(runs: list[dict[str, Any]]) -> str:
  """Markdown table of coreset runs grouped by (fraction, method): mean ± std over runs (seeds)
  of each evaluator's mean test accuracy, and the mean selection time."""
  groups: dict[tuple, list] = {}
  for m in runs:
    c = m["config"]
    groups.setdefault((c["fraction"], m["num_selected"], c["method"]), []).append(m)
  lines = ["| fraction | selected | method | runs | network acc | KRR acc | selection s |",
           "|---|---|---|---|---|---|---|"]
  for (fraction, num, method), ms in sorted(groups.items(),
                                            key=lambda kv: (kv[0][0], select.METHODS.index(
                                                kv[0][2]))):
    cells = []
    for name in ("network", "krr"):
      vals = [m[name]["test_acc"] * 100 for m in ms if name in m]
      cells.append(f"{np.mean(vals):.1f} ± {np.std(vals):.1f}" if vals else "–")
    secs = np.mean([m["selection_seconds"] for m in ms])
    lines.append(f"| {fraction * 100:g}% | {num} | {method} | {len(ms)} | {cells[0]} | "
                 f"{cells[1]} | {secs:.1f} |")
  return "\n".join(lines)
