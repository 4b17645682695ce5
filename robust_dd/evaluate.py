"""Evaluation of distilled or selected sets: KRR and finite-network test accuracy, and the
random-subset baselines under the same evaluators. Nothing is ever chosen on test data."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from robust_dd import augment as augment_lib
from robust_dd import data as data_lib
from robust_dd import kernels
from robust_dd import krr
from robust_dd import models
from robust_dd import training

# DSA with parameters drawn per sample: the augmentation used to train evaluation networks.
# One module-level object, so jitted training compiles once per shape.
dsa_per_sample = functools.partial(augment_lib.dsa, per_sample=True)


def krr_predictions(kernel_fn, support_images, support_labels, test_images, *,
                    diag_reg: float = 1e-6, batch_size: int = 256) -> np.ndarray:
  """KRR predictions (n_test, C) of a support set on test images, kernels computed in blocks."""
  k_ss = kernels.kernel_matrix(kernel_fn, support_images, batch_size=batch_size)
  k_ts = kernels.kernel_matrix(kernel_fn, test_images, support_images, batch_size=batch_size)
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


def random_subset_krr_accuracy(key: jax.Array, kernel_fn, train_images, train_labels,
                               test_images, test_labels, *, per_class: int, num_classes: int,
                               draws: int = 5, diag_reg: float = 1e-6, batch_size: int = 256
                               ) -> np.ndarray:
  """KRR test accuracy of `draws` independent random class-balanced subsets (one value each)."""
  accs = []
  for i in range(draws):
    idx = random_subset_indices(jax.random.fold_in(key, i), train_labels, per_class=per_class,
                                num_classes=num_classes)
    y = data_lib.one_hot_centered(train_labels[idx], num_classes)
    accs.append(krr_accuracy(kernel_fn, train_images[idx], y, test_images, test_labels,
                             diag_reg=diag_reg, batch_size=batch_size))
  return np.asarray(accs)


def _integer_labels(labels) -> np.ndarray:
  labels = np.asarray(labels)
  return np.argmax(labels, -1) if labels.ndim == 2 else labels.astype(np.int32)


def network_accuracies(key: jax.Array, images, labels, test_images, test_labels, *, model,
                       seeds: int = 3, epochs: int = 300, batch_size: int = 256,
                       learning_rate: float = 0.01, momentum: float = 0.9,
                       weight_decay: float = 5e-4, augment: bool = True) -> np.ndarray:
  """Test accuracy of `seeds` fresh networks, each trained on (images, labels) (one value each).

  Seed i initialises the network and orders the batches with `fold_in(key, i)`. Training follows
  `training.train_network` (SGD, momentum, weight decay, lr x0.1 half-way, per-sample DSA when
  `augment`) for exactly `epochs` epochs; the last network is tested (no epoch is picked on test
  data). `labels` are integer labels or label vectors (their argmax is the class).
  """
  images = np.asarray(images, np.float32)
  if augment and images.ndim != 4:
    raise ValueError(f"DSA augments images (n, H, W, C); got shape {images.shape}. "
                     "Evaluate flat data with augment=False.")
  y = _integer_labels(labels)
  apply_fn = models.logits_fn(model)
  init = models.init_fn(model, tuple(images.shape[1:]))
  accs = []
  for i in range(seeds):
    params, _ = training.train_network(
        jax.random.fold_in(key, i), images, y, apply_fn=apply_fn, init_fn=init, epochs=epochs,
        batch_size=batch_size, learning_rate=learning_rate, momentum=momentum,
        weight_decay=weight_decay, augment=dsa_per_sample if augment else None)
    accs.append(training.accuracy(apply_fn, params, test_images, test_labels))
  return np.asarray(accs)


def random_subset_network_accuracies(key: jax.Array, train_images, train_labels, test_images,
                                     test_labels, *, per_class: int, num_classes: int,
                                     draws: int = 3, **network_kwargs) -> np.ndarray:
  """Finite-network accuracy of `draws` random class-balanced subsets (subset i, network seed i).

  `network_kwargs` go to `network_accuracies` (model, epochs, batch_size, augment, ...).
  """
  accs = []
  for i in range(draws):
    k = jax.random.fold_in(key, i)
    idx = random_subset_indices(k, train_labels, per_class=per_class, num_classes=num_classes)
    accs.append(network_accuracies(k, np.asarray(train_images)[idx],
                                   np.asarray(train_labels)[idx], test_images, test_labels,
                                   seeds=1, **network_kwargs)[0])
  return np.asarray(accs)
