"""Finite networks (Flax), each with `embed`: ConvNet-D and an MLP (matching and evaluation),
and AlexNet, VGG-11, ResNet-18 and a small ViT for cross-architecture evaluation.

`model.apply({'params': p}, x)` gives logits; `model.apply({'params': p}, x, method='embed')` the
features the classifier reads (used for clustering). No network has batch statistics or dropout
(the normalised ones use instance norm, as the DC/MTT code's default variants do), so applying one
is a pure function of (params, x).

The convolutional networks follow the DC/DSA/MTT code's definitions (`networks.py` of
VICO-UoE/DatasetCondensation), including its padding of one-channel 28x28 inputs to 32x32 maps:
ConvNet and VGG pad their first convolution by 3 (AlexNet its 5x5 one by 4) on (28, 28, 1)
inputs (`padding='reference'`, the default; 'same' pads every 3x3 convolution by 1, as robust_dd
<= 0.3 did). Other inputs (8x8 digits, 32x32 colour) are padded as 'same' under both: the
reference pads every one-channel input by 3, but only ever feeds it 28x28 images, and on 8x8
digits ConvNet-3 would end on 1x1 maps that instance norm sets to zero.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from robust_dd import convolutions
from robust_dd import names

NETWORKS = names.NETWORKS
# Networks for cross-architecture evaluation (--eval_nets); 'convnet' is the run's ConvNet.
EVAL_NETWORKS = names.EVAL_NETWORKS
PADDINGS = names.PADDINGS


class InstanceNorm(nn.Module):
  """`flax.linen.InstanceNorm` on NHWC inputs (the same parameters, 'scale' and 'bias', and
  values: `instance_norm`), whose parameters `affine` also gives to `PatchConv.normalized`."""
  epsilon: float = 1e-5

  @nn.compact
  def affine(self, features: int) -> tuple[jax.Array, jax.Array]:
    """The (scale, bias) parameters, (features,) each."""
    return (self.param("scale", nn.initializers.ones, (features,)),
            self.param("bias", nn.initializers.zeros, (features,)))

  def __call__(self, x: jax.Array) -> jax.Array:
    return convolutions.instance_norm(x, *self.affine(x.shape[-1]), epsilon=self.epsilon)


class PatchConv(nn.Module):
  """A stride-1 convolution with the parameters of `nn.Conv` ('kernel' HWIO, 'bias'), padded
  'SAME' or by `padding` pixels on every side, computed by `conv_patches` (impl 'patches'),
  `conv_shifted` ('shifted'), `conv_winograd` ('winograd') or `conv_winograd4` ('winograd4';
  the Winograd ones 3x3 only; inputs with fewer than `winograd_min_channels` channels use
  `conv_patches`). `normalized` is the convolution followed by an `InstanceNorm`."""
  features: int
  kernel_size: tuple[int, int] = (3, 3)
  padding: Optional[int] = None
  impl: str = "patches"
  winograd_min_channels: int = 0

  @nn.compact
  def weights(self, in_channels: int) -> tuple[jax.Array, jax.Array]:
    """The (kernel, bias) parameters for inputs of `in_channels` channels."""
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (*self.kernel_size, in_channels, self.features))
    return kernel, self.param("bias", nn.initializers.zeros, (self.features,))

  def __call__(self, x):
    kernel, bias = self.weights(x.shape[-1])
    return self.conv_fn(x.shape[-1])(x, kernel, self.padding) + bias

  def conv_fn(self, in_channels: int) -> Callable[..., jax.Array]:
    """The convolution `conv(x, kernel, padding)` this layer computes on inputs of
    `in_channels` channels."""
    narrow = self.impl.startswith("winograd") and in_channels < self.winograd_min_channels
    impl = "patches" if narrow else self.impl
    return {"shifted": convolutions.conv_shifted, "winograd": convolutions.conv_winograd,
            "winograd4": convolutions.conv_winograd4}.get(impl, convolutions.conv_patches)

  def folds(self, in_channels: int) -> bool:
    """Whether `normalized` folds the norm into the convolution (`conv_instance_norm`): for
    patch convolutions of at most `FOLD_MAX_FEATURES` patch features."""
    features = self.kernel_size[0] * self.kernel_size[1] * in_channels
    return (self.conv_fn(in_channels) is convolutions.conv_patches
            and features <= convolutions.FOLD_MAX_FEATURES)

  def normalized(self, x: jax.Array, norm: InstanceNorm, *, fold: bool = True) -> jax.Array:
    """norm(self(x)); by `conv_instance_norm` where `fold` and `folds` (the same to float
    rounding; the convolution's bias, which the norm removes, then gets a zero gradient)."""
    if not (fold and self.folds(x.shape[-1])):
      return norm(self(x))
    kernel, _ = self.weights(x.shape[-1])
    scale, bias = norm.affine(self.features)
    return convolutions.conv_instance_norm(x, kernel, scale, bias, self.padding,
                                           epsilon=norm.epsilon)


class ConvNet(nn.Module):
  """depth x [Conv 3x3 (width) -> InstanceNorm -> ReLU -> AvgPool 2x2] -> Dense(num_classes).

  The DC/DSA ConvNet. Works for any NHWC input whose spatial size stays >= 1 after `depth`
  poolings (8x8 digits with depth <= 3, 28x28 MNIST, 32x32 CIFAR). The first convolution pads by
  `first_padding` (the reference pads one-channel inputs by 3: 28x28 maps become 32, 16, 8, 4),
  the others by 1. `norm='none'` drops the InstanceNorm (with its affine parameters).
  `conv_impl='patches'` computes each convolution as one matmul (see `conv_patches`); 'lax' uses
  `nn.Conv`; 'shifted' uses `conv_shifted` (lax forward, a weight gradient of shifted matmuls);
  'winograd' uses `conv_winograd` (F(2x2, 3x3), 2.25x fewer FLOPs) in every layer, 'winograd4'
  `conv_winograd4` (F(4x4, 3x3), 4x fewer); 'auto' (default) is `auto_conv_impl()` of the
  default backend, on CPU winograd4 in the layers of at least `WINOGRAD_MIN_CHANNELS` input
  channels and patches in the others. All have the same parameters and outputs (to float
  rounding). `fold_norm` (default) computes a patch convolution of at most `FOLD_MAX_FEATURES`
  patch features and its InstanceNorm as one per-example matmul (`conv_instance_norm`; on CPU
  the first layer on grey or colour images); False computes them in turn.
  """
  num_classes: int
  depth: int = 3
  width: int = 128
  norm: str = "instance"
  conv_impl: str = "auto"
  first_padding: int = 1
  fold_norm: bool = True

  def setup(self):
    impl = convolutions.auto_conv_impl() if self.conv_impl == "auto" else self.conv_impl
    min_channels = convolutions.WINOGRAD_MIN_CHANNELS if self.conv_impl == "auto" else 0

    def conv(i):
      pad = self.first_padding if i == 0 else 1
      if impl in ("patches", "shifted", "winograd", "winograd4"):
        return PatchConv(self.width, (3, 3), padding=pad, impl=impl,
                         winograd_min_channels=min_channels, name=f"conv{i}")
      return nn.Conv(self.width, (3, 3), padding=((pad, pad), (pad, pad)), name=f"conv{i}")

    self.convs = [conv(i) for i in range(self.depth)]
    if self.norm == "instance":
      self.norms = [InstanceNorm(epsilon=1e-5, name=f"norm{i}") for i in range(self.depth)]
    self.head = nn.Dense(self.num_classes, name="head")

  def embed(self, x: jax.Array) -> jax.Array:
    """Flattened features after the last block, (n, H' * W' * width)."""
    for i in range(self.depth):
      conv = self.convs[i]
      if self.norm != "instance":
        x = conv(x)
      elif isinstance(conv, PatchConv):
        x = conv.normalized(x, self.norms[i], fold=self.fold_norm)
      else:
        x = self.norms[i](conv(x))
      x = relu_avg_pool(x)
    return x.reshape(x.shape[0], -1)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.head(self.embed(x))


def relu_avg_pool(x: jax.Array) -> jax.Array:
  """avg_pool(relu(x)) over 2x2 windows at stride 2 (NHWC), the ConvNet's block end: the values
  and gradients of `flax.linen.avg_pool(flax.linen.relu(x), (2, 2), strides=(2, 2))` bit for
  bit (tested), through a select and a window sum times 1/4, where XLA:CPU fuses them with fewer
  materialised broadcasts than `relu`'s custom derivative gets."""
  window = (1, 2, 2, 1)
  return jax.lax.reduce_window(jnp.where(x > 0, x, 0.0), 0.0, jax.lax.add, window, window,
                               "VALID") * 0.25


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


def _instance_norm(name: str) -> nn.Module:
  # The reference's 'instancenorm': GroupNorm(C, C) with affine parameters, eps 1e-5.
  return nn.InstanceNorm(epsilon=1e-5, name=name)


def _max_pool(x: jax.Array) -> jax.Array:
  return nn.max_pool(x, (2, 2), strides=(2, 2))


class _Classifier(nn.Module):
  """A feature network (`features()`, a compact module) with a Dense head: `embed` and logits."""
  num_classes: int

  def setup(self):
    self.body = self.features()
    self.head = nn.Dense(self.num_classes)

  def features(self) -> nn.Module:
    raise NotImplementedError

  def embed(self, x: jax.Array) -> jax.Array:
    return self.body(x)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.head(self.embed(x))


class AlexNetFeatures(nn.Module):
  """AlexNet's convolutional part, flattened (see `AlexNet`)."""
  first_padding: int = 2

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    p = self.first_padding
    x = _max_pool(nn.relu(nn.Conv(128, (5, 5), padding=((p, p), (p, p)), name="conv0")(x)))
    x = _max_pool(nn.relu(nn.Conv(192, (5, 5), padding=((2, 2), (2, 2)), name="conv1")(x)))
    for i, width in enumerate((256, 192, 192)):
      x = nn.relu(nn.Conv(width, (3, 3), padding=((1, 1), (1, 1)), name=f"conv{i + 2}")(x))
    return _max_pool(x).reshape(x.shape[0], -1)


class AlexNet(_Classifier):
  """The DC code's small-image AlexNet (no normalisation): Conv 5x5 128 -> MaxPool -> Conv 5x5
  192 -> MaxPool -> Conv 3x3 256, 192, 192 -> MaxPool -> Dense. The first convolution pads by
  `first_padding` (reference: 4 for one channel, 2 otherwise); 28x28 and 32x32 inputs end 4x4."""
  first_padding: int = 2

  def features(self):
    return AlexNetFeatures(self.first_padding)


VGG11_LAYERS = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class VGG11Features(nn.Module):
  """VGG-11's convolutional part, flattened (see `VGG11`)."""
  first_padding: int = 1

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = 0
    for layer in VGG11_LAYERS:
      if layer == "M":
        x = _max_pool(x)
        continue
      p = self.first_padding if conv == 0 else 1
      x = nn.Conv(layer, (3, 3), padding=((p, p), (p, p)), name=f"conv{conv}")(x)
      x = nn.relu(_instance_norm(f"norm{conv}")(x))
      conv += 1
    return x.reshape(x.shape[0], -1)


class VGG11(_Classifier):
  """The DC code's VGG-11: [Conv 3x3 -> InstanceNorm -> ReLU] with MaxPools as `VGG11_LAYERS`,
  then Dense on the 512 channels left (inputs of 32x32 maps; the first convolution pads by
  `first_padding`, 3 for one-channel 28x28 inputs)."""
  first_padding: int = 1

  def features(self):
    return VGG11Features(self.first_padding)


class BasicBlock(nn.Module):
  """ResNet's basic block: two 3x3 convolutions (no bias) with instance norm, and a 1x1
  convolution + norm on the shortcut when the shape changes."""
  planes: int
  stride: int = 1

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    s = self.stride
    out = nn.Conv(self.planes, (3, 3), strides=(s, s), padding=((1, 1), (1, 1)), use_bias=False,
                  name="conv1")(x)
    out = nn.relu(_instance_norm("norm1")(out))
    out = nn.Conv(self.planes, (3, 3), padding=((1, 1), (1, 1)), use_bias=False,
                  name="conv2")(out)
    out = _instance_norm("norm2")(out)
    if s != 1 or x.shape[-1] != self.planes:
      x = nn.Conv(self.planes, (1, 1), strides=(s, s), use_bias=False, name="shortcut")(x)
      x = _instance_norm("shortcut_norm")(x)
    return nn.relu(out + x)


class ResNet18Features(nn.Module):
  """ResNet-18 up to its pooled 512 features (see `ResNet18`)."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.Conv(64, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, name="conv0")(x)
    x = nn.relu(_instance_norm("norm0")(x))
    for stage, planes in enumerate((64, 128, 256, 512)):
      for block in range(2):
        stride = 2 if stage > 0 and block == 0 else 1
        x = BasicBlock(planes, stride, name=f"stage{stage}_block{block}")(x)
    return jnp.mean(x, axis=(1, 2))


class ResNet18(_Classifier):
  """The DC code's ResNet-18 for small images: Conv 3x3 64 (no bias) -> norm -> ReLU, four stages
  of two basic blocks (64, 128, 256, 512 channels; stride 2 from the second), global average
  pooling (the reference's avg_pool(4) on its 4x4 maps), Dense."""

  def features(self):
    return ResNet18Features()


class ViTFeatures(nn.Module):
  """The ViT's class-token embedding (see `ViT`)."""
  patch: int = 4
  dim: int = 128
  depth: int = 4
  heads: int = 4
  mlp_dim: int = 256

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    p = self.patch
    x = nn.Conv(self.dim, (p, p), strides=(p, p), padding="VALID", name="patch_embed")(x)
    x = x.reshape(x.shape[0], -1, self.dim)
    cls = self.param("cls", nn.initializers.zeros, (1, 1, self.dim))
    x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, self.dim)), x], axis=1)
    pos = self.param("pos_embed", nn.initializers.normal(0.02), (1, x.shape[1], self.dim))
    x = x + pos
    for i in range(self.depth):
      y = nn.LayerNorm(name=f"block{i}_norm1")(x)
      x = x + nn.MultiHeadDotProductAttention(self.heads, name=f"block{i}_attn")(y, y)
      y = nn.LayerNorm(name=f"block{i}_norm2")(x)
      y = nn.Dense(self.mlp_dim, name=f"block{i}_mlp1")(y)
      x = x + nn.Dense(self.dim, name=f"block{i}_mlp2")(nn.gelu(y))
    return nn.LayerNorm(name="norm")(x)[:, 0]


class ViT(_Classifier):
  """A small vision transformer: 4x4 patches embedded to 128, a class token and learned position
  embeddings, 4 pre-norm blocks [LayerNorm -> 4-head self-attention, LayerNorm -> MLP (256,
  GELU)], a final LayerNorm; the class token is the embedding, then Dense. No dropout. Inputs whose
  sides are not multiples of 4 lose the remainder (28x28: 49 patches)."""

  def features(self):
    return ViTFeatures()


def _side_after(size: int, name: str, depth: int, first_padding: int) -> int:
  """The smallest spatial side of the last feature map of network `name` on `size` inputs."""
  if name == "convnet":
    size = size + 2 * first_padding - 2
    for _ in range(depth):
      size //= 2
    return size
  if name == "alexnet":
    return (size + 2 * first_padding - 4) // 8
  if name == "vgg11":
    return (size + 2 * first_padding - 2) // 32
  if name == "resnet18":  # Its last maps (size / 8) are instance-normalised: 1x1 would be zero.
    return size // 16
  return size // ViTFeatures.patch  # vit


def make_network(name: str, *, num_classes: int, input_shape: Sequence[int], depth: int = 3,
                 width: int = 128, conv_impl: str = "auto",
                 padding: str = "reference") -> nn.Module:
  """Builds the network for samples of `input_shape` (without the batch axis).

  `name='auto'` picks ConvNet for images (H, W, C) and MLP for flat inputs; `depth` and `width`
  apply to ConvNet and MLP (the other networks have their reference sizes). `padding='reference'`
  pads one-channel inputs as the DC code does (module docstring), 'same' keeps every map's size
  through convolutions. Raises ValueError for an image network on flat inputs or images so small
  that pooling leaves no pixels.
  """
  input_shape = tuple(input_shape)
  if name not in NETWORKS:
    raise ValueError(f"Unknown network {name!r}; choose one of {NETWORKS}.")
  if padding not in PADDINGS:
    raise ValueError(f"Unknown padding {padding!r}; choose one of {PADDINGS}.")
  if name == "auto":
    name = "convnet" if len(input_shape) == 3 else "mlp"
  if depth < 1 or width < 1:
    raise ValueError(f"Network depth and width must be >= 1, got {depth} and {width}.")
  if name == "mlp":
    return MLP(num_classes=num_classes, depth=depth, width=width)
  if len(input_shape) != 3:
    raise ValueError(f"{name} needs images (H, W, C); got samples of shape {input_shape}. "
                     "Use --net=mlp for flat inputs.")
  if conv_impl not in convolutions.CONV_IMPLS:
    raise ValueError(f"Unknown conv_impl {conv_impl!r}; choose one of {convolutions.CONV_IMPLS}.")
  # The reference pads one-channel inputs, which in its datasets are all 28x28 (to 32x32 maps).
  one_channel = padding == "reference" and input_shape == (28, 28, 1)
  first_padding = {"convnet": 3 if one_channel else 1, "vgg11": 3 if one_channel else 1,
                   "alexnet": 4 if one_channel else 2}.get(name, 1)
  if _side_after(min(input_shape[:2]), name, depth, first_padding) < 1:
    what = f"ConvNet-{depth} pools {depth} times" if name == "convnet" else f"{name} downsamples"
    raise ValueError(f"{what}; {input_shape[:2]} images are too small for it"
                     + (f". Use depth <= {_max_depth(min(input_shape[:2]), first_padding)}."
                        if name == "convnet" else "."))
  if name == "convnet":
    return ConvNet(num_classes=num_classes, depth=depth, width=width, conv_impl=conv_impl,
                   first_padding=first_padding)
  if name == "alexnet":
    return AlexNet(num_classes=num_classes, first_padding=first_padding)
  if name == "vgg11":
    return VGG11(num_classes=num_classes, first_padding=first_padding)
  if name == "resnet18":
    return ResNet18(num_classes=num_classes)
  return ViT(num_classes=num_classes)


def _max_depth(size: int, first_padding: int) -> int:
  return int(size + 2 * first_padding - 2).bit_length() - 1


def init_params(model: nn.Module, key: jax.Array, input_shape: Sequence[int]) -> Any:
  """Fresh parameters of `model` for samples of `input_shape` (jitted: one compiled program per
  model and shape, where an eager `model.init` dispatches, and on first use compiles, every
  operation of the forward pass on its own)."""
  return _init_params(model, key, tuple(input_shape))


@functools.partial(jax.jit, static_argnums=(0, 2))
def _init_params(model: nn.Module, key: jax.Array, input_shape: tuple[int, ...]) -> Any:
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
