"""Gradient matching (DC / DSA): the matching distance and the class-vmapped matching loss.

Arrays in, arrays out: no data loading, no I/O. `apply_fn(net_params, x) -> logits` is any pure
network function (see `robust_dd.models`); gradients are pytrees shaped like `net_params`.

    G_S^c = grad_theta CE(f(A(X_syn_c)), c)     G_T^c = grad_theta CE(f(A(X_real_c)), c)
    L_GM  = sum_c D(G_S^c, G_T^c)

with A a DSA transformation drawn per class and shared by the real and synthetic batch of that
class. The per-class losses are computed for all classes at once with `jax.vmap`.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from robust_dd import ghost as ghost_lib
from robust_dd import names
from robust_dd import parallel
from robust_dd import training

METRICS = names.METRICS
EPS = 1e-6  # The cosines' denominator offset, |a| |b| + EPS.
ApplyFn = Callable[[Any, jax.Array], jax.Array]
AugmentFn = Callable[[jax.Array, jax.Array], jax.Array]
# class_loss(net_params, x_syn, x_real, label, real_weights=None) -> scalar: one class's loss.
# It may carry `class_loss.cluster_losses(net_params, x_syn, x_real, label, real_weights)`,
# the (m,) losses of m clusters of one class (x_real (m, S, ...)), which
# `per_class_cluster_losses` then calls instead of vmapping `class_loss` over the clusters.
ClassLoss = Callable[[Any, jax.Array, jax.Array, jax.Array], jax.Array]


def _safe_norm(x: jax.Array, axis=-1) -> jax.Array:
  """Norms over `axis` whose gradient is 0, not NaN, at an all-zero row (a dead unit's gradient)."""
  return jnp.sqrt(jnp.maximum(jnp.sum(x * x, axis), 1e-30))


def _ours_units(dots, syn_sq, real_sq, *, eps: float) -> jax.Array:
  """The 'ours' distance of one weight tensor from its units' inner products and squared norms
  (last axis: units): sum_u 1 - cos_u, with norms 0-safe as `_safe_norm`'s."""
  norms = jnp.sqrt(jnp.maximum(syn_sq, 1e-30)) * jnp.sqrt(jnp.maximum(real_sq, 1e-30))
  return jnp.sum(1.0 - dots / (norms + eps), axis=-1)


def gradient_match_distance(grads_syn, grads_real, *, metric: str = "ours",
                            eps: float = EPS) -> jax.Array:
  """Distance between two gradient pytrees of the same structure.

  - 'ours': sum over weight tensors (leaves with ndim >= 2; biases and normalisation parameters
    contribute nothing) of sum over output rows of (1 - cos(row_syn, row_real)), with cos
    = <a, b> / (|a| |b| + eps).
  - 'mse': sum of squared differences over all parameters.
  - 'cos': 1 - cos of the two gradients flattened over all parameters.
  """
  syn = jax.tree_util.tree_leaves(grads_syn)
  real = jax.tree_util.tree_leaves(grads_real)
  if len(syn) != len(real):
    raise ValueError("The two gradient pytrees have different structures.")
  if metric == "ours":
    total = jnp.zeros((), jnp.float32)
    for s, r in zip(syn, real):
      if s.ndim < 2:
        continue
      # An output unit's row is everything but the last axis (Flax: HWIO kernels, (in, out)
      # dense): reduce over those axes in place, with no transposed copy of each gradient (robust
      # DC at K = 1000 computes 1,000 real gradients a step: its image gradient 15.8 s -> 13.8 s).
      rows = tuple(range(s.ndim - 1))
      total = total + _ours_units(jnp.sum(s * r, rows), jnp.sum(s * s, rows),
                                  jnp.sum(r * r, rows), eps=eps)
    return total
  if metric == "mse":
    return sum(jnp.sum((s - r) ** 2) for s, r in zip(syn, real))
  if metric == "cos":
    s = jnp.concatenate([a.reshape(-1) for a in syn])
    r = jnp.concatenate([a.reshape(-1) for a in real])
    return 1.0 - jnp.sum(s * r) / (_safe_norm(s) * _safe_norm(r) + eps)
  raise ValueError(f"Unknown matching metric {metric!r}; choose one of {METRICS}.")


def ghost_distances(apply_fn: ApplyFn, net_params, grads_syn, images, label, weights, *,
                    chunk: int = 0, eps: float = EPS) -> Optional[jax.Array]:
  """The (n,) 'ours' distances `gradient_match_distance(grads_syn, r_j)` to the gradient r_j of
  each example of `images` (n, ...) with its weight (`weights` (n,): a one-image cluster's
  gradient), from `ghost.unit_stats` (no per-example gradient formed); equal to float rounding
  (tested), differentiable in `grads_syn`. None where the network is not covered."""
  units = ghost_lib.unit_stats(apply_fn, net_params, grads_syn, images, label, weights,
                               chunk=chunk)
  if units is None:
    return None
  return sum(_ours_units(dots, jnp.sum(s * s, tuple(range(s.ndim - 1))), real_sq, eps=eps)
             for s, dots, real_sq in units)


def class_loss_gradient(apply_fn: ApplyFn, net_params, images, label,
                        weights: Optional[jax.Array] = None, *, chunk: int = 0) -> Any:
  """grad_theta of the (`weights`-weighted) mean cross-entropy of `images`, all labelled `label`
  (in chunks of at most `chunk` images: `training.loss_and_grad`)."""
  return training.loss_and_grad(apply_fn, net_params, images, label, weights, chunk=chunk)[1]


def gradient_match_class_loss(apply_fn: ApplyFn, *, metric: str = "ours", chunk: int = 0,
                              ghost: bool = True) -> ClassLoss:
  """The DC matching loss of one class: D(G_S^c, G_T^c).

  The returned `class_loss(net_params, x_syn, x_real, label, real_weights=None)` weights the real
  samples' cross-entropy by `real_weights` (a mask of padded rows, or importance weights). Its
  `cluster_losses` attribute gives m clusters' losses at once (see `per_class_cluster_losses`),
  equal to `class_loss` vmapped over them (tested), computed faster on CPU. `chunk` > 0
  computes the real gradients over at most that many images at a time (one class's batch in
  chunks, a class's clusters in groups of about `chunk` images; `training.loss_and_grad`): the
  same loss to float rounding, faster on CPU (`training.default_chunk`). `ghost`: clusters of
  one real image under the 'ours' metric are matched without forming their gradients
  (`ghost_distances`, equal to float rounding, tested), where the network allows.
  """

  def class_loss(net_params, x_syn, x_real, label, real_weights=None):
    g_syn = class_loss_gradient(apply_fn, net_params, x_syn, label)
    g_real = jax.lax.stop_gradient(
        class_loss_gradient(apply_fn, net_params, x_real, label, real_weights, chunk=chunk))
    return gradient_match_distance(g_syn, g_real, metric=metric)

  def cluster_losses(net_params, x_syn, x_real, label, real_weights):
    # The (m,) losses of m real clusters of one class (x_real (m, S, ...), real_weights (m, S)):
    # the synthetic gradient once, the clusters' real gradients vmapped (in groups of about
    # `chunk` images), and the distances in a loop over clusters, whose backward pass adds each
    # cluster's cotangent of the synthetic gradient into one accumulator. (Under vmap the same
    # backward is a reduction over the clusters' axis, which XLA:CPU runs about 10x slower at
    # K = 1000 clusters.)
    g_syn = class_loss_gradient(apply_fn, net_params, x_syn, label)
    manual = bool(jax.sharding.get_abstract_mesh().manual_axes)
    if ghost and metric == "ours" and x_real.shape[1] == 1 and not manual:
      distances = ghost_distances(apply_fn, net_params, g_syn, x_real[:, 0], label,
                                  real_weights[:, 0], chunk=chunk)
      if distances is not None:
        return distances
    real_grad = lambda x, w: class_loss_gradient(apply_fn, net_params, x, label, w, chunk=chunk)
    if chunk:
      g_real = jax.lax.map(lambda xw: real_grad(*xw), (x_real, real_weights),
                           batch_size=max(chunk // x_real.shape[1], 1))
    else:
      g_real = jax.vmap(real_grad)(x_real, real_weights)
    g_real = jax.lax.stop_gradient(g_real)
    distance = lambda g: gradient_match_distance(g_syn, g, metric=metric)
    if manual:
      # Inside shard_map (`mesh=` of several devices) jax 0.10.2 fails to transpose the loop
      # (its zero cotangent of g_syn gets the outer mesh's sharding): vmap there.
      return jax.vmap(distance)(g_real)
    return jax.lax.map(distance, g_real)

  class_loss.cluster_losses = cluster_losses
  return class_loss


def _group_losses(class_loss: ClassLoss, net_params, labels, syn_images, real_images,
                  real_weights, keys, *, augment, group_batch, mesh=None) -> jax.Array:
  """Shared core of `per_class_losses` and `per_cluster_match_losses`: one class loss per group."""

  def one(label, x_syn, x_real, weights, k):
    if augment is not None:
      x_syn, x_real = augment(k, x_syn), augment(k, x_real)
    return class_loss(net_params, x_syn, x_real, label, weights)

  return parallel.map_groups(one, (labels, syn_images, real_images, real_weights, keys), mesh,
                             batch=group_batch)


def default_class_batch(class_batch: Optional[int] = None, *,
                        backend: Optional[str] = None) -> Optional[int]:
  """The `class_batch` of `per_class_losses` for a `--class_batch` value: n > 0 as given, 0 for
  all classes in one vmap (None), and None (unset) by `backend` (default: JAX's default one): one
  class at a time on CPU, where it was measured fastest (`scripts/benchmark_matching.py
  --class_batches`; docs/benchmarks.md), all at once on GPU and TPU, whose cores a wider vmap
  keeps busy."""
  if class_batch is not None:
    return class_batch or None
  return 1 if (backend or jax.default_backend()) == "cpu" else None


def _group_keys(key: Optional[jax.Array], num: int, augment) -> jax.Array:
  if augment is not None and key is None:
    raise ValueError("augment needs a key.")
  key = jax.random.key(0) if key is None else key
  return jax.vmap(lambda g: jax.random.fold_in(key, g))(jnp.arange(num))


def per_class_losses(class_loss: ClassLoss, net_params, syn_images: jax.Array,
                     real_images: jax.Array, *, key: Optional[jax.Array] = None,
                     augment: Optional[AugmentFn] = None, class_batch: Optional[int] = None,
                     real_weights: Optional[jax.Array] = None,
                     mesh: Optional[Mesh] = None) -> jax.Array:
  """The (C,) matching losses of all classes.

  Args:
    class_loss: loss of one class, e.g. `gradient_match_class_loss(apply_fn)`.
    net_params: network parameters theta (shared by all classes).
    syn_images: (C, ipc, ...) synthetic images, class c in row c.
    real_images: (C, n, ...) real images, class c in row c.
    key: PRNG key for `augment`; class c uses `fold_in(key, c)` for both of its batches.
    augment: `(key, images) -> images`, e.g. siamese DSA; None for none.
    class_batch: vmap over at most this many classes at a time (`lax.map` with `batch_size`),
      to bound memory; 1 computes one class at a time; None or >= C: all classes in one vmap.
    real_weights: optional (C, n) weights of the real samples' cross-entropy (importance weights).
    mesh: split the classes over its devices (`parallel.map_groups`; `class_batch` then bounds
      the classes each device vmaps at once); None or one device: all on the default device.
  """
  num_classes = syn_images.shape[0]
  if real_images.shape[0] != num_classes:
    raise ValueError(f"{num_classes} synthetic classes but {real_images.shape[0]} real ones.")
  weights = (jnp.ones(real_images.shape[:2], jnp.float32) if real_weights is None
             else jnp.asarray(real_weights, jnp.float32).reshape(real_images.shape[:2]))
  return _group_losses(class_loss, net_params, jnp.arange(num_classes), syn_images, real_images,
                       weights, _group_keys(key, num_classes, augment), augment=augment,
                       group_batch=class_batch, mesh=mesh)


def per_cluster_match_losses(class_loss: ClassLoss, net_params, syn_images: jax.Array,
                             real_images: jax.Array, mask: jax.Array, cluster_class: jax.Array,
                             *, key: Optional[jax.Array] = None,
                             augment: Optional[AugmentFn] = None,
                             cluster_batch: Optional[int] = None,
                             mesh: Optional[Mesh] = None) -> jax.Array:
  """The (K,) matching losses of K real clusters, each inside one class, with one `vmap`.

  Cluster k's loss is `class_loss` between the synthetic images of its class `cluster_class[k]`
  and its own real samples (padded rows masked out of the real cross-entropy); an all-masked
  (empty) cluster's real gradient is zero.

  Args:
    syn_images: (C, ipc, ...) synthetic images, class-major.
    real_images: (K, S, ...) a padded batch of each cluster (`risk.sample_cluster_batch`).
    mask: (K, S) bool or weights of the real rows.
    cluster_class: (K,) int class of each cluster.
    key, augment: as in `per_class_losses` (cluster k uses `fold_in(key, k)`).
    cluster_batch: vmap over at most this many clusters at a time (bounds memory).
    mesh: split the clusters over its devices (`parallel.map_groups`).
  """
  num = real_images.shape[0]
  if mask.shape != real_images.shape[:2] or cluster_class.shape != (num,):
    raise ValueError(f"mask {mask.shape} and cluster_class {cluster_class.shape} must match the "
                     f"(K, S) = {real_images.shape[:2]} leading axes of real_images.")
  return _group_losses(class_loss, net_params, cluster_class, syn_images[cluster_class],
                       real_images, mask.astype(jnp.float32), _group_keys(key, num, augment),
                       augment=augment, group_batch=cluster_batch, mesh=mesh)


def per_class_cluster_losses(class_loss: ClassLoss, net_params, syn_images: jax.Array,
                             real_images: jax.Array, mask: jax.Array, *,
                             key: Optional[jax.Array] = None,
                             augment: Optional[AugmentFn] = None,
                             class_batch: Optional[int] = None,
                             mesh: Optional[Mesh] = None) -> jax.Array:
  """The (C, m) matching losses of m real clusters inside each of C classes, class-major.

  Cluster j of class c gets `class_loss(net_params, A_c(x_syn_c), A_c(x_real_cj), c, mask_cj)`,
  as in `per_cluster_match_losses`, but its class's synthetic work is shared: the clusters are an
  inner `vmap` in which the synthetic images are not batched, so the class's synthetic forward
  pass and gradient (and, for `curvature`, the primal of its Hessian-vector product) are
  computed once per class, and the backward pass into the synthetic images sums the clusters'
  cotangents before it runs, instead of once per cluster. A_c is the class's augmentation
  (`fold_in(key, c)`), shared by the synthetic images and every cluster of the class (siamese, as
  in `per_class_losses`). A `class_loss` with a `cluster_losses` attribute (DC's and DSA's)
  computes a class's clusters itself: `gradient_match_class_loss` vmaps the real gradients and
  loops over the clusters' distances, so the backward pass accumulates the synthetic gradient's
  cotangent instead of reducing a (m, ...) one.

  Args:
    syn_images: (C, ipc, ...) synthetic images, class c in row c.
    real_images: (C, m, S, ...) a padded batch of each cluster, class-major.
    mask: (C, m, S) bool or weights of the real rows (an all-zero row: an empty cluster).
    key, augment, class_batch: as in `per_class_losses` (`class_batch` bounds the classes
      vmapped at once; a class's clusters are always vmapped together).
    mesh: split the classes, each with its clusters, over its devices (`parallel.map_groups`).
  """
  num_classes = syn_images.shape[0]
  if real_images.shape[0] != num_classes or mask.shape != real_images.shape[:3]:
    raise ValueError(f"real_images {real_images.shape[:3]} and mask {mask.shape} must have the "
                     f"leading (C, m, S) axes, C = {num_classes} synthetic classes.")

  def one(label, x_syn, x_real, weights, k):
    if augment is not None:
      x_syn = augment(k, x_syn)
      x_real = augment(k, x_real.reshape(-1, *x_real.shape[2:])).reshape(x_real.shape)
    shared = getattr(class_loss, "cluster_losses", None)
    if shared is not None:
      return shared(net_params, x_syn, x_real, label, weights)
    return jax.vmap(lambda xr, w: class_loss(net_params, x_syn, xr, label, w))(x_real, weights)

  keys = _group_keys(key, num_classes, augment)
  return parallel.map_groups(one, (jnp.arange(num_classes), syn_images, real_images,
                                   mask.astype(jnp.float32), keys), mesh, batch=class_batch)


def gradient_match_loss(net_params, syn_images, real_images, *, apply_fn: ApplyFn,
                        key: Optional[jax.Array] = None, augment: Optional[AugmentFn] = None,
                        metric: str = "ours") -> jax.Array:
  """L_GM = sum over classes of D(G_S^c, G_T^c), classes vmapped. Shapes as `per_class_losses`."""
  return per_class_losses(gradient_match_class_loss(apply_fn, metric=metric), net_params,
                          syn_images, real_images, key=key, augment=augment).sum()


# Jitted alias for users: the callables and the metric's name are static, arrays traced.
gradient_match_loss_jit = jax.jit(gradient_match_loss,
                                  static_argnames=("apply_fn", "augment", "metric"))
