"""robust_dd.evaluate: KRR accuracy against a NumPy computation; class-balanced subsets."""

import jax
import numpy as np
import pytest

from robust_dd import data as data_lib
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
  one_by_one = evaluate.network_accuracies(jax.random.key(0), x, y, xt, yt, seeds=2,
                                           seed_batch=1, **kw)
  np.testing.assert_array_equal(accs, one_by_one)  # The seeds' vmap trains the same networks.
  # A set with shuffled labels teaches nothing that transfers.
  wrong = evaluate.network_accuracies(jax.random.key(0), x, (y + 1) % 3, xt, yt, seeds=2, **kw)
  assert wrong.max() < 0.2
  base = evaluate.random_subset_predictions(
      jax.random.key(1), lambda k, xs, ys: evaluate.network_predictions(
          k, xs, ys, {"test": xt}, seeds=1, **kw), x, y, per_class=2, num_classes=3,
      draws=3)["test"]
  assert base.shape == (3, len(yt)) and set(np.unique(base)) <= {0, 1, 2}
  # The same subsets and networks, trained in one vmap.
  together = evaluate.network_subset_predictions(jax.random.key(1), x, y, {"test": xt},
                                                 per_class=2, num_classes=3, draws=3, **kw)
  np.testing.assert_array_equal(together["test"], base)
  with pytest.raises(ValueError, match="augment"):
    evaluate.network_accuracies(jax.random.key(0), x, y, xt, yt, model=model, augment=True)


def test_corruptions():
  rng = np.random.default_rng(0)
  x = rng.random((20, 8, 8, 1)).astype(np.float32)
  np.testing.assert_allclose(evaluate.corrupt(evaluate.corrupt(x, "invert"), "invert"), x,
                             atol=1e-6)
  flat = np.full((4, 8, 8, 1), 0.5, np.float32)
  noisy = evaluate.corrupt(flat, "gaussian_noise", severity=1)
  assert abs(float(np.std(noisy - flat)) - evaluate.NOISE_SIGMAS[0]) < 0.01
  heavier = evaluate.corrupt(flat, "gaussian_noise", severity=5)
  assert np.std(heavier) > np.std(noisy) and heavier.min() >= 0 and heavier.max() <= 1
  np.testing.assert_allclose(evaluate.corrupt(flat, "blur", severity=5), flat, atol=1e-6)
  blurred = evaluate.corrupt(x, "blur", severity=3)
  np.testing.assert_allclose(blurred.mean(), x.mean(), atol=0.01)  # Reflect padding ~ keeps mass.
  assert np.var(blurred) < np.var(x)
  prep = data_lib.fit_preprocessing(x)
  sets = evaluate.corrupted_test_sets(x, prep, severities=(1, 5))
  assert sorted(sets) == ["blur_s1", "blur_s5", "gaussian_noise_s1", "gaussian_noise_s5",
                          "invert"]
  flat_x = x.reshape(20, -1)
  assert "blur_s1" not in evaluate.corrupted_test_sets(flat_x,
                                                       data_lib.fit_preprocessing(flat_x))
  with pytest.raises(ValueError, match="Unknown corruption"):
    evaluate.corrupt(x, "fog")


def test_robustness_metrics_against_hand_computation():
  y = np.array([0, 1, 1, 0, 2, 2])
  clusters = np.array([0, 0, 1, 1, 2, 2])
  groups = np.array([0, 0, 0, 1, 1, 0])
  preds = {"test": np.array([[0, 1, 0, 0, 2, 1], [0, 0, 1, 0, 2, 2]]),
           "invert": np.array([[1, 1, 1, 1, 1, 1], [0, 1, 1, 0, 2, 2]])}
  m = evaluate.robustness_metrics(preds, y, clusters=clusters, num_clusters=3, groups=groups)
  # Run 1 per-cluster: [1, .5, .5]; run 2: [.5, 1, 1].
  np.testing.assert_allclose(m["cluster_accuracies"], [0.75, 0.75, 0.75])
  np.testing.assert_allclose(m["worst_cluster_accuracy"], 0.5)
  np.testing.assert_allclose(m["mean_cluster_accuracy"], 0.75)
  np.testing.assert_allclose(m["accuracy"], 9 / 12)
  np.testing.assert_allclose(m["rare_accuracy"], 1.0)  # Samples 3 and 4, right in both runs.
  np.testing.assert_allclose(m["common_accuracy"], 5 / 8)
  np.testing.assert_allclose(m["corruptions"]["invert"], (2 + 6) / 12)
  assert "feature_worst_cluster_accuracy" not in m
  # Feature clusters: the same summary under another partition, with the prefix 'feature_'.
  f = evaluate.robustness_metrics(preds, y, clusters=clusters, num_clusters=3, groups=groups,
                                  feature_clusters=np.array([0, 1, 0, 1, 2, 2]))
  # Run 1 per feature cluster: [.5, 1, .5]; run 2: [1, .5, 1].
  np.testing.assert_allclose(f["feature_cluster_accuracies"], [0.75, 0.75, 0.75])
  np.testing.assert_allclose(f["feature_worst_cluster_accuracy"], 0.5)
  np.testing.assert_allclose(f["feature_mean_cluster_accuracy"], 2.0 / 3 + 1.0 / 12)
  assert f["worst_cluster_accuracy"] == m["worst_cluster_accuracy"]
