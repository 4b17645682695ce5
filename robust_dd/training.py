"""Training and testing finite networks as pure, jitted functions.

Used twice: inside gradient matching (a few SGD steps on the synthetic set between image updates)
and by the finite-network evaluator (a fresh network trained on a distilled or selected set for a
fixed schedule). `apply_fn(params, x) -> logits` is any pure network function (see `models`).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
import numpy as np
import optax

from robust_dd import cluster
from robust_dd import parallel
from robust_dd import risk

ApplyFn = Callable[[Any, jax.Array], jax.Array]
AugmentFn = Callable[[jax.Array, jax.Array], jax.Array]  # (key, images) -> images


def _weighted_mean(losses: jax.Array, weights: Optional[jax.Array]) -> jax.Array:
  if weights is None:
    return losses.mean()
  weights = jnp.asarray(weights, losses.dtype)
  return jnp.sum(weights * losses) / jnp.maximum(jnp.sum(weights), 1e-12)


def cross_entropy(logits: jax.Array, labels: jax.Array,
                  weights: Optional[jax.Array] = None) -> jax.Array:
  """Mean softmax cross-entropy with integer labels (n,) or a single label () for all rows.

  With `weights` (n,) (e.g. a 0/1 mask of padded rows): Σ w_i ℓ_i / max(Σ w_i, 1e-12), so an
  all-zero mask gives 0, not NaN.
  """
  return _weighted_mean(_row_losses(logits, labels, "ce"), weights)


def _row_losses(logits: jax.Array, labels: jax.Array, loss: str) -> jax.Array:
  if loss == "ce":
    labels = jnp.broadcast_to(labels, logits.shape[:1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  if loss == "mse":
    return 0.5 * jnp.sum((logits - labels) ** 2, axis=-1)
  raise ValueError(f"Unknown loss {loss!r}; use 'ce' or 'mse'.")


def network_loss(apply_fn: ApplyFn, params, images, labels, *, loss: str = "ce",
                 weights: Optional[jax.Array] = None) -> jax.Array:
  """`ce`: cross-entropy on integer labels; `mse`: squared error to (soft) label vectors; the
  mean over rows, or with `weights` (n,) the weighted mean (as in `cross_entropy`)."""
  return _weighted_mean(_row_losses(apply_fn(params, images), labels, loss), weights)


def default_chunk(chunk: Optional[int] = None, *, backend: Optional[str] = None) -> int:
  """The `chunk` of `loss_and_grad` for a `--grad_chunk` value: n >= 0 as given (0: none), and
  None (unset) by `backend` (default: JAX's default one): 16 rows on CPU, where it was measured
  fastest (`scripts/benchmark_matching.py --grad_chunks`; docs/benchmarks.md): small chunks'
  activations stay in cache; none on GPU and TPU, where one batch keeps the cores busy."""
  if chunk is not None:
    return chunk
  return 16 if (backend or jax.default_backend()) == "cpu" else 0


def loss_and_grad(apply_fn: ApplyFn, params, images, labels, weights=None, *, loss: str = "ce",
                  chunk: int = 0):
  """(value, grad_params) of `network_loss` (the mean loss of `images`, or with `weights` (n,)
  the weighted mean Σ w_i ℓ_i / max(Σ w_i, 1e-12)); `labels` per row or one for all rows.

  `chunk` > 0 computes it in a `lax.scan` over ceil(n / chunk) equal chunks of at most `chunk`
  rows (the last padded with zero-weight rows), summing their gradients: the same value and
  gradient to float rounding (tested) for networks without batch statistics (every network in
  `models`). On CPU the small chunks' activations stay in cache (`default_chunk`).
  """
  n = images.shape[0]
  if not chunk or n <= chunk:
    return jax.value_and_grad(lambda p: network_loss(apply_fn, p, images, labels, loss=loss,
                                                     weights=weights))(params)
  labels = jnp.broadcast_to(labels, (n, *(jnp.shape(labels)[-1:] if loss == "mse" else ())))
  dtype = jnp.result_type(*jax.tree_util.tree_leaves(params))  # The loss's (float32 or 64).
  w = jnp.ones((n,), dtype) if weights is None else jnp.asarray(weights, dtype)
  total = jnp.maximum(jnp.sum(w), 1e-12)
  k = -(-n // chunk)
  size = -(-n // k)
  split = lambda a: jnp.pad(a, [(0, k * size - n)] + [(0, 0)] * (a.ndim - 1)).reshape(
      k, size, *a.shape[1:])

  def body(acc, xyw):
    x, y, v = xyw
    part = lambda p: jnp.sum(v * _row_losses(apply_fn(p, x), y, loss)) / total
    return jax.tree_util.tree_map(jnp.add, acc, jax.value_and_grad(part)(params)), None

  # Fresh zeros, not zeros_like: inside shard_map the parameters may carry the outer mesh's
  # sharding, which zeros_like would copy into the manual context (an error).
  zero = (jnp.zeros((), dtype), jax.tree_util.tree_map(lambda p: jnp.zeros(p.shape, p.dtype),
                                                       params))
  return jax.lax.scan(body, zero, (split(images), split(labels), split(w)))[0]


def sgd_steps(apply_fn: ApplyFn, params, images, labels, *, key: jax.Array, steps: int,
              learning_rate: float, augment: Optional[AugmentFn] = None, loss: str = "ce",
              chunk: int = 0):
  """`steps` full-batch plain-SGD steps on (images, labels); jittable (a `fori_loop`). `chunk`:
  each step's gradient in chunks of at most that many images (`loss_and_grad`)."""

  def body(i, p):
    x = images if augment is None else augment(jax.random.fold_in(key, i), images)
    g = loss_and_grad(apply_fn, p, x, labels, loss=loss, chunk=chunk)[1]
    return jax.tree_util.tree_map(lambda a, b: a - learning_rate * b, p, g)

  return jax.lax.fori_loop(0, steps, body, params)


def prototype_robust_loss(apply_fn: ApplyFn, embed_fn: ApplyFn, params, images, labels,
                          prototypes, *, tail_fraction: float, robust_weight: float
                          ) -> jax.Array:
  """The group-robust DD paper's network objective on a real batch.

  Each real image joins the cluster of its nearest prototype (a synthetic image) in the
  network's current embedding `embed_fn(params, .)` (the assignment carries no gradient); the
  loss is `risk.robust_objective` of the clusters' mean cross-entropies, uniform over the
  non-empty clusters. Unlike the reference code's, its CVaR is differentiable in `params`.
  """
  feats = jax.lax.stop_gradient(embed_fn(params, images))
  protos = jax.lax.stop_gradient(embed_fn(params, prototypes))
  ids = cluster.nearest_prototype(feats, protos)
  losses = optax.softmax_cross_entropy_with_integer_labels(apply_fn(params, images), labels)
  means, counts = risk.group_mean_losses(losses, ids, num_groups=protos.shape[0])
  return risk.robust_objective(means, tail_fraction=tail_fraction, robust_weight=robust_weight,
                               weights=(counts > 0).astype(means.dtype))


def evaluation_optimizer(*, learning_rate: float, momentum: float, weight_decay: float,
                         total_steps: int) -> optax.GradientTransformation:
  """SGD with momentum and coupled weight decay (as torch.optim.SGD); lr x0.1 at half-way."""
  schedule = optax.piecewise_constant_schedule(learning_rate, {max(total_steps // 2, 1): 0.1})
  return optax.chain(optax.add_decayed_weights(weight_decay),
                     optax.sgd(schedule, momentum=momentum or None))


_TRAIN_STATIC = ("apply_fn", "init_fn", "steps", "batch_size", "augment", "loss",
                 "learning_rate", "momentum", "weight_decay", "chunk")


def _optimizer(static):
  # The schedule's scalars are static (Python floats), so the optimiser is built in the trace
  # from them: one compiled program per evaluation schedule.
  return evaluation_optimizer(learning_rate=static["learning_rate"], momentum=static["momentum"],
                              weight_decay=static["weight_decay"], total_steps=static["steps"])


def _begin(key, **static):
  """A fresh network's training carry: (params, optimiser state, the loop's key)."""
  k_init, k_loop = jax.random.split(key)
  params = static["init_fn"](k_init)
  return params, _optimizer(static).init(params), k_loop


def _run(carry, images, labels, start, *, length, apply_fn, init_fn, steps, batch_size, augment,
         loss, learning_rate, momentum, weight_decay, chunk):
  """Steps start .. start + length - 1 of the `steps`-step schedule from `carry`; step i draws
  its batch and augmentation from fold_in(loop key, i), so any split into chunks trains the same
  network. Returns (carry, per-step losses)."""
  del init_fn
  optimizer = _optimizer(dict(learning_rate=learning_rate, momentum=momentum,
                              weight_decay=weight_decay, steps=steps))
  params, opt_state, k_loop = carry
  n = images.shape[0]

  def body(carry, i):
    params, opt_state = carry
    k_batch, k_aug = jax.random.split(jax.random.fold_in(k_loop, i))
    if batch_size < n:
      idx = jax.random.permutation(k_batch, n)[:batch_size]
      x, y = images[idx], labels[idx]
    else:
      x, y = images, labels
    if augment is not None:
      x = augment(k_aug, x)
    value, grads = loss_and_grad(apply_fn, params, x, y, loss=loss, chunk=chunk)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), value

  (params, opt_state), losses = jax.lax.scan(body, (params, opt_state),
                                             start + jnp.arange(length))
  return (params, opt_state, k_loop), losses


@functools.partial(jax.jit, static_argnames=_TRAIN_STATIC + ("many",))
def _begin_jit(keys, *, many, **static):
  return jax.vmap(lambda k: _begin(k, **static))(keys) if many else _begin(keys, **static)


@functools.partial(jax.jit, static_argnames=_TRAIN_STATIC + ("length", "many", "stacked"),
                   donate_argnums=0)
def _run_jit(carry, images, labels, start, *, length, many, stacked, **static):
  run = functools.partial(_run, length=length, **static)
  if not many:
    return run(carry, images, labels, start)
  data_axis = 0 if stacked else None
  return jax.vmap(run, in_axes=(0, data_axis, data_axis, None))(carry, images, labels, start)


def _chunks(epochs: int, most: int = 20) -> int:
  """How many equal chunks of whole epochs a progress-reporting run trains in: the largest
  divisor of `epochs` up to `most` (one compiled chunk length)."""
  return max(d for d in range(1, min(epochs, most) + 1) if epochs % d == 0)


def train_network(key: jax.Array, images, labels, *, apply_fn: ApplyFn,
                  init_fn: Callable[[jax.Array], Any], epochs: int = 300, batch_size: int = 256,
                  learning_rate: float = 0.01, momentum: float = 0.9, weight_decay: float = 5e-4,
                  augment: Optional[AugmentFn] = None, loss: str = "ce",
                  stacked: bool = False, mesh: Optional[Mesh] = None, progress=None,
                  chunk: int = 0):
  """Trains a fresh network (`init_fn(key)`) on (images, labels) for a fixed schedule.

  Runs `epochs * ceil(n / batch_size)` steps, each on a random batch of min(n, batch_size)
  samples without replacement, with SGD (momentum, weight decay, lr x0.1 half-way). `apply_fn`,
  `init_fn` and `augment` are static under jit: pass the same function objects to reuse the
  compiled program. Returns (params, per-step training losses).

  With a 1-D array of keys (s,), trains s networks at once (one `vmap`, each network exactly as
  with its key alone) and returns params and losses with a leading (s,) axis; with `stacked`,
  network i trains on its own set, images[i] and labels[i] ((s, n, ...) and (s, n)). On a
  `mesh` of several devices the s networks are split over them (padded to a multiple of the
  device count with copies of network 0, dropped from the result).

  `progress` (e.g. a `robust_dd.progress.Progress` counting epochs): training runs in up to 20
  equal chunks of whole epochs, one jitted call each, calling `progress.update(epochs_done)`
  after each; the networks are the same as in one call. `chunk` > 0: each step's gradient in
  chunks of at most that many images (`loss_and_grad`; the same networks to float rounding).
  """
  n = images.shape[1] if stacked else len(images)
  if n == 0:
    raise ValueError("Cannot train on an empty set.")
  per_epoch = -(-n // batch_size)
  static = dict(apply_fn=apply_fn, init_fn=init_fn, steps=epochs * per_epoch,
                batch_size=min(batch_size, n), augment=augment, loss=loss,
                learning_rate=float(learning_rate), momentum=float(momentum),
                weight_decay=float(weight_decay), chunk=int(chunk))
  images, labels = jnp.asarray(images), jnp.asarray(labels)
  many = stacked or jnp.ndim(key) > 0
  chunks = _chunks(epochs) if progress is not None else 1
  length = static["steps"] // chunks
  split = functools.partial(parallel.call_split, mesh=mesh) if many else (
      lambda fn, args, shared=(): fn(*args, *shared))

  def begin(k):
    return _begin_jit(k, many=many, **static)

  def run(carry, x, y, start):
    return _run_jit(carry, x, y, start, length=length, many=many, stacked=stacked, **static)

  carry = split(begin, (key,))
  losses = []
  for c in range(chunks):
    start = jnp.int32(c * length)
    if stacked:
      carry, part = split(run, (carry, images, labels), shared=(start,))
    else:
      carry, part = split(run, (carry,), shared=(images, labels, start))
    losses.append(part)
    if progress is not None:
      jax.block_until_ready(part)
      progress.update(epochs // chunks)
  return carry[0], losses[0] if chunks == 1 else jnp.concatenate(losses, axis=-1)


def sample_cross_entropy(apply_fn: ApplyFn, params, images, labels, *, batch_size: int = 500
                         ) -> jax.Array:
  """(n,) per-sample cross-entropy of integer `labels`, logits computed in blocks (jittable)."""
  logits = parallel.map_batches(lambda xb: apply_fn(params, xb), images, batch_size=batch_size)
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def predict(apply_fn: ApplyFn, params, images, *, batch_size: int = 500) -> np.ndarray:
  """Logits for `images`, computed in batches (the last one padded to reuse one compilation)."""
  images = np.asarray(images)
  f = jax.jit(apply_fn)
  out = []
  for start in range(0, len(images), batch_size):
    chunk = images[start:start + batch_size]
    pad = batch_size - len(chunk) if len(images) > batch_size else 0
    if pad:
      chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)])
    out.append(np.asarray(f(params, chunk))[:len(chunk) - pad])
  return np.concatenate(out)


def accuracy(apply_fn: ApplyFn, params, images, labels, *, batch_size: int = 500) -> float:
  """Fraction of `images` whose argmax logit equals the integer label."""
  logits = predict(apply_fn, params, images, batch_size=batch_size)
  return float(np.mean(np.argmax(logits, -1) == np.asarray(labels)))
