"""Coreset selection and selection-based initialisation (docs/methods.md LCMat-S and §4).

Every method picks `budget` real samples of each class and returns their indices (class-major)
and importance weights (1 for deterministic methods):

- random: uniform, without replacement.
- kmeans_centers: k-means with k = budget in the class, the nearest real sample to each centre.
- herding: greedy kernel herding of the class mean (Welling 2009; Chen et al. 2010).
- kcenter: greedy k-center (farthest-point traversal) from a random first point.
- sensitivity: k-means sensitivity sampling (`sensitivity.kmeans_sensitivity`), without
  replacement, optional near-duplicate removal.
- sensitivity_krr: ridge-leverage sampling with a kernel (`sensitivity.ridge_leverage_scores`,
  or the Nyström approximation for large classes).
- lcmat: LCMat-S, greedy facility location on last-layer gradient / Hessian-diagonal similarities
  of a warmed-up network (`lcmat_features`, `facility_location`), classes vmapped.

Each per-class routine is a pure, jittable function of (key, class features, budget, mask);
`select_indices` pads the classes to one size and vmaps the routine over them in one jit, then
maps positions back to global indices.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from robust_dd import cluster
from robust_dd import data as data_lib
from robust_dd import names
from robust_dd import parallel
from robust_dd import sensitivity

METHODS = names.SELECT_METHODS


def _flat(x) -> jax.Array:
  return jnp.asarray(x, jnp.float32).reshape(x.shape[0], -1)


# ---------------------------------------------------------------------------- per-class pickers


def _valid(x, mask) -> jax.Array:
  return jnp.ones(x.shape[0], bool) if mask is None else jnp.asarray(mask, bool)


@functools.partial(jax.jit, static_argnames=("budget",))
def nearest_to_centers(x: jax.Array, centers: jax.Array, *, budget: int,
                       mask: Optional[jax.Array] = None) -> jax.Array:
  """Distinct rows of x nearest to each centre, centres taken in order (a row already taken goes
  to the next centre's next-nearest row); masked rows are never taken."""
  d2 = cluster.squared_distances(_flat(x), centers)
  d2 = jnp.where(_valid(x, mask)[:, None], d2, jnp.inf)

  def body(i, carry):
    taken, out = carry
    j = jnp.argmin(jnp.where(taken, jnp.inf, d2[:, i]))
    return taken.at[j].set(True), out.at[i].set(j)

  _, out = jax.lax.fori_loop(0, budget, body, (jnp.zeros(x.shape[0], bool),
                                               jnp.zeros(budget, jnp.int32)))
  return out


@functools.partial(jax.jit, static_argnames=("budget",))
def herding(x: jax.Array, *, budget: int, mask: Optional[jax.Array] = None) -> jax.Array:
  """Greedy herding: step t adds the unselected row that brings the mean of the selected rows
  closest to the mean of all (unmasked) rows."""
  x = _flat(x)
  valid = _valid(x, mask)
  mu = jnp.sum(x * valid[:, None], 0) / jnp.maximum(jnp.sum(valid), 1)

  def body(t, carry):
    taken, total, out = carry
    cand = (total[None, :] + x) / (t + 1.0)
    j = jnp.argmin(jnp.where(taken, jnp.inf, jnp.sum((cand - mu) ** 2, 1)))
    return taken.at[j].set(True), total + x[j], out.at[t].set(j)

  _, _, out = jax.lax.fori_loop(0, budget, body, (~valid, jnp.zeros(x.shape[1], x.dtype),
                                                  jnp.zeros(budget, jnp.int32)))
  return out


@functools.partial(jax.jit, static_argnames=("budget",))
def kcenter_greedy(key: jax.Array, x: jax.Array, *, budget: int,
                   mask: Optional[jax.Array] = None) -> jax.Array:
  """Greedy k-center: a random first row, then repeatedly the row farthest from those chosen
  (masked rows never)."""
  x = _flat(x)
  valid = _valid(x, mask)
  first = jax.random.categorical(key, jnp.where(valid, 0.0, -jnp.inf))
  out = jnp.zeros(budget, jnp.int32).at[0].set(first)
  d = jnp.where(valid, jnp.sum((x - x[first]) ** 2, 1), -jnp.inf)

  def body(t, carry):
    out, d = carry
    j = jnp.argmax(d)
    return out.at[t].set(j), jnp.minimum(d, jnp.sum((x - x[j]) ** 2, 1))

  out, _ = jax.lax.fori_loop(1, budget, body, (out, d))
  return out


def sensitivity_kmeans_sample(key: jax.Array, x, *, budget: int, dedup_threshold=0.0,
                              mask: Optional[jax.Array] = None) -> tuple[jax.Array, jax.Array]:
  """k-means (k = budget) sensitivity sampling of the rows of x, without replacement.

  Points removed by `sensitivity.dedup_mask` (exact duplicates always, near ones within
  `dedup_threshold`) and masked rows are never drawn. Returns (indices, weights) as
  `sensitivity.weighted_sample`.
  """
  k_means, k_draw = jax.random.split(key)
  x = _flat(x)
  keep = sensitivity.dedup_mask(x, threshold=dedup_threshold, mask=mask)
  centers = cluster.kmeans(k_means, x, k=budget, mask=keep).centers
  scores = sensitivity.kmeans_sensitivity(x, centers, mask=keep)
  return sensitivity.weighted_sample(k_draw, scores, num=budget, mask=keep)


def leverage_sample(key: jax.Array, x, *, budget: int, kernel_fn, ridge: float = 1e-2,
                    rank: int = 0, dedup_threshold=0.0, mask: Optional[jax.Array] = None
                    ) -> tuple[jax.Array, jax.Array]:
  """Ridge-leverage sampling of the rows of x with `kernel_fn`, without replacement.

  λ = ridge × the mean of the kernel's diagonal over the unmasked rows. rank 0: exact scores
  from the class kernel; rank r > 0: Nyström with r landmarks drawn among the unmasked rows (for
  classes too large for an n × n kernel). A kernel with `features` (random features) gives the
  scores of K = Φ Φᵀ from Φ directly, whatever the rank. Masked rows and columns are zeroed, so
  they change no other row's score, and are never drawn.
  """
  k_rank, k_draw = jax.random.split(key)
  x = jnp.asarray(x, jnp.float32)
  valid = _valid(x, mask)
  w = valid.astype(jnp.float32)
  keep = sensitivity.dedup_mask(x, threshold=dedup_threshold, mask=valid)
  features = getattr(kernel_fn, "features", None)
  if features is not None:  # Random features: leverage of Φ, O(n M²), no n × n kernel.
    phi = features(x) * w[:, None]
    lam = ridge * jnp.sum(phi ** 2) / jnp.maximum(jnp.sum(w), 1)
    scores = sensitivity.feature_leverage_scores(phi, ridge=lam)
  elif rank:
    rank = min(rank, x.shape[0])
    landmarks, _ = sensitivity.weighted_sample(k_rank, w, num=rank)
    k_nm = kernel_fn(x, x[landmarks]) * w[:, None] * w[landmarks][None, :]
    lam = ridge * jnp.sum(jnp.diagonal(k_nm[landmarks])) / jnp.maximum(jnp.sum(w[landmarks]), 1)
    phi = sensitivity.nystrom_features(k_nm, k_nm[landmarks])
    scores = sensitivity.feature_leverage_scores(phi, ridge=lam)
  else:
    k = kernel_fn(x, x) * w[:, None] * w[None, :]
    lam = ridge * jnp.sum(jnp.diagonal(k)) / jnp.maximum(jnp.sum(w), 1)
    scores = sensitivity.ridge_leverage_scores(k, ridge=lam)
  return sensitivity.weighted_sample(k_draw, scores, num=budget, mask=keep)


# ------------------------------------------------------------------------------------- LCMat-S


def last_layer_grad_hessian(z: jax.Array, probs: jax.Array, labels: jax.Array
                            ) -> tuple[jax.Array, jax.Array]:
  """Closed-form per-sample gradient and Hessian diagonal of softmax cross-entropy with respect to
  a linear head (bias b (C,), weights W (C, d), logits = W z + b).

  Args: z (n, d) features; probs (n, C) softmax probabilities; labels (n,) integers.
  Returns g (n, C + C·d) = [(p − y), (p − y) ⊗ z] and h (n, C + C·d) = [p(1 − p), p(1 − p) ⊗ z²],
  the W part flattened row-major (W[c, j] at C + c·d + j).
  """
  y = jax.nn.one_hot(labels, probs.shape[1], dtype=probs.dtype)
  r = probs - y
  s = probs * (1.0 - probs)
  n = z.shape[0]
  g = jnp.concatenate([r, (r[:, :, None] * z[:, None, :]).reshape(n, -1)], 1)
  h = jnp.concatenate([s, (s[:, :, None] * (z ** 2)[:, None, :]).reshape(n, -1)], 1)
  return g, h


def top_variance_coordinates(h: jax.Array, *, num: int, mask: Optional[jax.Array] = None
                             ) -> jax.Array:
  """The `num` columns of h (n, D) with the highest variance over the (unmasked) rows."""
  w = jnp.ones(h.shape[0], h.dtype) if mask is None else jnp.asarray(mask, h.dtype)
  mean = jnp.sum(w[:, None] * h, 0) / jnp.maximum(jnp.sum(w), 1.0)
  var = jnp.sum(w[:, None] * (h - mean) ** 2, 0)
  _, cols = jax.lax.top_k(var, min(num, h.shape[1]))
  return h[:, cols]


def lcmat_similarity(g: jax.Array, h: jax.Array, *, eps: float = 0.01, block: int = 256,
                     mask: Optional[jax.Array] = None) -> jax.Array:
  """s_ab = c − ‖g_a − g_b‖₂ − eps·‖h_a − h_b‖₁ (n, n), c the largest distance (so s ≥ 0).

  The L1 term is built in row blocks of `block` (n × block × D at a time, not n × n × D).
  Masked rows and columns get similarity 0.
  """
  n = g.shape[0]
  sq = jnp.sum(g * g, 1)
  dg = jnp.sqrt(jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * g @ g.T, 0.0))
  # The expansion cancels badly on the diagonal (a 1e-6 residue is 1e-3 after the root), and a
  # point is exactly at distance 0 from itself.
  dg = jnp.where(jnp.eye(n, dtype=bool), 0.0, dg)
  pad = -n % block
  hp = jnp.concatenate([h, jnp.zeros((pad, h.shape[1]), h.dtype)])
  dh = jax.lax.map(lambda hb: jnp.sum(jnp.abs(hb[:, None, :] - h[None, :, :]), -1),
                   hp.reshape(-1, block, h.shape[1])).reshape(-1, n)[:n]
  dist = dg + eps * dh
  valid = jnp.ones(n, bool) if mask is None else jnp.asarray(mask, bool)
  pair = valid[:, None] & valid[None, :]
  c = jnp.max(jnp.where(pair, dist, 0.0))
  return jnp.where(pair, c - dist, 0.0)


@functools.partial(jax.jit, static_argnames=("budget",))
def facility_location(sim: jax.Array, *, budget: int, mask: Optional[jax.Array] = None
                      ) -> jax.Array:
  """Greedy facility location: maximise F(S) = Σ_a max_{b∈S} s_ab (s ≥ 0) one column at a time;
  ties go to the lowest index. Masked columns are never chosen. Returns (budget,) indices in the
  order chosen. A jitted `fori_loop`."""
  n = sim.shape[0]
  valid = jnp.ones(n, bool) if mask is None else jnp.asarray(mask, bool)

  def body(t, carry):
    best, taken, out = carry
    gains = jnp.sum(jnp.maximum(sim - best[:, None], 0.0), 0)
    j = jnp.argmax(jnp.where(taken | ~valid, -jnp.inf, gains))
    return jnp.maximum(best, sim[:, j]), taken.at[j].set(True), out.at[t].set(j)

  _, _, out = jax.lax.fori_loop(0, budget, body, (jnp.zeros(n, sim.dtype), jnp.zeros(n, bool),
                                                  jnp.zeros(budget, jnp.int32)))
  return out


def lcmat_class_select(z, probs, labels, mask, *, budget: int, num_coords: int = 100,
                       eps: float = 0.01, block: int = 256) -> jax.Array:
  """LCMat-S inside one (padded) class: closed-form g and diag H, the `num_coords` Hessian
  coordinates of highest variance, block-wise similarities, greedy facility location."""
  g, h = last_layer_grad_hessian(z, probs, labels)
  h = top_variance_coordinates(h, num=num_coords, mask=mask)
  sim = lcmat_similarity(g, h, eps=eps, block=block, mask=mask)
  return facility_location(sim, budget=budget, mask=mask)


def lcmat_select(z, probs, labels, *, num_classes: int, budget: int, num_coords: int = 100,
                 eps: float = 0.01, block: int = 256, class_batch: int = 0,
                 mesh=None) -> np.ndarray:
  """LCMat-S of every class, classes padded to one size and vmapped (`class_batch` at a time,
  0: all), split over the devices of `mesh` (`parallel.map_groups`). z (n, d) warm-up network
  features, probs (n, C), labels (n,). Returns (C·budget,) global indices, class-major."""
  labels = np.asarray(labels)
  table, counts = data_lib.class_index_table(labels, num_classes)
  data_lib.check_per_class(counts, budget, what=f"A budget of {budget} per class")
  mask = np.arange(table.shape[1])[None, :] < counts[:, None]
  z, probs = jnp.asarray(z, jnp.float32), jnp.asarray(probs, jnp.float32)
  args = (z[table], probs[table], jnp.asarray(labels)[table], jnp.asarray(mask), jnp.float32(eps))
  pos = _compiled_lcmat(budget, num_coords, block, class_batch or None, mesh)(*args)
  return np.take_along_axis(table, np.asarray(pos), axis=1).reshape(-1)


@functools.lru_cache(maxsize=64)
def _compiled_lcmat(budget, num_coords, block, class_batch, mesh):
  """LCMat-S over padded classes, jitted once per static setting (`eps` traced)."""

  def run(z, probs, labels, mask, eps):
    one = functools.partial(lcmat_class_select, budget=budget, num_coords=num_coords, eps=eps,
                            block=block)
    return parallel.map_groups(one, (z, probs, labels, mask), mesh, batch=class_batch)

  return jax.jit(run)


# ------------------------------------------------------------------------------ entry point


def select_indices(method: str, key: jax.Array, x, labels, *, num_classes: int, budget: int,
                   kernel_fn: Optional[Callable] = None, ridge: float = 1e-2, rank: int = 0,
                   dedup_quantile: Optional[float] = None,
                   lcmat_inputs: Optional[tuple[Any, Any]] = None, num_coords: int = 100,
                   eps: float = 0.01, class_batch: int = 0,
                   mesh=None) -> tuple[np.ndarray, np.ndarray]:
  """`budget` samples of each class by `method` (see the module docstring).

  Args:
    key: PRNG key (class c uses `fold_in(key, c)`); x (n, ...) features the method measures
      (e.g. preprocessed pixels); labels (n,) integers.
    kernel_fn: `k(x1, x2)` for sensitivity_krr (ridge λ = ridge · mean diag; rank > 0: Nyström).
    dedup_quantile: for the sampling methods, drop near-duplicates closer than this quantile of
      the class's nearest-neighbour distances (None: only exact duplicates).
    lcmat_inputs: (features z (n, d), softmax probabilities (n, C)) of a warmed-up network, for
      lcmat (see `robust_dd.coreset.lcmat_warmup`); class_batch: classes vmapped at once there.
    mesh: split the classes over its devices (`parallel.call_split`; lcmat's by
      `parallel.map_groups`).
  Returns (indices (C·budget,), weights (C·budget,)), class-major; weights are the importance
  weights of the sampling methods (each class's weighted sum estimates its total) and 1 otherwise.
  """
  if method not in METHODS:
    raise ValueError(f"Unknown selection method {method!r}; choose one of {METHODS}.")
  labels = np.asarray(labels)
  table, counts = data_lib.class_index_table(labels, num_classes)
  data_lib.check_per_class(counts, budget, what=f"A budget of {budget} per class")
  if method == "lcmat":
    if lcmat_inputs is None:
      raise ValueError("lcmat selection needs lcmat_inputs=(features, probabilities) of a "
                       "warmed-up network.")
    idx = lcmat_select(*lcmat_inputs, labels, num_classes=num_classes, budget=budget,
                       num_coords=num_coords, eps=eps, class_batch=class_batch, mesh=mesh)
    return idx, np.ones(len(idx), np.float32)
  if method == "sensitivity_krr" and kernel_fn is None:
    raise ValueError("sensitivity_krr needs a kernel_fn.")
  x = np.asarray(x, np.float32)
  mask = np.arange(table.shape[1])[None, :] < counts[:, None]
  keys = jax.vmap(lambda c: jax.random.fold_in(key, c))(jnp.arange(num_classes))
  pick = _compiled_select(method, budget, kernel_fn, rank, dedup_quantile)
  pos, weights = parallel.call_split(pick, (keys, jnp.asarray(x[table]), jnp.asarray(mask)),
                                     mesh, shared=(jnp.float32(ridge),))
  return (np.take_along_axis(table, np.asarray(pos), axis=1).reshape(-1),
          np.asarray(weights, np.float32).reshape(-1))


@functools.lru_cache(maxsize=64)
def _compiled_select(method, budget, kernel_fn, rank, dedup_quantile):
  """The jitted, class-vmapped picker, built once per static setting (a second call with the same
  settings reuses the compiled program; `ridge` is traced)."""
  pick = functools.partial(_select_class, method=method, budget=budget, kernel_fn=kernel_fn,
                           rank=rank, dedup_quantile=dedup_quantile)
  return jax.jit(jax.vmap(pick, in_axes=(0, 0, 0, None)))


# The per-class pickers, one per selection method but lcmat (which selects every class at once
# from a warmed-up network's features: `lcmat_select`): (key, x, mask, ridge, kw) -> (positions
# (budget,), weights (budget,)) of one padded class, kw holding budget, kernel_fn, rank and the
# dedup threshold.
def _ones(kw):
  return jnp.ones(kw["budget"], jnp.float32)


PICKERS: dict[str, Callable[..., tuple[jax.Array, jax.Array]]] = {
    "random": lambda key, x, mask, ridge, kw: (
        sensitivity.weighted_sample(key, mask.astype(jnp.float32), num=kw["budget"])[0],
        _ones(kw)),
    "kmeans_centers": lambda key, x, mask, ridge, kw: (
        nearest_to_centers(x, cluster.kmeans(key, _flat(x), k=kw["budget"], mask=mask).centers,
                           budget=kw["budget"], mask=mask), _ones(kw)),
    "herding": lambda key, x, mask, ridge, kw: (
        herding(x, budget=kw["budget"], mask=mask), _ones(kw)),
    "kcenter": lambda key, x, mask, ridge, kw: (
        kcenter_greedy(key, x, budget=kw["budget"], mask=mask), _ones(kw)),
    "sensitivity": lambda key, x, mask, ridge, kw: sensitivity_kmeans_sample(
        key, x, budget=kw["budget"], dedup_threshold=kw["threshold"], mask=mask),
    "sensitivity_krr": lambda key, x, mask, ridge, kw: leverage_sample(
        key, x, budget=kw["budget"], kernel_fn=kw["kernel_fn"], ridge=ridge, rank=kw["rank"],
        dedup_threshold=kw["threshold"], mask=mask),
}
SAMPLING = ("sensitivity", "sensitivity_krr")  # Importance-weighted: near-duplicates dropped.


def _select_class(key, x, mask, ridge, *, method, budget, kernel_fn, rank, dedup_quantile):
  """(positions (budget,), weights (budget,)) of one padded class (rows where `mask`)."""
  threshold = 0.0
  if dedup_quantile is not None and method in SAMPLING:
    nn = sensitivity.nearest_neighbour_distances(x, mask=mask)
    threshold = jnp.nanquantile(jnp.where(mask & jnp.isfinite(nn), nn, jnp.nan), dedup_quantile)
  return PICKERS[method](key, x, mask, ridge, dict(budget=budget, kernel_fn=kernel_fn, rank=rank,
                                                   threshold=threshold))


def budget_per_class(fraction: float, counts) -> int:
  """Samples per class for a coreset `fraction` of the training set: round(fraction · n / C),
  at least 1 (so 0.2% of mnist5k's 4,000 images is 1 per class, 10 in all)."""
  if not 0 < fraction <= 1:
    raise ValueError(f"--fraction must be in (0, 1], got {fraction}.")
  counts = np.asarray(counts)
  per = max(1, int(round(fraction * counts.sum() / len(counts))))
  data_lib.check_per_class(counts, per, what=f"--fraction={fraction} ({per} per class)")
  return per
