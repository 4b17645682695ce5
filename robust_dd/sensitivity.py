"""Provable subset selection (docs/methods.md): sensitivity scores and importance sampling.

Pure, jittable building blocks, arrays in and arrays out:

- `kmeans_sensitivity`: s(p) = d(p, B)² / Σ_q d(q, B)² + 1 / |cluster(p)| for centres B.
- `ridge_leverage_scores`: τ_i = [K (K + λI)⁻¹]_ii of a kernel matrix, exactly.
- `feature_leverage_scores`: the same for K ≈ Φ Φᵀ (random features or `nystrom_features`), in
  O(n r²) instead of O(n³); equal to the exact scores when Φ Φᵀ = K.
- `weighted_sample`: `num` indices drawn ∝ p, without replacement by default (Gumbel top-k), with
  importance weights w such that Σ_{i∈S} w_i f_i is an unbiased estimate of Σ_i f_i.
- `dedup_mask`: greedy near-duplicate removal (exact duplicates always removed).
- `importance_probabilities` / `group_unbiasing_weights`: the importance-sampled real batches,
  p_i = (1 − β) ℓ_i / Σ_c ℓ + β / n_c within each class c.
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp

from robust_dd import cluster


def kmeans_sensitivity(x: jax.Array, centers: jax.Array, *,
                       mask: Optional[jax.Array] = None) -> jax.Array:
  """(n,) k-means sensitivities of the rows of `x` for `centers` (k, d).

  d(p, B) is the distance to the nearest centre, and |cluster(p)| the number of (unmasked) points
  sharing p's nearest centre. Masked rows (padding) get 0. If every point sits on a centre, the
  distance term is 0 and only 1/|cluster| remains.
  """
  x = jnp.asarray(x, jnp.float32).reshape(x.shape[0], -1)
  w = jnp.ones(x.shape[0], jnp.float32) if mask is None else jnp.asarray(mask, jnp.float32)
  d2 = cluster.squared_distances(x, jnp.asarray(centers, jnp.float32).reshape(centers.shape[0], -1))
  nearest = jnp.argmin(d2, 1)
  dist = jnp.min(d2, 1) * w
  sizes = jnp.zeros(centers.shape[0], jnp.float32).at[nearest].add(w)
  total = jnp.sum(dist)
  return (jnp.where(total > 0, dist / jnp.where(total > 0, total, 1.0), 0.0)
          + w / jnp.maximum(sizes[nearest], 1.0))


def ridge_leverage_scores(k: jax.Array, *, ridge: float) -> jax.Array:
  """(n,) ridge leverage scores τ_i = [K (K + λI)⁻¹]_ii of a PSD kernel matrix K (n, n).

  Each τ_i lies in [0, 1); they sum to the effective dimension tr(K (K + λI)⁻¹).
  Computed as 1 − λ [(K + λI)⁻¹]_ii from a Cholesky factor.
  """
  if isinstance(ridge, (int, float)) and ridge <= 0:
    raise ValueError(f"ridge must be positive, got {ridge}.")
  k = jnp.asarray(k, jnp.float32)
  n = k.shape[0]
  chol = jnp.linalg.cholesky(k + ridge * jnp.eye(n, dtype=k.dtype))
  inv_chol = jax.scipy.linalg.solve_triangular(chol, jnp.eye(n, dtype=k.dtype), lower=True)
  return 1.0 - ridge * jnp.sum(inv_chol ** 2, axis=0)


def feature_leverage_scores(phi: jax.Array, *, ridge: float) -> jax.Array:
  """(n,) ridge leverage scores of K ≈ Φ Φᵀ from features Φ (n, r):
  τ_i = φ_iᵀ (ΦᵀΦ + λI)⁻¹ φ_i, in O(n r²)."""
  if isinstance(ridge, (int, float)) and ridge <= 0:
    raise ValueError(f"ridge must be positive, got {ridge}.")
  phi = jnp.asarray(phi, jnp.float32)
  gram = phi.T @ phi + ridge * jnp.eye(phi.shape[1], dtype=phi.dtype)
  factor = jax.scipy.linalg.cho_factor(gram, lower=True)
  return jnp.sum(phi * jax.scipy.linalg.cho_solve(factor, phi.T).T, axis=1)


def nystrom_features(k_nm: jax.Array, k_mm: jax.Array, *, rtol: float = 1e-6) -> jax.Array:
  """Nyström features Φ = K_nm K_mm^{-1/2} (n, m), so Φ Φᵀ = K_nm K_mm⁺ K_mn ≈ K.

  Eigenvalues of K_mm below `rtol` × the largest are dropped (their columns set to 0). With all
  n points as landmarks, Φ Φᵀ = K.
  """
  evals, evecs = jnp.linalg.eigh(jnp.asarray(k_mm, jnp.float32))
  keep = evals > rtol * jnp.max(evals)
  inv_sqrt = jnp.where(keep, 1.0 / jnp.sqrt(jnp.where(keep, evals, 1.0)), 0.0)
  return jnp.asarray(k_nm, jnp.float32) @ (evecs * inv_sqrt[None, :])


def nystrom_leverage_scores(key: jax.Array, x, kernel_fn, *, rank: int, ridge: float
                            ) -> jax.Array:
  """Approximate ridge leverage scores of `kernel_fn` on the rows of x from `rank` uniformly drawn
  landmarks (Nyström). Costs rank kernel columns instead of n; exact when rank = n."""
  n = x.shape[0]
  if not 1 <= rank <= n:
    raise ValueError(f"rank must be in [1, {n}], got {rank}.")
  landmarks = jax.random.choice(key, n, (rank,), replace=False)
  k_nm = kernel_fn(x, x[landmarks])
  return feature_leverage_scores(nystrom_features(k_nm, k_nm[landmarks]), ridge=ridge)


def _normalise(p: jax.Array, mask: Optional[jax.Array]) -> jax.Array:
  p = jnp.maximum(jnp.asarray(p, jnp.float32), 0.0)
  if mask is not None:
    p = jnp.where(mask, p, 0.0)
  return p / jnp.sum(p)


@functools.partial(jax.jit, static_argnames=("num", "replace"))
def weighted_sample(key: jax.Array, p: jax.Array, *, num: int, replace: bool = False,
                    mask: Optional[jax.Array] = None) -> tuple[jax.Array, jax.Array]:
  """Draws `num` indices with probability ∝ p (non-negative scores; `mask` False rows never).

  Returns (indices (num,), weights (num,)) such that Σ_j weights_j · f[indices_j] is an unbiased
  estimate of Σ_i f_i for any f:
  - replace=True: independent draws, weights 1 / (num · q_i) with q = p / Σp.
  - replace=False (default): successive sampling without replacement by Gumbel top-k, in the order
    drawn; weights 1 / P(i ∈ S | κ), with κ the (num+1)-th largest perturbed log-probability
    (the priority-sampling estimator of Duffield et al., Kool et al. 2019): for q_i(κ) =
    1 − exp(−exp(log q_i − κ)). When num equals the number of drawable points every weight is 1.
  Needs at least `num` points with p > 0 when replace=False.
  """
  q = _normalise(p, mask)
  logq = jnp.where(q > 0, jnp.log(jnp.where(q > 0, q, 1.0)), -jnp.inf)
  if replace:
    idx = jax.random.categorical(key, logq, shape=(num,))
    return idx, 1.0 / (num * q[idx])
  perturbed = logq + jax.random.gumbel(key, q.shape)
  values, idx = jax.lax.top_k(jnp.concatenate([perturbed, jnp.full((1,), -jnp.inf)]), num + 1)
  kappa, idx = values[num], idx[:num]
  inclusion = -jnp.expm1(-jnp.exp(logq[idx] - kappa))
  return idx, 1.0 / inclusion


def dedup_mask(x: jax.Array, *, threshold: float = 0.0,
               mask: Optional[jax.Array] = None) -> jax.Array:
  """(n,) bool: greedy near-duplicate removal in row order.

  Row i is kept when its Euclidean distance to every kept earlier row is at least `threshold`
  and nonzero (exact duplicates are always dropped, so no point can be drawn twice). Masked rows
  are never kept. Jittable; O(n²·d).
  """
  x = jnp.asarray(x, jnp.float32).reshape(x.shape[0], -1)
  n = x.shape[0]
  valid = jnp.ones(n, bool) if mask is None else jnp.asarray(mask, bool)
  sq = jnp.sum(x * x, 1)

  def body(i, keep):
    d2 = jnp.maximum(sq + sq[i] - 2.0 * x @ x[i], 0.0)
    # Exact duplicates: compare coordinates, not the cancellation-prone distance.
    same = jnp.all(x == x[i], axis=1)
    close = (d2 < threshold ** 2) | same
    clash = jnp.any(keep & close & (jnp.arange(n) < i))
    return keep.at[i].set(valid[i] & ~clash)

  return jax.lax.fori_loop(0, n, body, jnp.zeros(n, bool))


def nearest_neighbour_distances(x: jax.Array, *, mask: Optional[jax.Array] = None) -> jax.Array:
  """(n,) Euclidean distance of each row to its nearest other (unmasked) row."""
  x = jnp.asarray(x, jnp.float32).reshape(x.shape[0], -1)
  d2 = cluster.squared_distances(x, x)
  off = ~jnp.eye(x.shape[0], dtype=bool)
  if mask is not None:
    off = off & jnp.asarray(mask, bool)[None, :]
  return jnp.sqrt(jnp.min(jnp.where(off, d2, jnp.inf), axis=1))


def importance_probabilities(losses: jax.Array, table: jax.Array, counts: jax.Array, *,
                             beta: float = 0.5) -> jax.Array:
  """(n,) per-sample probabilities within each class: p_i = (1 − β) ℓ_i / Σ_{c(i)} ℓ + β / n_c.

  `table`/`counts` are the padded class index table (`data.class_index_table`); each class's
  probabilities sum to 1. A class whose losses are all 0 gets the uniform distribution.
  """
  if not 0.0 <= beta <= 1.0:
    raise ValueError(f"beta must be in [0, 1], got {beta}.")
  losses = jnp.maximum(jnp.asarray(losses, jnp.float32), 0.0)
  width = table.shape[1]
  valid = jnp.arange(width)[None, :] < counts[:, None]
  rows = jnp.where(valid, losses[table], 0.0)
  total = jnp.sum(rows, 1, keepdims=True)
  n_c = jnp.maximum(counts, 1)[:, None].astype(jnp.float32)
  share = jnp.where(total > 0, rows / jnp.where(total > 0, total, 1.0), 1.0 / n_c)
  probs = jnp.where(valid, (1.0 - beta) * share + beta / n_c, 0.0)
  return jnp.zeros(losses.shape[0], jnp.float32).at[table].add(probs * valid)


def group_unbiasing_weights(p: jax.Array, idx: jax.Array, table: jax.Array, counts: jax.Array
                            ) -> jax.Array:
  """Weights 1 / (n_g · p_i / Σ_{j∈g} p_j) of drawn indices idx (G, S) of groups g (the rows of
  the padded `table`): a weighted mean over a group's draws estimates its uniform mean."""
  valid = jnp.arange(table.shape[1])[None, :] < counts[:, None]
  mass = jnp.sum(jnp.where(valid, p[table], 0.0), 1, keepdims=True)
  n_g = jnp.maximum(counts, 1)[:, None].astype(jnp.float32)
  return mass / (n_g * jnp.maximum(p[idx], 1e-30))
