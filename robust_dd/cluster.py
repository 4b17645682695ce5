"""Clustering for group-robust distillation: jitted k-means and nearest-prototype assignment.

- `kmeans(key, x, k=...)`: k-means++ initialisation, Lloyd iterations, empty clusters re-seeded at
  the points farthest from their centres, `restarts` runs vmapped and the lowest inertia kept.
  Optional `mask` (padded rows) so classes of unequal size can be clustered in one `vmap`.
- `kmeans_per_class`: k clusters within each class (cluster id = class · k + j), classes vmapped.
- `nearest_prototype`: each sample joins the cluster of its nearest prototype (e.g. synthetic
  sample), within its class when labels are given.
- `features`: pixels, random ReLU features, or a network's `embed` output.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from robust_dd import data as data_lib
from robust_dd import names
from robust_dd import parallel
from robust_dd import precision

FEATURES = names.CLUSTER_FEATURES


class KMeansResult(NamedTuple):
  centers: jax.Array      # (k, d)
  assignment: jax.Array   # (n,) int32 in [0, k)
  inertia: jax.Array      # () sum over (unmasked) points of the squared distance to their centre


@precision.full_precision
def squared_distances(x: jax.Array, centers: jax.Array) -> jax.Array:
  """(n, k) squared Euclidean distances, clipped at 0."""
  d = (jnp.sum(x * x, 1)[:, None] - 2.0 * x @ centers.T + jnp.sum(centers * centers, 1)[None, :])
  return jnp.maximum(d, 0.0)


def kmeans_plus_plus(key: jax.Array, x: jax.Array, k: int, *, mask: jax.Array) -> jax.Array:
  """k-means++ seeding: each next centre drawn with probability ∝ squared distance (masked
  points never drawn)."""
  w = mask.astype(x.dtype)
  k0, key = jax.random.split(key)
  first = jax.random.choice(k0, x.shape[0], p=w / jnp.sum(w))
  centers = jnp.zeros((k, x.shape[1]), x.dtype).at[0].set(x[first])
  d2 = jnp.sum((x - x[first]) ** 2, 1)

  def body(i, carry):
    centers, d2 = carry
    p = d2 * w
    total = jnp.sum(p)
    p = jnp.where(total > 0, p / jnp.maximum(total, 1e-30), w / jnp.sum(w))
    idx = jax.random.choice(jax.random.fold_in(key, i), x.shape[0], p=p)
    centers = centers.at[i].set(x[idx])
    return centers, jnp.minimum(d2, jnp.sum((x - x[idx]) ** 2, 1))

  centers, _ = jax.lax.fori_loop(1, k, body, (centers, d2))
  return centers


def lloyd(x: jax.Array, centers: jax.Array, *, mask: jax.Array, iters: int) -> KMeansResult:
  """`iters` Lloyd iterations; a cluster left empty takes the farthest not-yet-used point."""
  x, centers = jnp.asarray(x, jnp.float32), jnp.asarray(centers, jnp.float32)
  k = centers.shape[0]
  w = jnp.asarray(mask).astype(x.dtype)

  def assign(centers):
    d = squared_distances(x, centers)
    a = jnp.argmin(d, 1)
    return a, jnp.take_along_axis(d, a[:, None], 1)[:, 0] * w

  def body(_, centers):
    a, dist = assign(centers)
    onehot = jax.nn.one_hot(a, k, dtype=x.dtype) * w[:, None]
    counts = onehot.sum(0)
    means = (onehot.T @ x) / jnp.maximum(counts, 1.0)[:, None]
    # Re-seed empty clusters at the points farthest from their centres (the j-th empty cluster
    # takes the j-th farthest point).
    empty = counts == 0
    far = jnp.argsort(-dist)[:k]
    slot = jnp.clip(jnp.cumsum(empty) - 1, 0, k - 1)
    return jnp.where(empty[:, None], x[far[slot]], means)

  centers = jax.lax.fori_loop(0, iters, body, centers)
  a, dist = assign(centers)
  return KMeansResult(centers, a.astype(jnp.int32), jnp.sum(dist))


@functools.partial(jax.jit, static_argnames=("k", "iters", "restarts"))
def kmeans(key: jax.Array, x: jax.Array, *, k: int, iters: int = 50, restarts: int = 3,
           mask: Optional[jax.Array] = None) -> KMeansResult:
  """k-means of the rows of `x` (n, d): `restarts` k-means++ runs (vmapped), lowest inertia kept.

  Args:
    key: PRNG key (the seeding); x: (n, d) points; k: number of clusters (<= unmasked points).
    iters: Lloyd iterations per restart. restarts: independent seedings.
    mask: (n,) bool, False for padding rows (never seeds, never counted; still assigned).
  """
  x = jnp.asarray(x, jnp.float32).reshape(x.shape[0], -1)
  mask = jnp.ones(x.shape[0], bool) if mask is None else mask

  def one(key):
    return lloyd(x, kmeans_plus_plus(key, x, k, mask=mask), mask=mask, iters=iters)

  runs = jax.vmap(one)(jax.random.split(key, restarts))
  best = jnp.argmin(runs.inertia)
  return jax.tree_util.tree_map(lambda a: a[best], runs)


def check_k(k: int, counts) -> None:
  """Raises ValueError unless every class (counts) has at least k >= 1 samples."""
  counts = np.asarray(counts)
  if k < 1:
    raise ValueError(f"The number of clusters must be at least 1, got {k}.")
  if k > counts.min():
    raise ValueError(f"{k} clusters per class, but class {int(np.argmin(counts))} has only "
                     f"{int(counts.min())} samples. Lower --num_clusters.")


def kmeans_per_class(key: jax.Array, x, labels, *, num_classes: int, k: int, iters: int = 50,
                     restarts: int = 3, mesh=None) -> np.ndarray:
  """k-means with k clusters inside each class, classes vmapped (on a `mesh`, split over its
  devices); returns (n,) global cluster ids `label · k + j`."""
  x = np.asarray(x, np.float32).reshape(len(x), -1)
  table, counts = data_lib.class_index_table(np.asarray(labels), num_classes)
  check_k(k, counts)
  mask = np.arange(table.shape[1])[None, :] < counts[:, None]
  per_class = jax.vmap(lambda kk, xc, m: kmeans(kk, xc, k=k, iters=iters, restarts=restarts,
                                                mask=m).assignment)
  assignment = np.asarray(parallel.call_split(
      per_class, (jax.random.split(key, num_classes), x[table], mask), mesh))
  ids = np.zeros(len(x), np.int32)
  for c in range(num_classes):
    ids[table[c, :counts[c]]] = c * k + assignment[c, :counts[c]]
  return ids


def nearest_prototype(x, prototypes, *, labels=None, prototype_labels=None) -> jax.Array:
  """Index of each row of `x`'s nearest prototype (squared Euclidean); with labels, only
  prototypes of the sample's own class count."""
  x = jnp.asarray(x, jnp.float32).reshape(x.shape[0], -1)
  prototypes = jnp.asarray(prototypes, jnp.float32).reshape(prototypes.shape[0], -1)
  d = squared_distances(x, prototypes)
  if labels is not None:
    d = jnp.where(jnp.asarray(labels)[:, None] == jnp.asarray(prototype_labels)[None, :], d,
                  jnp.inf)
  return jnp.argmin(d, 1).astype(jnp.int32)


def random_features(key: jax.Array, x, *, dim: int = 256) -> jax.Array:
  """ReLU random features relu(x W / √d) of the flattened rows of x, W ~ N(0, 1): a fixed,
  data-independent embedding."""
  x = jnp.asarray(x, jnp.float32).reshape(x.shape[0], -1)
  w = jax.random.normal(key, (x.shape[1], dim), x.dtype)
  return jax.nn.relu(x @ w / jnp.sqrt(x.shape[1]))


def features(kind: str, x, *, key: Optional[jax.Array] = None,
             embed: Optional[Callable[[jax.Array], jax.Array]] = None,
             batch_size: int = 1000) -> jax.Array:
  """(n, d) clustering features of `x`: 'pixels' (flattened), 'random' (`random_features`) or
  'embed' (`embed(x_batch) -> features`, e.g. a network's penultimate layer, `batch_size` rows
  at a time: one compiled block however large x is)."""
  if kind == "pixels":
    return jnp.asarray(x, jnp.float32).reshape(len(x), -1)
  if kind == "random":
    return random_features(jax.random.key(0) if key is None else key, x)
  if kind == "embed":
    if embed is None:
      raise ValueError("cluster features 'embed' need an embed function.")
    return parallel.map_batches(embed, jnp.asarray(x), batch_size=batch_size)
  raise ValueError(f"Unknown cluster features {kind!r}; choose one of {FEATURES}.")
