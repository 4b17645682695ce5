"""k-means against scikit-learn, its invariants, per-class clustering and prototype assignment."""

import jax
import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.datasets import load_digits

from robust_dd import cluster


def numpy_inertia(x, assignment, k):
  return sum(np.sum((x[assignment == j] - x[assignment == j].mean(0)) ** 2) for j in range(k)
             if np.any(assignment == j))


@pytest.mark.parametrize("k", [5, 10])
def test_kmeans_inertia_within_one_percent_of_sklearn_on_digits(k):
  x = load_digits().data.astype(np.float32)
  ours = cluster.kmeans(jax.random.key(0), x, k=k, restarts=3, iters=100)
  theirs = KMeans(n_clusters=k, n_init=3, random_state=0).fit(x)
  assert float(ours.inertia) <= 1.01 * theirs.inertia_
  a = np.asarray(ours.assignment)
  assert len(np.unique(a)) == k
  # The returned inertia is that of the returned assignment and centres, and each point sits
  # with its nearest centre (a Lloyd fixed point up to the last assignment).
  np.testing.assert_allclose(float(ours.inertia), numpy_inertia(x, a, k), rtol=1e-3)
  d = ((x[:, None, :] - np.asarray(ours.centers)[None]) ** 2).sum(-1)
  np.testing.assert_array_equal(a, d.argmin(1))


def test_kmeans_mask_ignores_padding_and_reseeds_empty_clusters():
  rng = np.random.default_rng(0)
  blobs = np.concatenate([rng.normal(c, 0.1, size=(20, 2)) for c in (0.0, 5.0, 10.0)])
  padded = np.concatenate([blobs, np.full((10, 2), 1e3)]).astype(np.float32)
  mask = np.arange(len(padded)) < len(blobs)
  result = cluster.kmeans(jax.random.key(1), padded, k=3, mask=mask)
  centers = np.sort(np.asarray(result.centers)[:, 0])
  np.testing.assert_allclose(centers, [0.0, 5.0, 10.0], atol=0.1)  # Padding pulled nothing.
  # Seeded so that two centres start on the same point: one cluster goes empty and is re-seeded.
  x = np.asarray([[0.0], [0.0], [0.0], [10.0]], np.float32)
  lloyd = cluster.lloyd(x, np.asarray([[0.0], [0.0]], np.float32), mask=np.ones(4, bool), iters=3)
  assert sorted(np.asarray(lloyd.centers)[:, 0].tolist()) == [0.0, 10.0]
  assert float(lloyd.inertia) == 0.0


def test_kmeans_per_class_ids_stay_in_their_class():
  data = load_digits()
  ids = cluster.kmeans_per_class(jax.random.key(0), data.data, data.target, num_classes=10, k=3)
  assert ids.min() == 0 and ids.max() == 29
  np.testing.assert_array_equal(ids // 3, data.target)
  assert len(np.unique(ids)) == 30
  with pytest.raises(ValueError, match="num_clusters"):
    cluster.kmeans_per_class(jax.random.key(0), data.data[:40], data.target[:40], num_classes=10,
                             k=5)


def test_nearest_prototype_matches_numpy_and_respects_labels():
  rng = np.random.default_rng(3)
  x, protos = rng.normal(size=(50, 4)), rng.normal(size=(6, 4))
  d = ((x[:, None] - protos[None]) ** 2).sum(-1)
  np.testing.assert_array_equal(cluster.nearest_prototype(x, protos), d.argmin(1))
  labels, proto_labels = rng.integers(0, 3, 50), np.repeat(np.arange(3), 2)
  got = np.asarray(cluster.nearest_prototype(x, protos, labels=labels,
                                             prototype_labels=proto_labels))
  np.testing.assert_array_equal(proto_labels[got], labels)
  masked = np.where(labels[:, None] == proto_labels[None], d, np.inf)
  np.testing.assert_array_equal(got, masked.argmin(1))


def test_features():
  x = np.random.default_rng(0).random((7, 4, 4, 1)).astype(np.float32)
  np.testing.assert_array_equal(cluster.features("pixels", x), x.reshape(7, -1))
  f = np.asarray(cluster.features("random", x, key=jax.random.key(0)))
  assert f.shape == (7, 256) and f.min() >= 0
  np.testing.assert_allclose(cluster.features("embed", x, embed=lambda b: b.sum((1, 2, 3))[:, None],
                                              batch_size=3)[:, 0], x.sum((1, 2, 3)), rtol=1e-6)
  with pytest.raises(ValueError, match="cluster features"):
    cluster.features("sift", x)
