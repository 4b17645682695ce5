"""The coreset-selection experiment: select a fraction of the real training set per class, then
evaluate it with the finite network and with KRR (what `python -m experiments.select` runs).

The selection algorithms are in `robust_dd.select`; this module adds the inputs some methods need
(`EXTRA_INPUTS`: LCMat-S's warm-up network, the kernel of ridge leverage), the data preparation
and evaluators of `robust_dd.experiment`, and the outputs: config.json, selection.npz (indices,
importance weights; written before evaluation, so a crash during evaluation does not lose the
selection), metrics.json.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from robust_dd import config as config_lib
from robust_dd import data as data_lib
from robust_dd import experiment
from robust_dd import io
from robust_dd import methods as methods_lib
from robust_dd import models
from robust_dd import parallel
from robust_dd import progress
from robust_dd import reporting
from robust_dd import select
from robust_dd import training

SelectConfig = config_lib.SelectConfig


def lcmat_warmup(key: jax.Array, model, x_train, y_train, *, epochs: int,
                 batch_size: int = 256, log=None) -> tuple[np.ndarray, np.ndarray]:
  """LCMat-S's warm-up: a network trained `epochs` epochs on the whole training set (SGD as in
  evaluation, no augmentation); returns its penultimate features and softmax probabilities for
  every training sample. With `log`, training reports its progress (`progress.Progress`)."""
  apply_fn = models.logits_fn(model)
  params, _ = training.train_network(key, x_train, y_train, apply_fn=apply_fn,
                                     init_fn=models.init_fn(model, tuple(x_train.shape[1:])),
                                     epochs=epochs, batch_size=batch_size,
                                     progress=_epochs_progress(epochs, "LCMat-S warm-up", log))
  z = parallel.map_batches(lambda xb: models.embed_fn(model)(params, xb), jnp.asarray(x_train))
  logits = training.predict(apply_fn, params, x_train)
  return np.asarray(z), np.asarray(jax.nn.softmax(logits, -1))


def _epochs_progress(epochs: int, desc: str, log):
  return None if log is None else progress.Progress(epochs, desc=desc, unit="epoch", log=log)


def _lcmat_inputs(config: SelectConfig, key, x_train, y_train, num_classes, log):
  log(f"LCMat-S warm-up: {config.warmup_epochs} epochs on {len(x_train)} training samples ...")
  model = methods_lib.network_model(config, num_classes, x_train.shape[1:])
  return {"lcmat_inputs": lcmat_warmup(key, model, x_train, y_train,
                                       epochs=config.warmup_epochs, log=log)}


def _kernel_inputs(config: SelectConfig, key, x_train, y_train, num_classes, log):
  del key, x_train, y_train, num_classes, log
  return {"kernel_fn": methods_lib.config_eval_kernel_fn(config)}


# Selection methods that need more than the data: what `run_selection` computes for them.
EXTRA_INPUTS: dict[str, Callable[..., dict[str, Any]]] = {"lcmat": _lcmat_inputs,
                                                          "sensitivity_krr": _kernel_inputs}


def run_selection(config: SelectConfig, key: jax.Array, x_train, y_train, *, num_classes: int,
                  log: Callable[[str], None] = print) -> tuple[np.ndarray, np.ndarray]:
  """Selects `select.budget_per_class(fraction)` samples per class by `config.method`."""
  _, counts = data_lib.class_index_table(y_train, num_classes)
  budget = select.budget_per_class(config.fraction, counts)
  k_warm, k_select = jax.random.split(key)
  extra = EXTRA_INPUTS.get(config.method)
  kwargs = extra(config, k_warm, x_train, y_train, num_classes, log) if extra else {}
  log(f"Selecting {budget} per class ({budget * num_classes} of {len(x_train)}) by "
      f"{config.method} ...")
  return select.select_indices(config.method, k_select, x_train, y_train,
                               num_classes=num_classes, budget=budget, ridge=config.ridge,
                               rank=config.rank, dedup_quantile=config.dedup_quantile,
                               num_coords=config.num_coords, eps=config.lcmat_eps,
                               class_batch=config.class_batch,
                               mesh=experiment.config_mesh(config), **kwargs)


def select_experiment(config: SelectConfig, workdir: str,
                      log: Callable[[str], None] = print) -> dict[str, Any]:
  """Selects, saves and evaluates a coreset; writes config.json, selection.npz, metrics.json.

  A workdir that already holds this config's selection.npz is evaluated without selecting again.
  Nothing is written until the config, the data and the workdir have passed every check.
  """
  config_lib.validate_select_config(config)
  dataset = experiment.load_config_dataset(config)
  _, x_train, x_test = experiment.preprocess(config, dataset)
  config_lib.check_workdir(workdir, config)
  io.make_dirs(workdir)
  io.save_json(os.path.join(workdir, "config.json"), config.to_dict())
  num_classes = dataset.num_classes
  y_train = np.asarray(dataset.y_train)
  log(f"{config.data.dataset}: {len(x_train)} train / {len(x_test)} test samples; coreset "
      f"{config.method} at fraction {config.fraction}")
  selection_path = os.path.join(workdir, "selection.npz")
  if os.path.exists(selection_path):
    saved = io.load_npz(selection_path)
    idx, weights, seconds = saved["indices"], saved["weights"], float(saved["seconds"])
    log(f"Reusing the selection in {selection_path}.")
  else:
    t0 = time.time()
    idx, weights = run_selection(config, experiment.stream(config.seed, experiment.INIT_STREAM),
                                 x_train, y_train,
                                 num_classes=num_classes, log=log)
    seconds = time.time() - t0
    io.save_npz(selection_path, indices=idx, weights=weights, labels=y_train[idx],
                seconds=np.float64(seconds))
  log(f"Selected {len(idx)} samples in {seconds:.1f} s.")
  images, labels = x_train[idx], data_lib.one_hot_centered(y_train[idx], num_classes)
  metrics: dict[str, Any] = {"config": config.to_dict(), "flags": config.flat(),
                             "num_selected": int(len(idx)),
                             "per_class": int(len(idx) // num_classes),
                             "selection_seconds": round(seconds, 2), "split": dataset.split,
                             "jax_version": jax.__version__, "backend": jax.default_backend()}
  for name in config.evaluators:
    evaluator = experiment.make_evaluator(config, x_train, y_train, x_test, dataset.y_test,
                                          num_classes=num_classes, evaluator=name, log=log)
    log(f"Evaluating the coreset ({evaluator.describe()}) ...")
    accs = evaluator.accuracies(images, labels)
    metrics[name] = {"evaluator": evaluator.describe(), "test_accs": accs.tolist(),
                     "test_acc": float(accs.mean()), "test_acc_std": float(accs.std())}
  io.save_json(os.path.join(workdir, "metrics.json"), metrics)
  log(reporting.coreset_table([metrics]))
  return metrics
