"""Differentiable siamese augmentation (DSA) in JAX, for NHWC image batches.

`dsa(key, x)` picks ONE operation out of `ops` with `key` and draws its parameters from `key`:
colour (brightness, saturation, contrast), crop (translation by up to 1/8), cutout (a square of
half the side set to zero), flip (horizontal, p = 1/2), scale (factors in [1/1.2, 1.2]) and rotate
(up to 15 degrees). With `per_sample=False` (siamese mode, used for matching) one set of parameters
is shared by the whole batch, so the same key applied to a real batch and to a synthetic batch
transforms both identically, whatever their sizes. With `per_sample=True` (used to train evaluation
networks) every sample gets its own parameters. Every operation is differentiable in `x` (affine
in the pixel values), and everything is jittable and vmappable.

Constants follow the DSA reference code (Zhao & Bilen, 2021).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import jax
import jax.numpy as jnp

OPS = ("color", "crop", "cutout", "flip", "scale", "rotate")


@dataclasses.dataclass(frozen=True)
class DSAParams:
  brightness: float = 1.0
  saturation: float = 2.0
  contrast: float = 0.5
  crop: float = 0.125
  cutout: float = 0.5
  scale: float = 1.2
  rotate_degrees: float = 15.0
  flip_probability: float = 0.5


def _uniform(key, shape):
  return jax.random.uniform(key, shape)


def _expand(value, x):
  """Broadcasts a per-sample (n,) or shared () parameter against NHWC `x`."""
  return value.reshape(value.shape + (1,) * (x.ndim - value.ndim))


def color(key, x, shape, p: DSAParams):
  kb, ks, kc = jax.random.split(key, 3)
  x = x + _expand((_uniform(kb, shape) - 0.5) * p.brightness, x)
  mean = x.mean(axis=-1, keepdims=True)
  x = (x - mean) * _expand(_uniform(ks, shape) * p.saturation, x) + mean
  mean = x.mean(axis=(1, 2, 3), keepdims=True)
  return (x - mean) * _expand(_uniform(kc, shape) + p.contrast, x) + mean


def _shift_axis(x, shift, axis):
  """Output[i] = x[i + shift] along `axis` (1 or 2), zero where i + shift falls outside."""
  size = x.shape[axis]
  src = jnp.arange(size)[None, :] + shift.reshape(-1, 1)  # (n or 1, size)
  valid = (src >= 0) & (src < size)
  src = jnp.clip(src, 0, size - 1)
  if shift.ndim == 0:
    moved = jnp.take(x, src[0], axis=axis)
    mask = valid[0]
  else:
    moved = jax.vmap(lambda xi, si: jnp.take(xi, si, axis=axis - 1))(x, src)
    mask = valid
  mask_shape = [1] * x.ndim
  mask_shape[axis] = size
  if shift.ndim:
    mask_shape[0] = x.shape[0]
  return moved * mask.reshape(mask_shape).astype(x.dtype)


def crop(key, x, shape, p: DSAParams):
  kx, ky = jax.random.split(key)
  sh, sw = int(x.shape[1] * p.crop + 0.5), int(x.shape[2] * p.crop + 0.5)
  tx = jax.random.randint(kx, shape, -sh, sh + 1)
  ty = jax.random.randint(ky, shape, -sw, sw + 1)
  return _shift_axis(_shift_axis(x, tx, 1), ty, 2)


def cutout(key, x, shape, p: DSAParams):
  kx, ky = jax.random.split(key)
  h, w = x.shape[1], x.shape[2]
  ch, cw = int(h * p.cutout + 0.5), int(w * p.cutout + 0.5)
  ox = jax.random.randint(kx, shape, 0, h + (1 - ch % 2))
  oy = jax.random.randint(ky, shape, 0, w + (1 - cw % 2))
  rows = jnp.arange(h) - _expand(ox, jnp.zeros(shape + (1,))) + ch // 2
  cols = jnp.arange(w) - _expand(oy, jnp.zeros(shape + (1,))) + cw // 2
  in_rows = (rows >= 0) & (rows < ch)  # (..., h)
  in_cols = (cols >= 0) & (cols < cw)
  box = in_rows[..., :, None] & in_cols[..., None, :]  # (..., h, w)
  keep = (~box).astype(x.dtype)
  return x * (keep[..., None] if shape else keep[None, ..., None])


def flip(key, x, shape, p: DSAParams):
  do = _expand(_uniform(key, shape) < p.flip_probability, x)
  return jnp.where(do, x[:, :, ::-1, :], x)


def _affine(x, theta):
  """Samples x (NHWC) at A @ [u, v, 1] for output grid (u, v) in [-1, 1] (align_corners=True).

  theta: (2, 3) shared or (n, 2, 3) per sample. Bilinear, zero outside the image.
  """
  h, w = x.shape[1], x.shape[2]
  v, u = jnp.meshgrid(jnp.linspace(-1.0, 1.0, h), jnp.linspace(-1.0, 1.0, w), indexing="ij")
  grid = jnp.stack([u, v, jnp.ones_like(u)], axis=-1)  # (h, w, 3): x (width), y (height), 1

  def sample_one(image, t):
    src = grid @ t.T  # (h, w, 2): source x, y in [-1, 1]
    col = (src[..., 0] + 1.0) * (w - 1) / 2.0
    row = (src[..., 1] + 1.0) * (h - 1) / 2.0
    per_channel = lambda ch: jax.scipy.ndimage.map_coordinates(ch, [row, col], order=1,
                                                               mode="constant", cval=0.0)
    return jax.vmap(per_channel, in_axes=-1, out_axes=-1)(image)

  if theta.ndim == 2:
    return jax.vmap(lambda image: sample_one(image, theta))(x)
  return jax.vmap(sample_one)(x, theta)


def scale(key, x, shape, p: DSAParams):
  kx, ky = jax.random.split(key)
  sx = _uniform(kx, shape) * (p.scale - 1.0 / p.scale) + 1.0 / p.scale
  sy = _uniform(ky, shape) * (p.scale - 1.0 / p.scale) + 1.0 / p.scale
  zero = jnp.zeros_like(sx)
  theta = jnp.stack([jnp.stack([sx, zero, zero], -1), jnp.stack([zero, sy, zero], -1)], -2)
  return _affine(x, theta)


def rotate(key, x, shape, p: DSAParams):
  angle = (_uniform(key, shape) - 0.5) * 2.0 * p.rotate_degrees / 180.0 * math.pi
  c, s, zero = jnp.cos(angle), jnp.sin(angle), jnp.zeros_like(angle)
  theta = jnp.stack([jnp.stack([c, -s, zero], -1), jnp.stack([s, c, zero], -1)], -2)
  return _affine(x, theta)


OP_FNS = {"color": color, "crop": crop, "cutout": cutout, "flip": flip, "scale": scale,
          "rotate": rotate}


def check_ops(ops: Sequence[str]) -> tuple[str, ...]:
  ops = tuple(ops)
  unknown = [o for o in ops if o not in OP_FNS]
  if unknown or not ops:
    raise ValueError(f"Unknown or no DSA ops {unknown or ops}; choose from {OPS}.")
  return ops


def dsa(key: jax.Array, x: jax.Array, *, ops: Sequence[str] = OPS, per_sample: bool = False,
        params: DSAParams = DSAParams()) -> jax.Array:
  """Applies one randomly chosen DSA operation to the NHWC batch `x`.

  Args:
    key: PRNG key; it chooses the operation and its parameters. The same key gives the same
      transformation of any batch with the same image size (the siamese property).
    x: (n, H, W, C) images.
    ops: the operations to choose from, uniformly.
    per_sample: draw separate parameters for every sample instead of one set for the batch.
    params: strengths of the operations.
  """
  ops = check_ops(ops)
  if x.ndim != 4:
    raise ValueError(f"DSA needs NHWC images; got an array of shape {x.shape}.")
  k_op, k_param = jax.random.split(key)
  shape = (x.shape[0],) if per_sample else ()
  branches = [lambda k, v, f=OP_FNS[o]: f(k, v, shape, params) for o in ops]
  if len(branches) == 1:
    return branches[0](k_param, x)
  index = jax.random.randint(k_op, (), 0, len(branches))
  return jax.lax.switch(index, branches, k_param, x)
