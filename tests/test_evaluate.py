"""robust_dd.evaluate: KRR accuracy against a NumPy computation; class-balanced subsets."""

import jax
import numpy as np

from robust_dd import evaluate
from robust_dd import kernels


def test_krr_accuracy_equals_numpy_computation():
  rng = np.random.default_rng(0)
  xs = rng.normal(size=(6, 5)).astype(np.float32)
  ys = np.eye(3)[np.arange(6) % 3] - 1 / 3
  xt = rng.normal(size=(40, 5)).astype(np.float32)
  yt = rng.integers(0, 3, size=40)
  kernel_fn = kernels.make_kernel_fn("fc", kernel="nngp", depth=1)
  k_ss = np.asarray(kernel_fn(xs, xs), np.float64)
  k_ts = np.asarray(kernel_fn(xt, xs), np.float64)
  pred = k_ts @ np.linalg.solve(k_ss + 1e-3 * np.trace(k_ss) / 6 * np.eye(6), ys)
  expected = np.mean(pred.argmax(1) == yt)
  got = evaluate.krr_accuracy(kernel_fn, xs, ys, xt, yt, diag_reg=1e-3, batch_size=16)
  assert got == expected


def test_random_subset_is_class_balanced_and_distinct():
  labels = np.repeat(np.arange(4), [5, 7, 3, 9])
  idx = evaluate.random_subset_indices(jax.random.key(0), labels, per_class=3, num_classes=4)
  assert len(set(idx.tolist())) == 12
  np.testing.assert_array_equal(labels[idx], np.repeat(np.arange(4), 3))
