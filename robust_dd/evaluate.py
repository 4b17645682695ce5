"""Evaluation of distilled or selected sets: KRR test accuracy and random-subset baselines."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from robust_dd import data as data_lib
from robust_dd import kernels
from robust_dd import krr


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
