"""robust_dd.evaluate: KRR accuracy against a NumPy computation; class-balanced subsets."""

import jax
import numpy as np
import pytest

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


def _blobs(seed, n_per_class, classes=3, dim=6):
  rng = np.random.default_rng(seed)
  centers = np.random.default_rng(99).normal(size=(classes, dim)) * 3
  y = np.repeat(np.arange(classes), n_per_class)
  return (centers[y] + rng.normal(size=(len(y), dim))).astype(np.float32), y


def test_network_accuracy_learns_separable_data_and_is_reproducible():
  from robust_dd import models
  x, y = _blobs(0, 10)
  xt, yt = _blobs(1, 50)
  model = models.make_network("mlp", num_classes=3, input_shape=(6,), depth=1, width=16)
  kw = dict(model=model, epochs=60, batch_size=16, learning_rate=0.05, augment=False)
  accs = evaluate.network_accuracies(jax.random.key(0), x, np.eye(3)[y], xt, yt, seeds=2, **kw)
  assert accs.shape == (2,) and accs.min() > 0.9
  again = evaluate.network_accuracies(jax.random.key(0), x, y, xt, yt, seeds=2, **kw)
  np.testing.assert_array_equal(accs, again)  # Label vectors and integer labels agree.
  # A set with shuffled labels teaches nothing that transfers.
  wrong = evaluate.network_accuracies(jax.random.key(0), x, (y + 1) % 3, xt, yt, seeds=2, **kw)
  assert wrong.max() < 0.2
  base = evaluate.random_subset_network_accuracies(jax.random.key(1), x, y, xt, yt, per_class=2,
                                                   num_classes=3, draws=3, **kw)
  assert base.shape == (3,) and np.all((0 <= base) & (base <= 1))
  with pytest.raises(ValueError, match="augment"):
    evaluate.network_accuracies(jax.random.key(0), x, y, xt, yt, model=model, augment=True)
