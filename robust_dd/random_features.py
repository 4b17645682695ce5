"""Random-feature estimates of an architecture's NNGP kernel (RFAD, Loo et al. 2022).

The NNGP kernel of an architecture is the covariance of the outputs of its randomly initialised
networks. Each output unit of a finite network drawn in NT's parameterisation is one sample of a
Gaussian process with (approximately, exactly at infinite width) that covariance, so the outputs
of M/width networks with `width` output units each give features Φ (n, M) with

    K(x₁, x₂) ≈ Φ(x₁) Φ(x₂)ᵀ / M.

The last (readout) layer need not be sampled: given a network's last hidden layer h, its outputs
have covariance w_std² ⟨h, h'⟩ / fan_in + b_std² exactly, so by default (`integrate_readout`) each
network contributes h itself. That is the same kernel in expectation with the readout's sampling
noise removed, and many more features (512 for ConvNet-3 with pooling at 28×28, width 32) from
the same forward passes; only the hidden layers are random.

The estimate is unbiased for one hidden layer (the output covariance given the first layer averages
to the infinite-width kernel); deeper networks add an O(1/width) finite-width bias. Its standard
deviation falls as 1/√M. Costs are linear in the number of images, and no (n × n) matrix of real
images is ever formed: KRR needs Φ of the support set and of the targets.

`RandomFeatureKernel` is a hashable description (usable as a static jit argument). `sample(key)`
returns a plain `k(x1, x2)` kernel function of one draw, with `features(x)` attached, so it drops
in wherever an exact kernel function goes (KIP, KRR evaluation, leverage scores). KIP draws a new
kernel every step from the step's key; evaluation uses one fixed, larger draw (`fixed`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Union

import jax
import jax.numpy as jnp

from robust_dd import convolutions
from robust_dd import kernels
from robust_dd import parallel
from robust_dd import precision


@dataclasses.dataclass(frozen=True)
class RandomFeatureKernel:
  """The random-feature NNGP of `kernels.make_architecture(arch, ...)`.

  Attributes:
    arch, depth, w_std, b_std, pool, readout: the architecture (as for `make_kernel_fn`).
    num_features: M; a multiple of `width`. The kernel averages M/width networks.
    width: hidden channels (conv) / units (fc) of each network, and its number of output units.
    batch_size: images pushed through the networks at once (bounds memory for large n).
    integrate_readout: True (default): the readout layer is integrated out exactly and each
      network contributes its last hidden layer (module docstring); False: Φ is the M sampled
      outputs (RFAD's construction).
  """
  arch: str = "conv"
  num_features: int = 1024
  width: int = 32
  depth: int = 3
  w_std: float = 2.0 ** 0.5
  b_std: float = 0.1
  pool: bool = True
  readout: str = "flatten"
  batch_size: int = 500
  integrate_readout: bool = True

  def __post_init__(self):
    if self.width < 1 or self.num_features < self.width or self.num_features % self.width:
      raise ValueError(f"random_features={self.num_features} must be a positive multiple of the "
                       f"network width {self.width} (M/width networks of width outputs each).")

  @property
  def num_networks(self) -> int:
    return self.num_features // self.width

  def apply(self, params, x: jax.Array) -> jax.Array:
    """The network's outputs (n, width): NT's `apply_fn` of the architecture, computed with
    convolutions as one matmul each (`convolutions.conv_patches`) and pooling as a
    reshape-mean, whose gradients XLA:CPU runs several times faster than `lax.conv` and
    `reduce_window` (equal outputs: tests/test_random_features.py)."""
    w, b = list(params)[-1]
    h = self.last_hidden(params, x)
    return h @ (self.w_std / jnp.sqrt(jnp.asarray(w.shape[0], x.dtype)) * w) + self.b_std * b

  def last_hidden(self, params, x: jax.Array) -> jax.Array:
    """The network's last hidden layer, flattened (or averaged over space): (n, fan_in) of the
    readout."""
    layers = list(params)
    ntk = lambda w, fan_in: self.w_std / jnp.sqrt(jnp.asarray(fan_in, x.dtype)) * w
    if self.arch == "fc":
      h = x.reshape(x.shape[0], -1)
      for w, b in layers[1:-1:2]:  # Flatten, then (Dense, Relu) pairs.
        h = jax.nn.relu(h @ ntk(w, w.shape[0]) + self.b_std * b)
    else:
      h = x
      per_block = 3 if self.pool else 2
      for i in range(self.depth):
        w, b = layers[per_block * i]
        h = jax.nn.relu(convolutions.conv_patches(h, ntk(w, w.shape[0] * w.shape[1] * w.shape[2]))
                        + self.b_std * b)
        if self.pool:
          h = _avg_pool_2x2_same(h)
      h = h.reshape(h.shape[0], -1) if self.readout == "flatten" else h.mean(axis=(1, 2))
    return h

  def init_networks(self, key: jax.Array, input_shape) -> Any:
    """Parameters of the M/width networks, stacked on a leading axis; network i from
    `fold_in(key, i)`."""
    init_fn = _architecture(self)[0]
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(self.num_networks))
    return jax.vmap(lambda k: init_fn(k, (-1, *input_shape))[1])(keys)

  @precision.full_precision
  def features(self, key: jax.Array, x: jax.Array) -> jax.Array:
    """Φ(x): (n, D) features of one draw (the key), so that K ≈ Φ Φᵀ. Jittable.

    D = M sampled outputs, scaled by 1/√M; or, with `integrate_readout`, the N = M/width networks'
    last hidden layers scaled by w_std/√(fan_in·N), plus one constant column b_std (D = N·fan_in
    + 1)."""
    params = self.init_networks(key, x.shape[1:])
    one_network = self.last_hidden if self.integrate_readout else self.apply

    def block(xb):  # (b, ...) -> (b, N·d): networks one after another (bounded memory).
      out = jax.lax.map(lambda p: one_network(p, xb), params)  # (N, b, d)
      return jnp.moveaxis(out, 0, 1).reshape(xb.shape[0], -1)

    phi = parallel.map_batches(block, x, batch_size=self.batch_size)
    if not self.integrate_readout:
      return phi / jnp.sqrt(jnp.asarray(self.num_features, phi.dtype))
    fan_in = phi.shape[1] // self.num_networks
    phi = phi * (self.w_std / jnp.sqrt(jnp.asarray(fan_in * self.num_networks, phi.dtype)))
    return jnp.concatenate([phi, jnp.full((len(phi), 1), self.b_std, phi.dtype)], axis=1)

  def sample(self, key: jax.Array) -> kernels.KernelFn:
    """The kernel function `k(x1, x2) = Φ(x1) Φ(x2)ᵀ` of the draw `key`, with `.features(x)`."""
    features = functools.partial(self.features, key)

    @precision.full_precision
    def kernel_fn(x1: jax.Array, x2: jax.Array) -> jax.Array:
      return features(x1) @ features(x2).T

    kernel_fn.features = features
    kernel_fn.__name__ = f"rf{self.num_features}_{self.arch}{self.depth}_nngp"
    return kernel_fn

  def fixed(self, seed: int = 0) -> kernels.KernelFn:
    """`sample(key(seed))`, the same function object for the same seed (so jitted evaluation
    compiles once): the fixed draw of evaluation."""
    return _fixed(self, int(seed))


def _avg_pool_2x2_same(h: jax.Array) -> jax.Array:
  """NT's AvgPool((2, 2), strides=(2, 2), padding='SAME'): zero padding at the end of odd sides,
  counted in the mean."""
  n, height, width, c = h.shape
  h = jnp.pad(h, ((0, 0), (0, height % 2), (0, width % 2), (0, 0)))
  return h.reshape(n, h.shape[1] // 2, 2, h.shape[2] // 2, 2, c).mean(axis=(2, 4))


@functools.lru_cache(maxsize=None)
def _architecture(rf: RandomFeatureKernel):
  return kernels.make_architecture(rf.arch, num_classes=rf.width, depth=rf.depth, width=rf.width,
                                   w_std=rf.w_std, b_std=rf.b_std, pool=rf.pool,
                                   readout=rf.readout)


@functools.lru_cache(maxsize=None)
def _fixed(rf: RandomFeatureKernel, seed: int) -> kernels.KernelFn:
  return rf.sample(jax.random.key(seed))


Kernel = Union[kernels.KernelFn, RandomFeatureKernel]


def bind(kernel: Kernel, key) -> kernels.KernelFn:
  """The kernel function of one step: `kernel.sample(key)` for a sampled kernel (a
  `RandomFeatureKernel` or an `empirical_ntk.EmpiricalNTKKernel`: a new draw per key), `kernel`
  itself for an exact kernel function."""
  if hasattr(kernel, "sample"):
    if key is None:
      raise ValueError(f"A sampled kernel ({type(kernel).__name__}) needs a key (one draw per "
                       "step).")
    return kernel.sample(key)
  return kernel
