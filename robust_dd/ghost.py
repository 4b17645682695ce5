"""Per-example gradient matching without per-example gradients ("ghost" norms).

Robust DC with one real image per cluster matches the class's synthetic gradient s against every
image's own gradient r_j. The 'ours' distance of `matching.gradient_match_distance` needs, per
weight tensor and output unit u, only two numbers of r_j:

    n_ju = |r_ju|           and        <s_u, r_ju>,

and both follow from the layer's input a_j and output gradient delta_j = dloss_j / dy_j, which one
ordinary forward and backward pass of the batch gives for every example at once (examples do not
interact in these networks). For a stride-1 convolution, r_ju[k, c] = sum_p ap_j[p + k, c]
delta_j[p, u] (ap: the padded input), so

    <s_u, r_ju> = sum_p delta_j[p, u] conv(a_j, s)[p, u]                 (one forward convolution)
    n_ju^2      = delta_ju^T G_j delta_ju,  G_j[p, q] = sum_k <ap_j[p + k], ap_j[q + k]>

with G_j built from the Gram matrix of a_j's pixels, zero-padded (Goodfellow 2015; ghost clipping,
Li et al. 2022; for convolutions Bu et al. 2022); for a dense layer on flat inputs
n_ju = |a_j| |delta_ju| and <s_u, r_ju> = delta_ju <a_j, s_u>. Where the Gram matrix costs more
than the per-example weight gradient (the first layer of a one-channel image: 1,024 positions,
9 weights per unit) that gradient is formed directly (it is small). The synthetic gradient s
enters only through the convolution and inner products, so JAX's autodiff of the distances in s
is a batched weight gradient with rescaled output gradients: no per-example gradient of a Gram
layer is formed, forward or backward.

Layers are found by intercepting Flax calls (`flax.linen.intercept_methods`): `models.PatchConv`
(with the convolution it computes) and `flax.linen.Dense` on flat inputs. Where `models.ConvNet`
folds a narrow convolution and its InstanceNorm into one matmul (`PatchConv.normalized`), the
tap is the norm's output z and each example's kernel gradient is formed directly from its output
gradient dloss_j / dz_j (`convolutions.conv_instance_norm_kernel_grads`), so the real pass
stays folded as in the plain step. A network with any other weight tensor (ndim >= 2), or with batch
statistics (which couple a batch's examples), is not supported: `unit_stats` returns None and
callers use per-example gradients.

Cost: robust DC with 1,000 one-image clusters takes about 1.4x the plain step on CPU, against
about 2x with per-image autodiff gradients and a third of their memory (docs/benchmarks.md,
`scripts/benchmark_robust.py`). The work is the forward and backward pass to the output
gradients, the Gram norms of the wide convolutions (each symmetric product from three of its
four blocks), the inner products' convolutions and, in the backward pass, their weight
gradient by Winograd F(4x4, 3x3) (`convolutions.conv_kernel_grad`) from the stored inputs and output
gradients.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from robust_dd import convolutions
from robust_dd import models
from robust_dd import training

ApplyFn = Callable[[Any, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class Layer:
  """A weight layer found in the network: its module path, kind ('conv' or 'dense'), kernel
  shape, its input and output shapes for one example, and for a convolution its
  `conv(x, kernel, padding)` function (`models.PatchConv.conv_fn`), `padding` argument and
  ((top, bottom), (left, right)) zero padding."""
  path: tuple[str, ...]
  kind: str
  kernel_shape: tuple[int, ...]
  in_shape: tuple[int, ...]
  out_shape: tuple[int, ...]
  conv: Optional[Callable[..., jax.Array]] = None
  padding: Optional[int] = None
  norm: Optional[tuple[str, ...]] = None  # A folded InstanceNorm's module path.
  epsilon: float = 1e-5

  @property
  def pads(self) -> tuple[tuple[int, int], tuple[int, int]]:
    return convolutions.conv_pads(*self.kernel_shape[:2], self.padding)

  @property
  def direct(self) -> bool:
    """Form each example's weight gradient (True) or its Gram matrix (False): whichever takes
    fewer multiplications."""
    if self.kind == "dense":
      return False
    if self.norm is not None:
      return True
    kh, kw, cin, cout = self.kernel_shape
    h, w = self.out_shape[:2]
    pixels = self.in_shape[0] * self.in_shape[1]
    return kh * kw * cin * cout * h * w <= pixels ** 2 * cin + (h * w) ** 2 * cout


def _layer_of(module: nn.Module, x: jax.Array, y: jax.Array, norm: Optional[nn.Module] = None
              ) -> Optional[Layer]:
  path = tuple(module.scope.path)
  if isinstance(module, models.PatchConv):
    folded = {} if norm is None else {"norm": tuple(norm.scope.path), "epsilon": norm.epsilon}
    return Layer(path, "conv", (*module.kernel_size, x.shape[-1], module.features), x.shape[1:],
                 y.shape[1:], conv=module.conv_fn(x.shape[-1]), padding=module.padding,
                 **folded)
  if isinstance(module, nn.Dense) and x.ndim == 2:
    return Layer(path, "dense", (x.shape[-1], module.features), x.shape[1:], y.shape[1:])
  return None


# Modules intercepted: the supported weight layers, and those that make a network unsupported
# (other weight layers; batch statistics, which couple the examples of a batch).
_WATCHED = (models.PatchConv, nn.Dense, nn.Conv, nn.ConvTranspose, nn.BatchNorm)


def _tapped(apply_fn: ApplyFn, params, x, perturbations: Optional[dict]):
  """apply_fn(params, x) with the weight layers' outputs perturbed by `perturbations` (path ->
  array; None: record only). Returns (logits, {path: (layer, input)}); an unsupported module
  records (None, input)."""
  taps = {}

  def interceptor(next_fun, args, kwargs, context):
    module = context.module
    folded = (context.method_name == "normalized" and isinstance(module, models.PatchConv)
              and kwargs.get("fold", True) and module.folds(args[0].shape[-1]))
    if not folded and (context.method_name != "__call__" or not isinstance(module, _WATCHED)):
      return next_fun(*args, **kwargs)
    y = next_fun(*args, **kwargs)
    layer = _layer_of(module, args[0], y, args[1] if folded else None)
    taps[tuple(context.module.scope.path)] = (layer, args[0])
    if layer is not None and perturbations is not None:
      y = y + perturbations[layer.path]
    return y

  with nn.intercept_methods(interceptor):
    logits = apply_fn(params, x)
  return logits, taps


def find_layers(apply_fn: ApplyFn, params, example_shape) -> Optional[list[Layer]]:
  """The network's weight layers, if ghost norms cover every weight tensor (ndim >= 2) of
  `params`, else None. Traces the network once, abstractly."""
  found = {}

  def trace(p):
    _, taps = _tapped(apply_fn, p, jnp.zeros((1, *example_shape), jnp.float32), None)
    found.update({k: layer for k, (layer, _) in taps.items()})
    return 0

  jax.eval_shape(trace, params)
  if any(layer is None for layer in found.values()):
    return None
  covered = {layer.path for layer in found.values()}
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    keys = tuple(k.key for k in path)
    if leaf.ndim >= 2 and (keys[-1] != "kernel" or keys[:-1] not in covered):
      return None
  return sorted(found.values(), key=lambda layer: layer.path)


def _shifted(layer: Layer, a: jax.Array) -> jax.Array:
  """The padded inputs' kh * kw shifted windows, (n, kh * kw, h * w, cin): window k at output
  position p is the input pixel p + k that the kernel tap k multiplies."""
  kh, kw = layer.kernel_shape[:2]
  return jnp.stack([window.reshape(a.shape[0], -1, a.shape[-1])
                    for window in convolutions.conv_windows(a, kh, kw, layer.pads)], axis=1)


def _batch_stats(layer: Layer, a: jax.Array, d: jax.Array, params=None):
  """Examples' unit norms^2 (n, U) and what the inner products need: their weight gradients
  (direct layers) or nothing more than a and d (the others). `params`: the network's, which a
  folded layer (`Layer.norm`) needs."""
  n = a.shape[0]
  if layer.kind == "dense":
    return jnp.sum(a * a, 1, keepdims=True) * d * d, None
  if layer.norm is not None:
    scale = functools.reduce(lambda tree, key: tree[key], layer.norm, params)["scale"]
    r = convolutions.conv_instance_norm_kernel_grads(a, _kernel(params, layer.path), scale, d,
                                               layer.padding, epsilon=layer.epsilon)
    return jnp.sum(r * r, (1, 2, 3)), r
  d = d.reshape(n, -1, d.shape[-1])
  if layer.direct:
    # r_j[k, c, u] = sum_p window_k(a_j)[p, c] delta_j[p, u]: one batched matmul.
    r = jnp.einsum("nkpc,npu->nkcu", _shifted(layer, a), d).reshape(n, *layer.kernel_shape)
    return jnp.sum(r * r, (1, 2, 3)), r
  kh, kw = layer.kernel_shape[:2]
  h, w = layer.out_shape[:2]
  hi, wi = a.shape[1:3]
  flat = a.reshape(n, hi * wi, -1)
  # The Gram matrix of the unpadded pixels, then zero-padded (padding pixels are zeros): a
  # matmul over 16^2 positions, not 18^2 (ConvNet-3's second layer; its image gradient at
  # K = 1000, 100 real images a class: 331 -> 311 ms, interleaved).
  g0 = _symmetric_gram(flat).reshape(n, hi, wi, hi, wi)
  g0 = jnp.pad(g0, ((0, 0), *layer.pads, *layer.pads))
  # G[p, q] = sum_k G0[p + k, q + k], the kh * kw shifts summed as kw, then kh (fewer passes).
  g1 = sum(g0[:, :, j:j + w, :, j:j + w] for j in range(kw))
  g = sum(g1[:, i:i + h, :, i:i + h] for i in range(kh))
  return _symmetric_quadratic_form(g.reshape(n, h * w, h * w), d), None


# Both Gram products are symmetric in the positions: three of their four blocks (halves of the
# positions) give them with 3/4 of the multiplications (thirds and quarters of the positions
# cost more than they save).


def _symmetric_gram(x: jax.Array) -> jax.Array:
  """x x^T for each example, (n, P, c) -> (n, P, P), from its two diagonal blocks and one
  off-diagonal block (the other is its transpose)."""
  m = x.shape[1] // 2
  top, bottom = x[:, :m], x[:, m:]
  gram = lambda y, z: jnp.einsum("npc,nqc->npq", y, z)
  upper = gram(top, bottom)
  return jnp.concatenate([jnp.concatenate([gram(top, top), upper], 2),
                          jnp.concatenate([jnp.swapaxes(upper, 1, 2), gram(bottom, bottom)], 2)],
                         1)


def _symmetric_quadratic_form(g: jax.Array, d: jax.Array) -> jax.Array:
  """sum_pq d[p, u] g[p, q] d[q, u] for each example, (n, U), of a symmetric g (n, P, P) and d
  (n, P, U): d_t^T g_tt d_t + 2 d_t^T g_tb d_b + d_b^T g_bb d_b over the halves t, b of P."""
  m = g.shape[1] // 2
  top, bottom = d[:, :m], d[:, m:]
  times = lambda y, z: jnp.einsum("npq,nqu->npu", y, z)
  from_top = times(g[:, :m, :m], top) + 2 * times(g[:, :m, m:], bottom)
  return jnp.sum(top * from_top, 1) + jnp.sum(bottom * times(g[:, m:, m:], bottom), 1)


def example_stats(apply_fn: ApplyFn, params, images, weights, *, layers: list[Layer], label,
                  loss: str = "ce"):
  """For n examples, per layer: (norms^2 (n, U), inputs or None, output gradients or None,
  weight gradients (direct layers) or None), of each example's gradient of
  `training.network_loss` with its own weight (the gradient of a one-image cluster: 0 for a
  zero weight, else that of its loss)."""
  n = images.shape[0]
  v = weights / jnp.maximum(weights, 1e-12)
  zeros = {layer.path: jnp.zeros((n, *layer.out_shape), images.dtype) for layer in layers}

  def total(pert):
    logits, taps = _tapped(apply_fn, params, images, pert)
    value = training.network_loss(lambda p, x: logits, params, images, label, loss=loss,
                                  weights=v) * jnp.maximum(jnp.sum(v), 1e-12)
    return value, {k: a for k, (_, a) in taps.items()}

  deltas, inputs = jax.grad(total, has_aux=True)(zeros)
  out = []
  for layer in layers:
    a, d = inputs[layer.path], deltas[layer.path]
    norms, r = _batch_stats(layer, a, d, params)
    keep = layer.kind == "dense" or not layer.direct
    out.append((norms, a if keep else None, d if keep else None, r))
  return out


def _inner_products(layer: Layer, s: jax.Array, a, d, r) -> jax.Array:
  """<s_u, r_ju> for every example j and unit u: (n, U)."""
  if r is not None:
    return jnp.einsum("nhwcu,hwcu->nu", r, s)
  if layer.kind == "dense":
    return d * (a @ s)
  return _conv_inner_products(layer, s, a, d)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _conv_inner_products(layer: Layer, s: jax.Array, a: jax.Array, d: jax.Array) -> jax.Array:
  """sum_p d_j[p, u] conv(a_j, s)[p, u] (n, U); differentiable in s only (a and d are the
  real examples' stopped inputs and output gradients). Its backward pass is one weight gradient
  of the batch, `convolutions.conv_kernel_grad`, from a and d (nothing else stored)."""
  return jnp.sum(d * layer.conv(a, s, layer.padding), (1, 2))


def _conv_inner_products_fwd(layer, s, a, d):
  return _conv_inner_products(layer, s, a, d), (a, d)


def _conv_inner_products_bwd(layer, res, ct):
  a, d = res
  ds = convolutions.conv_kernel_grad(layer.conv, a, d * ct[:, None, None, :], layer.kernel_shape,
                               layer.padding)
  return ds, None, None


_conv_inner_products.defvjp(_conv_inner_products_fwd, _conv_inner_products_bwd)


def _chunk_units(apply_fn: ApplyFn, params, grads_syn, images, weights, *,
                 layers: list[Layer], label, loss: str):
  """Per layer, (<s_u, r_ju>, |r_ju|^2), each (n, U), for one chunk of examples: the norms from
  one forward and backward pass and the inner products in the same pass, so that nothing of
  the chunk is stored but what the backward pass needs."""
  stats = jax.lax.stop_gradient(
      example_stats(apply_fn, params, images, weights, layers=layers, label=label, loss=loss))
  kernels = [_kernel(grads_syn, layer.path) for layer in layers]
  return [(_inner_products(layer, s, a, d, r), norms2)
          for layer, s, (norms2, a, d, r) in zip(layers, kernels, stats)]


def unit_stats(apply_fn: ApplyFn, params, grads_syn, images, label, weights, *,
               chunk: int = 0, loss: str = "ce") -> Optional[list]:
  """Per weight layer (sorted by path), (s, <s_u, r_ju>, |r_ju|^2): the synthetic gradient's
  kernel s, and its inner products with and the squared norms of the gradient r_j of each
  example j of `images` (n, ...) with its weight (`weights` (n,); a one-image cluster's
  gradient), each (n, U) over the output units u: equal to per-example autodiff to float
  rounding (tested), differentiable in `grads_syn` in reverse mode (the convolutions' inner
  products have a custom VJP). None where the network has a weight tensor that ghost norms do
  not cover (`find_layers`). `chunk` > 0: the examples in chunks of at most
  that many (a `lax.map`; cache-sized on CPU, as `training.loss_and_grad`).
  `matching.ghost_distances` turns them into its 'ours' distances.
  """
  layers = find_layers(apply_fn, params, images.shape[1:])
  if layers is None:
    return None
  n = images.shape[0]
  k = -(-n // chunk) if chunk and n > chunk else 1
  size = -(-n // k)
  split = lambda t: jnp.pad(t, [(0, k * size - n)] + [(0, 0)] * (t.ndim - 1)).reshape(
      k, size, *t.shape[1:])
  units = jax.lax.map(
      lambda xw: _chunk_units(apply_fn, params, grads_syn, *xw, layers=layers, label=label,
                              loss=loss), (split(images), split(weights)))
  units = jax.tree_util.tree_map(lambda t: t.reshape(k * size, *t.shape[2:])[:n], units)
  return [(_kernel(grads_syn, layer.path), *u) for layer, u in zip(layers, units)]


def _kernel(tree, path: tuple[str, ...]) -> jax.Array:
  for key in path:
    tree = tree[key]
  return tree["kernel"]
