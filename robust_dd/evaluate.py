"""Evaluation of distilled or selected sets: KRR and finite-network test predictions and
accuracy, the random-subset baselines under the same evaluators, and robustness: accuracy per
test cluster (worst and mean), on a rare subgroup, and under corruptions. Nothing is ever chosen
on test data."""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage  # scipy ships with jax.

from robust_dd import augment as augment_lib
from robust_dd import cluster
from robust_dd import data as data_lib
from robust_dd import kernels
from robust_dd import krr
from robust_dd import models
from robust_dd import progress
from robust_dd import risk
from robust_dd import training

# DSA with parameters drawn per sample: the augmentation used to train evaluation networks.
# One module-level object, so jitted training compiles once per shape.
dsa_per_sample = functools.partial(augment_lib.dsa, per_sample=True)


def krr_predictions(kernel_fn, support_images, support_labels, test_images, *,
                    diag_reg: float = 1e-6, batch_size: int = 256, mesh=None) -> np.ndarray:
  """KRR predictions (n_test, C) of a support set on test images, kernels (or, for kernels with
  features, the features) computed in blocks (on a `mesh`, row blocks split over its devices)."""
  if hasattr(kernel_fn, "features"):
    phi_s = kernels.feature_matrix(kernel_fn, support_images, batch_size=batch_size)
    phi_t = kernels.feature_matrix(kernel_fn, test_images, batch_size=batch_size)
    predict = krr.make_feature_krr_predictor(jnp.asarray(phi_s), jnp.asarray(support_labels),
                                             diag_reg=diag_reg)
    return np.asarray(predict(jnp.asarray(phi_t)))
  k_ss = kernels.kernel_matrix(kernel_fn, support_images, batch_size=batch_size, mesh=mesh)
  k_ts = kernels.kernel_matrix(kernel_fn, test_images, support_images, batch_size=batch_size,
                               mesh=mesh)
  predict = krr.make_krr_predictor(jnp.asarray(k_ss), jnp.asarray(support_labels),
                                   diag_reg=diag_reg)
  return np.asarray(predict(jnp.asarray(k_ts)))


def krr_accuracy(kernel_fn, support_images, support_labels, test_images, test_labels, *,
                 diag_reg: float = 1e-6, batch_size: int = 256) -> float:
  """Fraction of test images whose KRR prediction's argmax equals the integer test label."""
  pred = krr_predictions(kernel_fn, support_images, support_labels, test_images,
                         diag_reg=diag_reg, batch_size=batch_size)
  return float(np.mean(np.argmax(pred, axis=-1) == np.asarray(test_labels)))


def random_subset_indices(key: jax.Array, labels: np.ndarray, *, per_class: int,
                          num_classes: int) -> np.ndarray:
  """Indices of a class-balanced random subset: `per_class` distinct samples of each class."""
  table, counts = data_lib.class_index_table(labels, num_classes)
  data_lib.check_per_class(counts, per_class, what="The random subset")
  return np.asarray(data_lib.sample_class_balanced(key, table, counts, per_class=per_class))


def _integer_labels(labels) -> np.ndarray:
  labels = np.asarray(labels)
  return np.argmax(labels, -1) if labels.ndim == 2 else labels.astype(np.int32)


def krr_label_predictions(kernel_fn, support_images, support_labels, test_sets: dict, *,
                          diag_reg: float = 1e-6, batch_size: int = 256,
                          mesh=None) -> dict[str, np.ndarray]:
  """Predicted classes (1, n) of KRR from the support set on each named test set."""
  return {name: np.argmax(krr_predictions(kernel_fn, support_images, support_labels, x,
                                          diag_reg=diag_reg, batch_size=batch_size,
                                          mesh=mesh), -1)[None]
          for name, x in test_sets.items()}


def network_predictions(key: jax.Array, images, labels, test_sets: dict, *, model,
                        seeds: int = 3, epochs: int = 300, batch_size: int = 256,
                        learning_rate: float = 0.01, momentum: float = 0.9,
                        weight_decay: float = 5e-4, augment: bool = True,
                        seed_batch: int = 0, mesh=None,
                        log: Optional[Callable[[str], None]] = None,
                        chunk: int = 0) -> dict[str, np.ndarray]:
  """Predicted classes (seeds, n) on each named test set of `seeds` fresh networks, each trained
  on (images, labels).

  Seed i initialises the network and orders the batches with `fold_in(key, i)`. Training follows
  `training.train_network` (SGD, momentum, weight decay, lr x0.1 half-way, per-sample DSA when
  `augment`) for exactly `epochs` epochs; the last network is tested (no epoch is picked on test
  data). `labels` are integer labels or label vectors (their argmax is the class). The networks
  are trained `seed_batch` at a time in one `vmap` (0: all seeds at once; 1: one by one); each
  network is the same whichever way; on a `mesh` (`parallel.make_mesh`) each vmap's networks
  are split over its devices. With `log`, training reports its progress (`progress.Progress`:
  a bar on a terminal, else a line every 30 s of a long run); the networks are the same.
  `chunk` > 0: each step's gradient in chunks of at most that many images
  (`training.train_network`; the same networks to float rounding, faster on CPU).
  """
  keys = [jax.random.fold_in(key, i) for i in range(seeds)]
  return _network_predictions(keys, np.asarray(images, np.float32), _integer_labels(labels),
                              test_sets, stacked=False, seed_batch=seed_batch, model=model,
                              epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
                              momentum=momentum, weight_decay=weight_decay, augment=augment,
                              mesh=mesh, log=log, chunk=chunk)


def network_subset_predictions(key: jax.Array, train_images, train_labels, test_sets: dict, *,
                               per_class: int, num_classes: int, draws: int, model,
                               seed_batch: int = 0, **kwargs) -> dict[str, np.ndarray]:
  """`random_subset_predictions` with `network_predictions(seeds=1)` as the predictor, the
  `draws` networks trained `seed_batch` at a time in one `vmap` (0: all at once): the same
  subsets (subset i drawn with `fold_in(key, i)`) and the same networks as that composition.
  Other arguments as in `network_predictions`."""
  subset_keys = [jax.random.fold_in(key, i) for i in range(draws)]
  idx = np.stack([random_subset_indices(k, train_labels, per_class=per_class,
                                        num_classes=num_classes) for k in subset_keys])
  return _network_predictions(
      [jax.random.fold_in(k, 0) for k in subset_keys],
      np.asarray(train_images, np.float32)[idx], _integer_labels(train_labels)[idx], test_sets,
      stacked=True, seed_batch=seed_batch, model=model, **kwargs)


def _network_predictions(keys, images, y, test_sets, *, stacked, seed_batch, model, epochs=300,
                         batch_size=256, learning_rate=0.01, momentum=0.9, weight_decay=5e-4,
                         augment=True, mesh=None, log=None, chunk=0) -> dict[str, np.ndarray]:
  """Trains one network per key (on `images`, or with `stacked` on images[i]), `seed_batch` at a
  time, and returns their predicted classes (len(keys), n) on each named test set; with `log`,
  reporting the epochs trained (`progress.Progress`)."""
  if augment and images.ndim != 4 + stacked:
    raise ValueError(f"DSA augments images (n, H, W, C); got shape {images.shape}. "
                     "Evaluate flat data with augment=False.")
  apply_fn = models.logits_fn(model)
  init = models.init_fn(model, tuple(images.shape[1 + stacked:]))
  preds = {name: [] for name in test_sets}
  chunk = seed_batch or len(keys)
  batches = -(-len(keys) // chunk)
  bar = None if log is None else progress.Progress(
      epochs * batches, unit="epoch", log=log,
      desc=f"{len(keys)} networks" + (f" in {batches} batches" if batches > 1 else ""))
  for start in range(0, len(keys), chunk):
    part = slice(start, start + chunk)
    trained, _ = training.train_network(
        jnp.stack(keys[part]), images[part] if stacked else images, y[part] if stacked else y,
        apply_fn=apply_fn, init_fn=init, epochs=epochs, batch_size=batch_size,
        learning_rate=learning_rate, momentum=momentum, weight_decay=weight_decay,
        augment=dsa_per_sample if augment else None, stacked=stacked, mesh=mesh, progress=bar,
        chunk=chunk)
    for j in range(len(keys[part])):
      params = jax.tree_util.tree_map(lambda a, j=j: a[j], trained)
      for name, x in test_sets.items():
        preds[name].append(np.argmax(training.predict(apply_fn, params, x), -1))
  if bar is not None:
    bar.close()
  return {name: np.stack(p) for name, p in preds.items()}


def network_accuracies(key: jax.Array, images, labels, test_images, test_labels, **kwargs
                       ) -> np.ndarray:
  """Test accuracy (one value per seed) of `network_predictions` (same arguments)."""
  preds = network_predictions(key, images, labels, {"test": test_images}, **kwargs)["test"]
  return np.mean(preds == np.asarray(test_labels)[None], axis=1)


def random_subset_predictions(key: jax.Array, predict_fn, train_images, train_labels, *,
                              per_class: int, num_classes: int, draws: int
                              ) -> dict[str, np.ndarray]:
  """Stacks `predict_fn(key_i, images_i, labels_i) -> {name: (1, n)}` over `draws` random
  class-balanced subsets (subset i drawn and evaluated with `fold_in(key, i)`): {name: (draws, n)}.
  """
  out = {}
  for i in range(draws):
    k = jax.random.fold_in(key, i)
    idx = random_subset_indices(k, train_labels, per_class=per_class, num_classes=num_classes)
    for name, p in predict_fn(k, np.asarray(train_images)[idx],
                              np.asarray(train_labels)[idx]).items():
      out.setdefault(name, []).append(p[0])
  return {name: np.stack(p) for name, p in out.items()}


# ------------------------------------------------------------------------------ robustness

CORRUPTIONS = ("gaussian_noise", "blur", "invert")
# Severities 1..5 as in CIFAR-10-C (Hendrycks & Dietterich, 2019), images in [0, 1].
NOISE_SIGMAS = (0.08, 0.12, 0.18, 0.26, 0.38)
BLUR_SIGMAS = (0.4, 0.6, 0.7, 0.8, 1.0)


def corrupt(images, kind: str, *, severity: int = 3, seed: int = 0) -> np.ndarray:
  """A corrupted copy of raw images in [0, 1]: 'gaussian_noise' (σ by severity, clipped),
  'blur' (Gaussian blur over H and W, σ in pixels by severity; needs NHWC images) or 'invert'
  (1 − x; the same at every severity)."""
  x = np.asarray(images, np.float32)
  if not 1 <= severity <= 5:
    raise ValueError(f"severity must be in 1..5, got {severity}.")
  if kind == "gaussian_noise":
    noise = np.random.default_rng(seed).normal(size=x.shape).astype(np.float32)
    return np.clip(x + NOISE_SIGMAS[severity - 1] * noise, 0.0, 1.0)
  if kind == "blur":
    if x.ndim != 4:
      raise ValueError(f"blur needs images (n, H, W, C); got shape {x.shape}.")
    sigma = BLUR_SIGMAS[severity - 1]
    return ndimage.gaussian_filter(x, sigma=(0, sigma, sigma, 0), mode="reflect")
  if kind == "invert":
    return 1.0 - x
  raise ValueError(f"Unknown corruption {kind!r}; choose one of {CORRUPTIONS}.")


def corrupted_test_sets(raw_test, prep: data_lib.Preprocessing, *, severities=(1, 3, 5),
                        seed: int = 0) -> dict[str, np.ndarray]:
  """Preprocessed corrupted copies of the raw test images, named 'KIND_sS' ('invert' once);
  corruptions that do not apply to the data's shape (blur of flat signals) are skipped."""
  out = {}
  for kind in CORRUPTIONS:
    if kind == "blur" and np.ndim(raw_test) != 4:
      continue
    for s in (severities if kind != "invert" else (1,)):
      name = kind if kind == "invert" else f"{kind}_s{s}"
      out[name] = data_lib.apply_preprocessing(corrupt(raw_test, kind, severity=s, seed=seed),
                                               prep)
  return out


def cluster_test_set(x_test, *, k: int = 10, seed: int = 0) -> np.ndarray:
  """(n_test,) k-means cluster ids (k-means++, 3 restarts) of the test inputs, for per-cluster
  accuracy. Deterministic in `seed`; uses no labels."""
  x = np.asarray(x_test, np.float32).reshape(len(x_test), -1)
  return np.asarray(cluster.kmeans(jax.random.key(seed), x, k=k, restarts=3).assignment)


def cluster_summary(correct, clusters, *, num_clusters: int, prefix: str = ""
                    ) -> dict[str, Any]:
  """Per-cluster accuracy of `correct` (runs, n): `{prefix}cluster_accuracies` (mean over runs),
  `{prefix}worst_cluster_accuracy` (the mean over runs of each run's worst non-empty cluster)
  and `{prefix}mean_cluster_accuracy`."""
  per_run = [risk.group_accuracies(c, clusters, num_groups=num_clusters) for c in correct]
  accs = np.stack([a for a, _ in per_run])
  counts = per_run[0][1]
  return {f"{prefix}cluster_accuracies": np.nanmean(accs, 0).round(4).tolist(),
          f"{prefix}worst_cluster_accuracy": float(np.mean([risk.worst_group(a, counts=counts)
                                                            for a in accs])),
          f"{prefix}mean_cluster_accuracy": float(np.mean(np.nanmean(accs, 1)))}


def robustness_metrics(predictions: dict[str, np.ndarray], test_labels, *, clusters,
                       num_clusters: int, groups=None, feature_clusters=None
                       ) -> dict[str, Any]:
  """Summaries of predicted classes (runs, n) on the clean test set ('test') and on any other
  named test sets (corruptions). Every number is a mean over runs (seeds or random subsets):

  accuracy; `cluster_summary` of the (pixel) test `clusters`, and with `feature_clusters` the
  same with the prefix 'feature_' (test clusters in a network's embedding); with `groups`
  (1 = rare subgroup), rare_accuracy and common_accuracy; and `corruptions: {name: accuracy}`.
  """
  y = np.asarray(test_labels)
  correct = predictions["test"] == y[None]
  out = {"accuracy": float(correct.mean()),
         **cluster_summary(correct, clusters, num_clusters=num_clusters)}
  if feature_clusters is not None:
    out.update(cluster_summary(correct, feature_clusters, num_clusters=num_clusters,
                               prefix="feature_"))
  if groups is not None:
    groups = np.asarray(groups)
    out["rare_accuracy"] = float(correct[:, groups == 1].mean())
    out["common_accuracy"] = float(correct[:, groups == 0].mean())
  out["corruptions"] = {name: float((p == y[None]).mean())
                        for name, p in predictions.items() if name != "test"}
  return out
