"""Risk measures over cluster losses, and the vmapped per-cluster aggregation.

Arrays in, arrays out. With cluster losses L_1..L_K and cluster masses p (uniform by default):

    CVaR_α(L; p) = min_η  η + (1/α) · Σ_k p_k (L_k − η)₊
                 = (1/α) · Σ_k q_k L_k,   q = the worst clusters whose mass sums to α, the
                                            boundary cluster taken fractionally
    robust_objective = (1 − λ) · Σ_k p_k L_k + λ · CVaR_α(L; p)

`cvar` computes the second form exactly by sorting, so it is differentiable in L (almost
everywhere): its gradient is q_k / α on the tail clusters and exactly zero elsewhere. (The
published reference computes its CVaR on detached values; see docs/methods.md.)

Per-cluster losses: `cluster_index_table` pads clusters of unequal size to one (K, S) index table
with counts; `sample_cluster_batch` draws a fixed-size masked batch from every cluster on device;
`map_clusters` evaluates one masked loss on all clusters with a single `jax.vmap`;
`per_cluster_losses` does both for all the samples of each cluster, given their cluster ids.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from robust_dd import groups


def _masses(num: int, weights: Optional[jax.Array], dtype) -> jax.Array:
  if weights is None:
    return jnp.full((num,), 1.0 / num, dtype)
  weights = jnp.asarray(weights, dtype)
  return weights / jnp.sum(weights)


def _check_fraction(tail_fraction) -> None:
  if isinstance(tail_fraction, (int, float)) and not 0.0 < tail_fraction <= 1.0:
    raise ValueError(f"tail_fraction must be in (0, 1], got {tail_fraction}.")


def cvar(losses: jax.Array, *, tail_fraction: float, weights: Optional[jax.Array] = None
         ) -> jax.Array:
  """Conditional value at risk of the (K,) `losses` at level `tail_fraction` (α).

  Args:
    losses: (K,) cluster losses.
    tail_fraction: α in (0, 1]: 1 gives the weighted mean, α <= min p_k the worst cluster.
    weights: (K,) nonnegative cluster masses (normalised here; zero-mass clusters never count);
      None for uniform.
  """
  _check_fraction(tail_fraction)
  losses = jnp.asarray(losses)
  p = _masses(losses.shape[0], weights, losses.dtype)
  order = jnp.argsort(-losses)
  p_sorted = p[order]
  before = jnp.cumsum(p_sorted) - p_sorted
  tail = jnp.clip(tail_fraction - before, 0.0, p_sorted)  # Mass each cluster puts in the tail.
  return jnp.sum(tail * losses[order]) / tail_fraction


def robust_objective(cluster_losses: jax.Array, *, tail_fraction: float, robust_weight: float,
                     weights: Optional[jax.Array] = None) -> jax.Array:
  """(1 − λ) · Σ p_k L_k + λ · CVaR_α(L; p), with λ = `robust_weight` in [0, 1]."""
  if isinstance(robust_weight, (int, float)) and not 0.0 <= robust_weight <= 1.0:
    raise ValueError(f"robust_weight must be in [0, 1], got {robust_weight}.")
  losses = jnp.asarray(cluster_losses)
  p = _masses(losses.shape[0], weights, losses.dtype)
  mean = jnp.sum(p * losses)
  return ((1.0 - robust_weight) * mean
          + robust_weight * cvar(losses, tail_fraction=tail_fraction, weights=p))


def group_mean_losses(losses: jax.Array, group_ids: jax.Array, *, num_groups: int
                      ) -> tuple[jax.Array, jax.Array]:
  """The (K,) mean of per-sample `losses` (n,) over each group's members, and the (K,) member
  counts; an empty group's mean is 0. Differentiable in `losses` (a one-hot matmul, jittable)."""
  onehot = jax.nn.one_hot(group_ids, num_groups, dtype=losses.dtype)
  counts = jnp.sum(onehot, 0)
  return (onehot.T @ losses) / jnp.maximum(counts, 1.0), counts


def worst_group(values, *, counts=None) -> float:
  """The smallest of per-group `values` (e.g. accuracies), over groups with `counts` > 0."""
  values = np.asarray(values, np.float64)
  if counts is not None:
    values = values[np.asarray(counts) > 0]
  if values.size == 0:
    raise ValueError("worst_group needs at least one non-empty group.")
  return float(values.min())


def group_accuracies(correct, groups, *, num_groups: int) -> tuple[np.ndarray, np.ndarray]:
  """Per-group accuracy of boolean `correct` under integer `groups`: (accuracies, counts);
  empty groups get accuracy NaN."""
  correct, groups = np.asarray(correct, np.float64), np.asarray(groups)
  counts = np.bincount(groups, minlength=num_groups)
  hits = np.bincount(groups, weights=correct, minlength=num_groups)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(counts > 0, hits / np.maximum(counts, 1), np.nan), counts


# Jitted aliases for users: tail_fraction and robust_weight stay traced (a new value does not
# recompile); their range is checked only when they are Python numbers.
cvar_jit = jax.jit(cvar)
robust_objective_jit = jax.jit(robust_objective)


# ----------------------------------------------------------------------- per-cluster losses


# Clusters are padded groups: one index table and one sampler serve classes and clusters alike.
cluster_index_table = groups.index_table


def sample_cluster_batch(key: jax.Array, table: jax.Array, counts: jax.Array, *,
                         per_cluster: int, logits: Optional[jax.Array] = None
                         ) -> tuple[jax.Array, jax.Array]:
  """Up to `per_cluster` distinct members of every cluster, (idx, mask) (K, per_cluster); see
  `groups.sample`."""
  return groups.sample(key, table, counts, per_group=per_cluster, logits=logits)


def map_clusters(loss_fn: Callable[..., jax.Array], params: Any, batch: Any, mask: jax.Array
                 ) -> jax.Array:
  """The (K,) losses `loss_fn(params, batch_k, mask_k)` of every cluster, with one `vmap`.

  Args:
    loss_fn: the masked loss of one cluster; `batch_k` is `batch` with the leading cluster axis
      removed, `mask_k` (S,) marks its real rows.
    params: shared by all clusters (not vmapped), e.g. the synthetic set.
    batch: pytree with a leading (K, S, ...) cluster axis, e.g. from `sample_cluster_batch`.
    mask: (K, S) bool.
  """
  return jax.vmap(loss_fn, in_axes=(None, 0, 0))(params, batch, mask)


def per_cluster_losses(loss_fn: Callable[..., jax.Array], params: Any, data: Any, cluster_ids,
                       *, num_clusters: int, width: Optional[int] = None) -> jax.Array:
  """The (K,) losses of all the samples of every cluster: pads each cluster's rows of `data` (a
  pytree of (n, ...) arrays) to `width` (default: the largest cluster) with a mask, then
  `map_clusters(loss_fn, params, padded, mask)`. `loss_fn(params, data_k, mask_k)` is the masked
  loss of one cluster; an empty cluster gets whatever `loss_fn` gives an all-False mask."""
  ids = np.asarray(cluster_ids)
  width = width or max(int(np.bincount(ids, minlength=num_clusters).max()), 1)
  table, counts = cluster_index_table(ids, num_clusters, width=width)
  mask = jnp.arange(width)[None, :] < counts[:, None]
  padded = jax.tree_util.tree_map(lambda a: jnp.asarray(a)[table], data)
  return map_clusters(loss_fn, params, padded, mask)
