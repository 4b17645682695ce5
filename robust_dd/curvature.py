"""Loss-curvature matching (LCMat-C): gradient matching plus matched Hessian-vector products.

Arrays in, arrays out. For one class with synthetic loss L_S and real loss L_T at theta:

    g = sg(grad L_S - grad L_T),  v = rho * g / |g|          (the adversarial direction)
    loss = D(grad L_S, grad L_T) + gamma * D(H_S v, H_T v)

with H v computed exactly by forward-over-reverse differentiation (`jax.jvp` of `jax.grad`), or,
with `hvp='finite_difference'`, as grad L(theta + v) - grad L(theta). D is the matching distance
of `robust_dd.matching`. Classes are vmapped by `matching.per_class_losses`.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from robust_dd import matching
from robust_dd import names

HVP_MODES = names.HVP_MODES


def hvp(loss_fn: Callable[[Any], jax.Array], params, v) -> Any:
  """Exact Hessian-vector product H(params) v by forward-over-reverse differentiation."""
  return _jvp_of_grad(jax.grad(loss_fn), params, v)


def hvp_finite_difference(loss_fn: Callable[[Any], jax.Array], params, v) -> Any:
  """grad L(params + v) - grad L(params): H v up to O(|v|^2)."""
  return _difference_of_grad(jax.grad(loss_fn), params, v)


def _jvp_of_grad(grad_fn, params, v):
  return jax.jvp(grad_fn, (params,), (v,))[1]


def _difference_of_grad(grad_fn, params, v):
  shifted = jax.tree_util.tree_map(jnp.add, params, v)
  return jax.tree_util.tree_map(jnp.subtract, grad_fn(shifted), grad_fn(params))


def tree_norm(tree) -> jax.Array:
  return jnp.sqrt(sum(jnp.sum(a * a) for a in jax.tree_util.tree_leaves(tree)))


def adversarial_direction(g_syn, g_real, *, rho: float, eps: float = 1e-12):
  """v = rho * sg(g) / |sg(g)| with g = g_syn - g_real (zero when the gradients agree)."""
  g = jax.lax.stop_gradient(jax.tree_util.tree_map(jnp.subtract, g_syn, g_real))
  scale = rho / (tree_norm(g) + eps)
  return jax.tree_util.tree_map(lambda a: a * scale, g)


def curvature_match_class_loss(apply_fn: matching.ApplyFn, *, rho: float = 0.05,
                               gamma: float = 1.0, metric: str = "ours",
                               hvp_mode: str = "exact", chunk: int = 0) -> matching.ClassLoss:
  """The LCMat-C loss of one class (see the module docstring); `real_weights` and `chunk` (the
  real gradient and Hessian-vector product over at most that many images at a time) as in
  `matching.gradient_match_class_loss`."""
  if hvp_mode not in HVP_MODES:
    raise ValueError(f"Unknown hvp mode {hvp_mode!r}; choose one of {HVP_MODES}.")
  product = _jvp_of_grad if hvp_mode == "exact" else _difference_of_grad

  def class_loss(net_params, x_syn, x_real, label, real_weights=None):
    grad_syn = lambda p: matching.class_loss_gradient(apply_fn, p, x_syn, label)
    grad_real = lambda p: matching.class_loss_gradient(apply_fn, p, x_real, label, real_weights,
                                                       chunk=chunk)
    g_syn = grad_syn(net_params)
    g_real = jax.lax.stop_gradient(grad_real(net_params))
    v = adversarial_direction(g_syn, g_real, rho=rho)
    h_syn = product(grad_syn, net_params, v)
    h_real = jax.lax.stop_gradient(product(grad_real, net_params, v))
    return (matching.gradient_match_distance(g_syn, g_real, metric=metric)
            + gamma * matching.gradient_match_distance(h_syn, h_real, metric=metric))

  return class_loss


def curvature_match_loss(net_params, syn_images, real_images, *, apply_fn: matching.ApplyFn,
                         key: Optional[jax.Array] = None,
                         augment: Optional[matching.AugmentFn] = None, rho: float = 0.05,
                         gamma: float = 1.0, metric: str = "ours", hvp_mode: str = "exact"
                         ) -> jax.Array:
  """LCMat-C summed over classes (vmapped); shapes as `matching.per_class_losses`."""
  class_loss = curvature_match_class_loss(apply_fn, rho=rho, gamma=gamma, metric=metric,
                                          hvp_mode=hvp_mode)
  return matching.per_class_losses(class_loss, net_params, syn_images, real_images, key=key,
                                   augment=augment).sum()


# Jitted alias for users: callables and mode names static; rho and gamma traced.
curvature_match_loss_jit = jax.jit(
    curvature_match_loss, static_argnames=("apply_fn", "augment", "metric", "hvp_mode"))
