"""Trajectory matching (MTT, Cazenavette et al. 2022): expert trajectories and the MTT loss.

Arrays in, arrays out. Network parameters travel as flat vectors (`ravel_pytree`), so an expert
buffer is one array (experts, epochs + 1, P) and the loss compares vectors.

One MTT update (`mtt_loss`): start a student at an expert's parameters at epoch t, θ̂_0 = θ*_t;
take N SGD steps on synthetic mini-batches with the learnable step size α,

    θ̂_{n+1} = θ̂_n − α ∇_θ ℓ(A(x̃_{B_n}), ỹ_{B_n}; θ̂_n),

and return ‖θ̂_N − θ*_{t+M}‖² / ‖θ*_t − θ*_{t+M}‖². The gradient flows through all N steps to the
images and to α. The unroll is a `lax.scan`; with `remat` each step's activations are recomputed
in the backward pass (`jax.checkpoint`), so memory holds the N parameter vectors and one step's
activations instead of N steps' activations.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
from jax.flatten_util import ravel_pytree
import jax.numpy as jnp
import optax

from robust_dd import parallel
from robust_dd import training

ApplyFn = Callable[[Any, jax.Array], jax.Array]
AugmentFn = Callable[[jax.Array, jax.Array], jax.Array]


def trajectory_distance(theta: jax.Array, start: jax.Array, target: jax.Array) -> jax.Array:
  """‖θ − θ*_target‖² / ‖θ*_start − θ*_target‖², flat parameter vectors (the MTT loss)."""
  return jnp.sum((theta - target) ** 2) / jnp.sum((start - target) ** 2)


def unrolled_sgd(apply_fn: ApplyFn, params, images: jax.Array, labels: jax.Array, *,
                 learning_rate, key: jax.Array, steps: int, batch_size: int = 0,
                 augment: Optional[AugmentFn] = None, remat: bool = True):
  """`steps` SGD steps of `params` on mini-batches of (images, integer labels); differentiable in
  the images and in `learning_rate` (a traced scalar).

  Step n draws `batch_size` images without replacement (0 or ≥ n: all of them) from
  `fold_in(key, n)`, and, with `augment`, augments them with the same key. A `lax.scan` over the
  steps, each `jax.checkpoint`-ed with `remat`; the same parameters either way.
  """
  n = images.shape[0]
  batch = batch_size if 0 < batch_size < n else n

  def step(p, i):
    k_batch, k_aug = jax.random.split(jax.random.fold_in(key, i))
    if batch < n:
      idx = jax.random.permutation(k_batch, n)[:batch]
      x, y = images[idx], labels[idx]
    else:
      x, y = images, labels
    if augment is not None:
      x = augment(k_aug, x)
    g = jax.grad(lambda q: training.network_loss(apply_fn, q, x, y))(p)
    return jax.tree_util.tree_map(lambda a, b: a - learning_rate * b, p, g), None

  if remat:
    step = jax.checkpoint(step)
  params, _ = jax.lax.scan(step, params, jnp.arange(steps))
  return params


def mtt_loss(images: jax.Array, labels: jax.Array, log_syn_lr, start: jax.Array,
             target: jax.Array,
             *, apply_fn: ApplyFn, unravel: Callable[[jax.Array], Any], key: jax.Array,
             steps: int, batch_size: int = 0, augment: Optional[AugmentFn] = None,
             remat: bool = True) -> jax.Array:
  """The MTT loss of a synthetic set (images, integer labels) with step size exp(`log_syn_lr`)
  (learned as a logarithm: it stays positive, and a step that overshoots is not stuck at a clip,
  where the gradient would vanish): the student starts
  at the flat expert parameters `start` (θ*_t), takes `steps` SGD steps (`unrolled_sgd`), and is
  compared with `target` (θ*_{t+M}) by `trajectory_distance`. `unravel` maps a flat vector to the
  network's parameter pytree."""
  lr = jnp.exp(log_syn_lr)
  student = unrolled_sgd(apply_fn, unravel(start), images, labels, learning_rate=lr, key=key,
                         steps=steps, batch_size=batch_size, augment=augment, remat=remat)
  return trajectory_distance(ravel_pytree(student)[0], start, target)


def sample_expert_segment(key: jax.Array, experts: jax.Array, *, max_start_epoch: int,
                          expert_epochs: int) -> dict[str, jax.Array]:
  """A random expert e and start epoch t ∈ [0, max_start_epoch) (MTT's T⁺), uniform: the flat
  parameters {"start": θ*_{e,t}, "target": θ*_{e,t+M}} of experts (E, T + 1, P), M =
  `expert_epochs`; needs max_start_epoch + M ≤ T."""
  k_expert, k_epoch = jax.random.split(key)
  e = jax.random.randint(k_expert, (), 0, experts.shape[0])
  t = jax.random.randint(k_epoch, (), 0, max_start_epoch)
  return {"start": experts[e, t], "target": experts[e, t + expert_epochs]}


# ------------------------------------------------------------------------------ experts


def expert_optimizer(*, learning_rate: float, momentum: float = 0.0, weight_decay: float = 0.0):
  """The experts' SGD: constant `learning_rate`, optional momentum and coupled weight decay (the
  MTT code: lr 0.01, no momentum, no decay)."""
  return optax.chain(optax.add_decayed_weights(weight_decay),
                     optax.sgd(learning_rate, momentum=momentum or None))


def train_experts(keys: jax.Array, images: jax.Array, labels: jax.Array, *, apply_fn: ApplyFn,
                  init_fn: Callable[[jax.Array], Any], epochs: int, batch_size: int = 256,
                  learning_rate: float = 0.01, momentum: float = 0.0, weight_decay: float = 0.0,
                  augment: Optional[AugmentFn] = None,
                  on_epoch: Optional[Callable[[int], None]] = None, mesh=None) -> jax.Array:
  """Trains one network per key (`vmap`) on (images, integer labels) for `epochs` epochs and
  returns every network's flat parameters after each epoch, (E, epochs + 1, P), epoch 0 the
  initialisation. Epoch j shuffles with `fold_in(key_e, j)`; the last partial batch is dropped
  (as a data loader with drop_last). One jitted call per epoch; `on_epoch(j)` after epoch j. On
  a `mesh` of several devices the experts are split over them (`parallel.call_split`)."""
  n = images.shape[0]
  batch = min(batch_size, n)
  per_epoch = n // batch
  optimizer = expert_optimizer(learning_rate=learning_rate, momentum=momentum,
                               weight_decay=weight_decay)

  def init(key):
    params = init_fn(jax.random.fold_in(key, 0))
    return params, optimizer.init(params)

  def epoch(carry, key, j, images, labels):
    k_epoch = jax.random.fold_in(jax.random.fold_in(key, 1), j)
    order = jax.random.permutation(k_epoch, n)[:per_epoch * batch].reshape(per_epoch, batch)

    def step(c, b):
      params, opt_state = c
      x, y = images[order[b]], labels[order[b]]
      if augment is not None:
        x = augment(jax.random.fold_in(k_epoch, b), x)
      grads = jax.grad(lambda p: training.network_loss(apply_fn, p, x, y))(params)
      updates, opt_state = optimizer.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), None

    carry, _ = jax.lax.scan(step, carry, jnp.arange(per_epoch))
    return carry

  flat = jax.jit(jax.vmap(lambda c: ravel_pytree(c[0])[0]))
  run = jax.jit(jax.vmap(epoch, in_axes=(0, 0, None, None, None)), donate_argnums=0)
  carry = parallel.call_split(jax.jit(jax.vmap(init)), (keys,), mesh)
  out = [parallel.call_split(flat, (carry,), mesh)]
  for j in range(epochs):
    carry = parallel.call_split(run, (carry, keys), mesh, shared=(jnp.int32(j), images, labels))
    out.append(parallel.call_split(flat, (carry,), mesh))
    if on_epoch is not None:
      jax.block_until_ready(out[-1])
      on_epoch(j + 1)
  return jnp.stack(out, axis=1)
