"""Finite networks (Flax): ConvNet-D for images and an MLP for flat inputs, each with `embed`.

`model.apply({'params': p}, x)` gives logits; `model.apply({'params': p}, x, method='embed')` the
features the classifier reads (used for clustering). Neither network has batch statistics or
dropout, so applying one is a pure function of (params, x).
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

NETWORKS = ("auto", "convnet", "mlp")
CONV_IMPLS = ("patches", "lax")


def conv_patches(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """'SAME' stride-1 cross-correlation of NHWC `x` with an HWIO `kernel`, as one matmul.

  Equal to `lax.conv_general_dilated(x, kernel, (1, 1), 'SAME')` (tested). The patches are built
  from shifted slices, so the weight gradient is a plain (batched) matmul; under `vmap` over classes
  the lax form turns weight gradients into grouped convolutions, about 3x slower on XLA:CPU.
  """
  kh, kw, cin, cout = kernel.shape
  n, h, w, _ = x.shape
  ph, pw = (kh - 1) // 2, (kw - 1) // 2
  xp = jnp.pad(x, ((0, 0), (ph, kh - 1 - ph), (pw, kw - 1 - pw), (0, 0)))
  patches = jnp.concatenate([xp[:, i:i + h, j:j + w, :] for i in range(kh) for j in range(kw)],
                            axis=-1)
  return patches @ kernel.reshape(kh * kw * cin, cout)


class PatchConv(nn.Module):
  """A 'SAME' stride-1 convolution with the parameters of `nn.Conv` ('kernel' HWIO, 'bias')."""
  features: int
  kernel_size: tuple[int, int] = (3, 3)

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (*self.kernel_size, x.shape[-1], self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    return conv_patches(x, kernel) + bias


class ConvNet(nn.Module):
  """depth x [Conv 3x3 (width) -> InstanceNorm -> ReLU -> AvgPool 2x2] -> Dense(num_classes).

  The DC/DSA ConvNet. Works for any NHWC input whose spatial size stays >= 1 after `depth`
  poolings (8x8 digits with depth <= 3, 28x28 MNIST, 32x32 CIFAR). `norm='none'` drops the
  InstanceNorm (with its affine parameters). `conv_impl='patches'` (default) computes each
  convolution as one matmul (see `conv_patches`); 'lax' uses `nn.Conv`. Both have the same
  parameters and outputs.
  """
  num_classes: int
  depth: int = 3
  width: int = 128
  norm: str = "instance"
  conv_impl: str = "patches"

  def setup(self):
    conv = (PatchConv if self.conv_impl == "patches"
            else lambda w, k, name: nn.Conv(w, k, padding="SAME", name=name))
    self.convs = [conv(self.width, (3, 3), name=f"conv{i}") for i in range(self.depth)]
    if self.norm == "instance":
      self.norms = [nn.InstanceNorm(epsilon=1e-5, name=f"norm{i}") for i in range(self.depth)]
    self.head = nn.Dense(self.num_classes, name="head")

  def embed(self, x: jax.Array) -> jax.Array:
    """Flattened features after the last block, (n, H' * W' * width)."""
    for i in range(self.depth):
      x = self.convs[i](x)
      if self.norm == "instance":
        x = self.norms[i](x)
      x = nn.avg_pool(nn.relu(x), (2, 2), strides=(2, 2))
    return x.reshape(x.shape[0], -1)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.head(self.embed(x))


class MLP(nn.Module):
  """depth x [Dense(width) -> ReLU] -> Dense(num_classes), on inputs flattened to (n, -1)."""
  num_classes: int
  depth: int = 2
  width: int = 128

  def setup(self):
    self.hidden = [nn.Dense(self.width, name=f"dense{i}") for i in range(self.depth)]
    self.head = nn.Dense(self.num_classes, name="head")

  def embed(self, x: jax.Array) -> jax.Array:
    x = x.reshape(x.shape[0], -1)
    for layer in self.hidden:
      x = nn.relu(layer(x))
    return x

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.head(self.embed(x))


def make_network(name: str, *, num_classes: int, input_shape: Sequence[int], depth: int = 3,
                 width: int = 128, conv_impl: str = "patches") -> nn.Module:
  """Builds the network for samples of `input_shape` (without the batch axis).

  `name='auto'` picks ConvNet for images (H, W, C) and MLP for flat inputs. Raises ValueError for
  a ConvNet on flat inputs or one so deep that pooling leaves no pixels.
  """
  input_shape = tuple(input_shape)
  if name not in NETWORKS:
    raise ValueError(f"Unknown network {name!r}; choose one of {NETWORKS}.")
  if name == "auto":
    name = "convnet" if len(input_shape) == 3 else "mlp"
  if depth < 1 or width < 1:
    raise ValueError(f"Network depth and width must be >= 1, got {depth} and {width}.")
  if name == "mlp":
    return MLP(num_classes=num_classes, depth=depth, width=width)
  if len(input_shape) != 3:
    raise ValueError(f"ConvNet needs images (H, W, C); got samples of shape {input_shape}. "
                     "Use --net=mlp for flat inputs.")
  if min(input_shape[:2]) < 2 ** depth:
    raise ValueError(f"ConvNet-{depth} pools {depth} times; {input_shape[:2]} images are too "
                     f"small. Use depth <= {int(min(input_shape[:2])).bit_length() - 1}.")
  if conv_impl not in CONV_IMPLS:
    raise ValueError(f"Unknown conv_impl {conv_impl!r}; choose one of {CONV_IMPLS}.")
  return ConvNet(num_classes=num_classes, depth=depth, width=width, conv_impl=conv_impl)


def init_params(model: nn.Module, key: jax.Array, input_shape: Sequence[int]) -> Any:
  """Fresh parameters of `model` for samples of `input_shape`."""
  return model.init(key, jnp.zeros((1, *input_shape), jnp.float32))["params"]


@functools.lru_cache(maxsize=None)
def init_fn(model: nn.Module, input_shape: tuple[int, ...]):
  """`f(key) -> params`: fresh parameters as a pure function (cached like `logits_fn`)."""
  return lambda key: init_params(model, key, input_shape)


@functools.lru_cache(maxsize=None)
def logits_fn(model: nn.Module):
  """`f(params, x) -> logits`: the network as a pure function (one object per equal model, so
  jitted callers that take it as a static argument compile once)."""
  return lambda params, x: model.apply({"params": params}, x)


@functools.lru_cache(maxsize=None)
def embed_fn(model: nn.Module):
  """`f(params, x) -> features`: the network's penultimate features as a pure function."""
  return lambda params, x: model.apply({"params": params}, x, method="embed")
