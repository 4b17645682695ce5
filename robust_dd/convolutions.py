"""CPU convolution kernels for the ConvNet, behind `--conv_impl`, and the conv + InstanceNorm fold.

Every function here is a stride-1 2-D convolution (NHWC inputs, HWIO kernels) equal to
`lax.conv_general_dilated` to float rounding in value and in both gradients (tested):

  'lax'        `lax.conv_general_dilated` itself (`nn.Conv` in the networks): GPU and TPU.
  'patches'    one matmul of the input's patches (`conv_patches`).
  'shifted'    lax forward, the weight gradient as matmuls of shifted slices (`conv_shifted`;
               no forward mode, so not with LCMat's `--hvp=exact`).
  'winograd'   Winograd F(2x2, 3x3): 16 batched matmuls, 2.25x fewer multiplications.
  'winograd4'  Winograd F(4x4, 3x3): 36 batched matmuls, 4x fewer multiplications.
  'auto'       `auto_conv_impl()`: winograd4 on CPU, lax on GPU and TPU.

What each choice implies beyond the convolution:
- the fold (`conv_instance_norm`: a first convolution of at most `FOLD_MAX_FEATURES` patch
  features and its InstanceNorm as one per-example matmul) applies where the layer computes
  patches: 'patches', and the narrow layers of 'winograd'/'winograd4' (below
  `WINOGRAD_MIN_CHANNELS` input channels), so 'auto' folds on CPU and 'lax' never does;
- ghost norms (`robust_dd.ghost`, robust DC's per-cluster gradients without per-example
  gradients) recognise the patch, shifted and Winograd layers (`PatchConv`); with 'lax' a robust
  run falls back to per-example gradients.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from robust_dd import names

CONV_IMPLS = names.CONV_IMPLS
# conv_impl='auto' on CPU uses Winograd in layers with at least this many input channels and
# patches below: the tile transforms cost about what the matmul saving brings at 16-64 channels
# (F(2x2), forward + both gradients, 2 CPU cores: patches/winograd time 0.45-0.95 at 8-16
# channels, 1.05-1.17 at 32, 0.93-1.15 at 64, 1.5 at 128; 0.6 for the one-channel first layer
# on MNIST; not re-measured for F(4x4), which 'auto' now uses).
WINOGRAD_MIN_CHANNELS = 32


def auto_conv_impl(backend: Optional[str] = None) -> str:
  """The ConvNet convolution `conv_impl='auto'` picks on `backend` (default: JAX's default one).

  'winograd4' (F(4x4, 3x3)) on CPU (ConvNet: in layers of at least `WINOGRAD_MIN_CHANNELS`
  input channels, 'patches' in the others), where it was measured fastest: fewer multiplications
  than F(2x2) 'winograd' and 'patches', while `lax.conv`'s weight gradient runs on XLA:CPU as a
  grouped convolution under `vmap` (`scripts/benchmark_matching.py --conv_impl`;
  docs/benchmarks.md); 'lax' on GPU and TPU, where the convolution libraries are fast.
  """
  return "winograd4" if (backend or jax.default_backend()) == "cpu" else "lax"


def conv_patches(x: jax.Array, kernel: jax.Array, padding: Optional[int] = None) -> jax.Array:
  """Stride-1 cross-correlation of NHWC `x` with an HWIO `kernel`, as one matmul.

  `padding=None` is 'SAME'; an int p pads every side by p zeros (output H + 2p - kh + 1). Equal to
  `lax.conv_general_dilated` with that padding (tested). The patches are built from shifted
  slices, so the weight gradient is a plain (batched) matmul; under `vmap` over classes the lax
  form turns weight gradients into grouped convolutions, about 3x slower on XLA:CPU.
  """
  kh, kw, cin, cout = kernel.shape
  patches = conv_patch_matrix(x, kh, kw, padding)
  n, h, w = patches.shape[:3]
  # One 2-D matmul: XLA:CPU then computes the weight gradient as one dot over all pixels; the
  # 4-D form made it transpose the output gradient first (layer 1 of ConvNet-3 on MNIST: the
  # block's gradient 0.56 s -> 0.38 s for 256 images).
  y = patches.reshape(n * h * w, kh * kw * cin) @ kernel.reshape(kh * kw * cin, cout)
  return y.reshape(n, h, w, cout)


def conv_patch_matrix(x: jax.Array, kh: int, kw: int, padding: Optional[int]) -> jax.Array:
  """The kh x kw patches of NHWC `x` zero-padded as `conv_pads(kh, kw, padding)`, (n, h, w,
  kh * kw * c): `conv_windows` side by side, taps in row-major order (the HWIO kernel's
  flattening)."""
  return jnp.concatenate(conv_windows(x, kh, kw, conv_pads(kh, kw, padding)), axis=-1)


def conv_windows(x: jax.Array, kh: int, kw: int, pads) -> list[jax.Array]:
  """The kh * kw shifted windows (n, h, w, c) of NHWC `x` zero-padded by `pads` ((top, bottom),
  (left, right)), kernel taps in row-major order: window k at output pixel p is the input pixel
  that tap k multiplies there."""
  xp = jnp.pad(x, ((0, 0), *pads, (0, 0)))
  h, w = xp.shape[1] - kh + 1, xp.shape[2] - kw + 1
  return [xp[:, i:i + h, j:j + w, :] for i in range(kh) for j in range(kw)]


def conv_pads(kh: int, kw: int, padding: Optional[int]):
  """((top, bottom), (left, right)) zero padding of a kh x kw convolution: 'SAME' for
  `padding=None`, else `padding` on every side."""
  if padding is None:
    return ((kh - 1) // 2, kh - 1 - (kh - 1) // 2), ((kw - 1) // 2, kw - 1 - (kw - 1) // 2)
  return (padding, padding), (padding, padding)


def _lax_conv(x, kernel, pads):
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), pads,
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_shifted(x, kernel, pads):
  return _lax_conv(x, kernel, pads)


def _conv_shifted_fwd(x, kernel, pads):
  return _lax_conv(x, kernel, pads), (x, kernel)


def _conv_shifted_bwd(pads, res, g):
  x, kernel = res
  kh, kw = kernel.shape[:2]
  x_vjp = jax.linear_transpose(lambda v: _lax_conv(v, kernel, pads), x)
  dk = jnp.stack([jnp.einsum("nhwc,nhwd->cd", window, g)
                  for window in conv_windows(x, kh, kw, pads)])
  return x_vjp(g)[0], dk.reshape(kernel.shape)


_conv_shifted.defvjp(_conv_shifted_fwd, _conv_shifted_bwd)


def conv_shifted(x: jax.Array, kernel: jax.Array, padding: Optional[int] = None) -> jax.Array:
  """`conv_patches`' convolution computed by `lax.conv_general_dilated`, with a custom VJP whose
  weight gradient is a sum of kh·kw matmuls of shifted slices of the input with the output
  gradient (no patch tensor, no grouped convolution).

  Under `vmap` over classes with shared weights the forward and input-gradient convolutions take
  all classes' images as one batch and each weight gradient becomes a batched matmul, so
  per-class gradients cost about one ordinary backward pass. Reverse mode to any order (the
  matching loss differentiates the synthetic gradient); no forward mode (`jax.jvp`), so LCMat's
  exact Hessian-vector products need 'patches' or 'lax'.
  """
  kh, kw = kernel.shape[:2]
  return _conv_shifted(x, kernel, conv_pads(kh, kw, padding))


# Winograd F(2x2, 3x3) (Lavin & Gray, 2016): a 4x4 input tile d gives the 2x2 outputs
# A^T [(G g G^T) * (B^T d B)] A of a 3x3 filter g; 16 products per 4 outputs instead of 36.
_WINOGRAD_G = ((1., 0., 0.), (.5, .5, .5), (.5, -.5, .5), (0., 0., 1.))
_WINOGRAD_GG = np.kron(np.asarray(_WINOGRAD_G), np.asarray(_WINOGRAD_G))  # (16, 9)


def _winograd_in(d0, d1, d2, d3):
  """B^T along one axis, given its 4 tile rows (`_tile_rows`): (d0-d2, d1+d2, d2-d1, d1-d3)."""
  return d0 - d2, d1 + d2, d2 - d1, d1 - d3


def _winograd_out(m0, m1, m2, m3):
  """A^T along one axis: the tile's two outputs (m0+m1+m2, m1-m2-m3)."""
  return m0 + m1 + m2, m1 - m2 - m3


def _unstack(x: jax.Array, axis: int) -> list[jax.Array]:
  """x's slices along `axis` by `lax.split`, whose transpose is one concatenation (indexing
  transposes to a zero-padded copy per slice, summed: conv_winograd's backward pass built 16 of
  them per transform)."""
  return [jnp.squeeze(t, axis) for t in jnp.split(x, x.shape[axis], axis=axis)]


def _tile_rows(x: jax.Array, axis: int, tiles: int, stride: int = 2, size: int = 4
               ) -> list[jax.Array]:
  """The `size` rows of every tile at `stride` along `axis`: rows stride * t + i for i < size,
  from reshaped copies of `stride` rows per tile, not strided slices (see `_unstack`); x needs
  stride * (tiles + ceil(size / stride) - 1) rows there (F(4x4): 4 * tiles + 4, two more than
  the tiles read)."""

  def block(start):
    rows = jax.lax.slice_in_dim(x, start, start + stride * tiles, axis=axis)
    return _unstack(rows.reshape(*x.shape[:axis], tiles, stride, *x.shape[axis + 1:]), axis + 1)
  return [r for start in range(0, size, stride) for r in block(start)][:size]


def _padded_for_tiles(x: jax.Array, padding: Optional[int], size: int, extra: int = 0):
  """x zero-padded for a 3x3 convolution's output in size x size tiles: (xp, (h, w, th, tw)),
  the output size (h, w) and tiles (th, tw); an output not divisible by `size` gets one extra
  tile row/column (more zero padding), cropped from the output; `extra` more zero rows and
  columns at the end (for `_tile_rows`)."""
  (top, bottom), (left, right) = conv_pads(3, 3, padding)
  h, w = x.shape[1] + top + bottom - 2, x.shape[2] + left + right - 2
  th, tw = -(-h // size), -(-w // size)
  xp = jnp.pad(x, ((0, 0), (top, bottom + size * th - h + extra),
                   (left, right + size * tw - w + extra), (0, 0)))
  return xp, (h, w, th, tw)


def _winograd_tiles(x: jax.Array, padding: Optional[int]):
  """The padded input's 4x4 tiles at stride 2, each transformed by B^T . B (additions only):
  (16, n * th * tw, cin), and the 3x3 convolution's output size (h, w) and tiles (th, tw)
  (`_padded_for_tiles`)."""
  n = x.shape[0]
  xp, (h, w, th, tw) = _padded_for_tiles(x, padding, 2)
  rows = _winograd_in(*_tile_rows(xp, 1, th))
  tiles = jnp.stack([t for r in rows for t in _winograd_in(*_tile_rows(r, 2, tw))])
  return tiles.reshape(16, n * th * tw, x.shape[-1]), (h, w, th, tw)


def _untiled(y: Sequence[Sequence[jax.Array]], h: int, w: int) -> jax.Array:
  """The (n, h, w, cout) output from its s x s tiles' entries y[i][j] (the outputs (s ty + i,
  s tx + j), each (n, th, tw, cout)), cropped to (h, w)."""
  size, (n, th, tw, cout) = len(y), y[0][0].shape
  y = jnp.stack([jnp.stack(yi, axis=3) for yi in y], axis=2)
  return y.reshape(n, size * th, size * tw, cout)[:, :h, :w]


def conv_winograd(x: jax.Array, kernel: jax.Array, padding: Optional[int] = None) -> jax.Array:
  """`conv_patches`' 3x3 convolution by Winograd's minimal filtering F(2x2, 3x3).

  The padded input is cut into 4x4 tiles at stride 2 (reshaped rows, transformed by B^T . B
  with additions only), each filter into its 4x4 transform G g G^T, and the 16 transformed
  components are multiplied as 16 batched matmuls (n * ceil(h/2) * ceil(w/2), cin) x (cin,
  cout); A^T . A adds each tile's products into its 2x2 outputs. 16 multiplications per 4
  outputs and channel pair instead of 36: 2.25x fewer FLOPs than `conv_patches` in the forward
  pass and, through JAX's autodiff of these linear maps, in both gradients (weight gradients
  stay plain matmuls under `vmap` over classes). Tiles and components are taken apart by
  reshapes and `lax.split` (`_unstack`), so that the backward pass gathers them with
  concatenations, not a zero-padded copy per slice. Equal to `lax.conv_general_dilated` to float
  rounding (about 2e-7 relative, tested); forward and reverse mode to any order.
  """
  kh, kw, cin, cout = kernel.shape
  if (kh, kw) != (3, 3):
    raise ValueError(f"conv_winograd computes 3x3 convolutions, not {kh}x{kw}.")
  tiles, (h, w, th, tw) = _winograd_tiles(x, padding)
  n = x.shape[0]
  # G g G^T of every (cin, cout) filter as one (16, 9) matmul: under vmap over robust DC's
  # clusters the transpose (each cluster's weight gradient back to 3x3) is then one batched
  # matmul, not two with transposed copies (K = 1000 image gradient: 14.9 s -> 13.9 s).
  u = (jnp.asarray(_WINOGRAD_GG, kernel.dtype) @ kernel.reshape(9, cin * cout))
  u = u.reshape(16, cin, cout)
  m = jnp.matmul(tiles, u).reshape(4, 4, n, th, tw, cout)
  return _untiled([_winograd_out(*_unstack(r, 0)) for r in _winograd_out(*_unstack(m, 0))],
                  h, w)


# Winograd F(4x4, 3x3) (Lavin & Gray, 2016; points 0, +-1, +-2): a 6x6 input tile d gives the
# 4x4 outputs A^T [(G g G^T) * (B^T d B)] A; 36 products per 16 outputs.
_WINOGRAD4_BT = ((4, 0, -5, 0, 1, 0), (0, -4, -4, 1, 1, 0), (0, 4, -4, -1, 1, 0),
                 (0, -2, -1, 2, 1, 0), (0, 2, -1, -2, 1, 0), (0, 4, 0, -5, 0, 1))
_WINOGRAD4_G = ((1 / 4, 0, 0), (-1 / 6, -1 / 6, -1 / 6), (-1 / 6, 1 / 6, -1 / 6),
                (1 / 24, 1 / 12, 1 / 6), (1 / 24, -1 / 12, 1 / 6), (0, 0, 1))
_WINOGRAD4_A = ((1, 0, 0, 0), (1, 1, 1, 1), (1, -1, 1, -1), (1, 2, 4, 8), (1, -2, 4, -8),
                (0, 0, 0, 1))  # A (6, 4)
_WINOGRAD4_GG = np.kron(np.asarray(_WINOGRAD4_G), np.asarray(_WINOGRAD4_G))  # (36, 9)


def _combine(matrix, xs: Sequence[jax.Array]) -> list[jax.Array]:
  """sum_j matrix[i][j] xs[j] for every row i of a constant matrix, zero terms skipped (XLA
  fuses the additions)."""
  scaled = lambda c, x: x if c == 1 else -x if c == -1 else c * x
  return [functools.reduce(jnp.add, [scaled(c, x) for c, x in zip(row, xs) if c])
          for row in matrix]


def _winograd4_tiles(x: jax.Array, padding: Optional[int]):
  """The padded input's 6x6 tiles at stride 4, each transformed by B^T . B: (36, n * th * tw,
  cin), and the output size (h, w) and tiles (th, tw) (`_padded_for_tiles`, with the two more
  rows and columns `_tile_rows` reads)."""
  xp, (h, w, th, tw) = _padded_for_tiles(x, padding, 4, extra=2)
  rows = _combine(_WINOGRAD4_BT, _tile_rows(xp, 1, th, stride=4, size=6))
  tiles = jnp.stack([t for r in rows
                     for t in _combine(_WINOGRAD4_BT, _tile_rows(r, 2, tw, stride=4, size=6))])
  return tiles.reshape(36, x.shape[0] * th * tw, x.shape[-1]), (h, w, th, tw)


def winograd_kernel_grad(x: jax.Array, g: jax.Array, padding: Optional[int] = None
                         ) -> jax.Array:
  """The 3x3 kernel's gradient of sum(g * conv(x, kernel, padding)), (3, 3, cin, cout), by
  Winograd's F(4x4, 3x3): the padded input's 6x6 tiles at stride 4 transformed by B^T . B, the
  output gradient's 4x4 tiles by A . A^T (the output transform's adjoint), 36 batched matmuls
  over the tiles (n * ceil(h/4) * ceil(w/4), cin)^T x (., cout), and G^T . G back to 3x3.
  1.78x fewer multiplications than F(2x2)'s weight gradient (`conv_winograd`'s VJP: 36 per 16
  outputs against 16 per 4), and input tiles 2.25x, not 4x, the input's size. Errors about
  3e-6 of the largest entry against float64 (F(2x2): 2e-7 to 7e-7). Input tiles as
  `conv_winograd4`'s (`_winograd4_tiles`)."""
  n, cout = x.shape[0], g.shape[-1]
  tiles, (h, w, th, tw) = _winograd4_tiles(x, padding)
  gp = jnp.pad(g, ((0, 0), (0, 4 * th - h), (0, 4 * tw - w), (0, 0)))
  gp = gp.reshape(n, th, 4, tw, 4, cout)
  cols = [jnp.stack(_combine(_WINOGRAD4_A, [gp[:, :, a, :, b] for b in range(4)]))
          for a in range(4)]
  m = jnp.stack(_combine(_WINOGRAD4_A, cols))  # (6, 6, n, th, tw, cout)
  du = jnp.einsum("kpc,kpu->kcu", tiles, m.reshape(36, n * th * tw, cout))
  gg = jnp.asarray(_WINOGRAD4_GG.T, du.dtype)
  return (gg @ du.reshape(36, -1)).reshape(3, 3, x.shape[-1], cout)


def conv_winograd4(x: jax.Array, kernel: jax.Array, padding: Optional[int] = None
                   ) -> jax.Array:
  """`conv_winograd` by Winograd's F(4x4, 3x3): 6x6 input tiles at stride 4 (reshaped rows,
  as `_tile_rows`; B^T . B by additions and small constants), 36 batched matmuls (n *
  ceil(h/4) * ceil(w/4), cin) x (cin, cout), A^T . A into 4x4 outputs. 36 multiplications per
  16 outputs and channel pair, against F(2x2)'s 64 and a direct convolution's 144: 1.78x fewer
  than `conv_winograd` where 4 divides the output's sides (the ConvNet's 32/16/8 maps on MNIST,
  16/8 on CIFAR), in the forward pass and, through JAX's autodiff of these linear maps, in both
  gradients; input tiles 2.25x the input, not 4x. Errors about 3e-6 of the largest output
  against float64 (F(2x2): 2e-7; the transforms' entries reach 5 and 1/24), tested against
  `lax.conv` and NumPy; forward and reverse mode to any order."""
  kh, kw, cin, cout = kernel.shape
  if (kh, kw) != (3, 3):
    raise ValueError(f"conv_winograd4 computes 3x3 convolutions, not {kh}x{kw}.")
  tiles, (h, w, th, tw) = _winograd4_tiles(x, padding)
  u = jnp.asarray(_WINOGRAD4_GG, kernel.dtype) @ kernel.reshape(9, cin * cout)
  m = jnp.matmul(tiles, u.reshape(36, cin, cout))
  at = np.asarray(_WINOGRAD4_A).T  # A^T (4, 6)
  return _untiled([_combine(at, _unstack(r, 0)) for r in _combine(
      at, _unstack(m.reshape(6, 6, x.shape[0], th, tw, cout), 0))], h, w)


def conv_kernel_grad(conv: Callable[..., jax.Array], x: jax.Array, g: jax.Array,
                     kernel_shape: Sequence[int], padding: Optional[int] = None) -> jax.Array:
  """The gradient in the kernel of sum(g * conv(x, kernel, padding)) for any of this module's
  convolutions `conv`: `winograd_kernel_grad` for `conv_winograd` and `conv_winograd4`
  (ghost's inner products' backward pass, where F(4x4)'s fewer multiplications pay; inside the
  plain step's backward pass F(2x2) shares its transforms with the input gradient, and F(4x4)
  gains nothing), otherwise their VJP at a zero
  kernel (they are linear in it; the unused forward convolution is dropped under jit).
  `jax.linear_transpose` cannot transpose `conv_shifted`'s custom VJP."""
  if conv in (conv_winograd, conv_winograd4):
    return winograd_kernel_grad(x, g, padding)
  _, vjp = jax.vjp(lambda k: conv(x, k, padding), jnp.zeros(kernel_shape, x.dtype))
  return vjp(g)[0]


# `PatchConv.normalized` folds an InstanceNorm into the convolution before it
# (`conv_instance_norm`) where the patches have at most this many features (kh * kw * cin):
# the first layer on grey or colour images, where the (F, F) covariance per example costs little
# against the norm's passes over the wide output it replaces.
FOLD_MAX_FEATURES = 32


def instance_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, *,
                  epsilon: float = 1e-5) -> jax.Array:
  """Instance norm of NHWC `x` with affine (scale, bias) (C,), as `flax.linen.InstanceNorm`
  computes it (the same operations: per example and channel, variance E[x^2] - E[x]^2 clipped
  at 0, (x - mean) * (scale / sqrt(var + epsilon)) + bias)."""
  mean = jnp.mean(x, (1, 2))
  var = jnp.maximum(0.0, jnp.mean(jax.lax.square(x), (1, 2)) - jax.lax.square(mean))
  mul = jax.lax.rsqrt(var[:, None, None] + epsilon) * scale
  return (x - mean[:, None, None]) * mul + bias


def conv_instance_norm(x: jax.Array, kernel: jax.Array, scale: jax.Array, bias: jax.Array,
                       padding: Optional[int] = None, *, epsilon: float = 1e-5) -> jax.Array:
  """instance_norm(conv_patches(x, kernel, padding) + b, scale, bias) for any conv bias b (the
  norm removes it), as one matmul per example.

  Example i's convolution is linear in its (h * w, F) patches P_i, y_i = P_i W + b (W: the
  kernel as (F, C)), so its channel means are mean(P_i) W + b and its variances diag(W^T S_i W),
  with S_i the patches' (F, F) covariance; the normalised output is then
  (P_i - mean(P_i)) (W * s_i) + bias with s_i = scale / sqrt(var_i + epsilon), a matmul by a
  per-example weight. The norm's passes over the wide output (mean, variance, normalisation,
  and their backward passes) become (F, F) and (F, C) arithmetic per example
  (`scripts/benchmark_inner_loop.py` times DC's inner loop folded and unfolded). Equal to the
  unfolded form to float rounding, its variance from centred patches rather than E[y^2] -
  E[y]^2 (tested against both and float64); forward and reverse mode to any order."""
  p, k, sk, (n, h, w) = _centred_patches(x, kernel, padding)
  var = jnp.sum(k * sk, axis=1)  # (n, C)
  s = scale * jax.lax.rsqrt(jnp.maximum(var, 0.0) + epsilon)
  return (jnp.einsum("npf,nfc->npc", p, k * s[:, None, :]) + bias).reshape(n, h, w, -1)


def _centred_patches(x: jax.Array, kernel: jax.Array, padding: Optional[int]):
  """`conv_instance_norm`'s terms: each example's patches less their mean, (n, h * w, F), the
  kernel as W (F, C), S_i W (n, F, C) with S_i the patches' covariance, and (n, h, w)."""
  kh, kw, cin, cout = kernel.shape
  p = conv_patch_matrix(x, kh, kw, padding)
  n, h, w = p.shape[:3]
  p = p.reshape(n, h * w, kh * kw * cin)
  p = p - jnp.mean(p, axis=1, keepdims=True)
  k = kernel.reshape(kh * kw * cin, cout)
  return p, k, (jnp.einsum("npf,npg->nfg", p, p) / (h * w)) @ k, (n, h, w)


def conv_instance_norm_kernel_grads(x: jax.Array, kernel: jax.Array, scale: jax.Array,
                                    g: jax.Array, padding: Optional[int] = None, *,
                                    epsilon: float = 1e-5) -> jax.Array:
  """Each example's gradient in `kernel` of sum(g_i * conv_instance_norm(x_i, kernel, scale, .,
  padding)), (n, kh, kw, cin, cout), from (F, F) and (F, C) arithmetic per example: with
  G_i = (P_i - mean(P_i))^T g_i, the gradient is G_i * s_i + 2 (S_i W) * dvar_i, where
  dvar_i = sum_f(G_i * W) * scale * (-1/2) (var_i + epsilon)^(-3/2) (`conv_instance_norm`'s
  notation). What `ghost` forms for a folded layer (tested against per-example autodiff)."""
  p, k, sk, (n, h, w) = _centred_patches(x, kernel, padding)
  var = jnp.maximum(jnp.sum(k * sk, axis=1), 0.0) + epsilon
  gi = jnp.einsum("npf,npc->nfc", p, g.reshape(n, h * w, -1))
  dvar = jnp.sum(gi * k, axis=1) * scale * -0.5 * var ** -1.5
  r = gi * (scale * jax.lax.rsqrt(var))[:, None, :] + 2.0 * sk * dvar[:, None, :]
  return r.reshape(n, *kernel.shape)
