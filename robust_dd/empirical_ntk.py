"""Empirical (finite-width) NTKs of an architecture at initialisation, as kernels for KIP and KRR.

The empirical NTK of a network f(θ, ·) at parameters θ is

    K(x₁, x₂) = Σ_p ∂f(θ, x₁)/∂θ_p · ∂f(θ, x₂)/∂θ_p,

averaged over the network's outputs (NT's `trace_axes=(-1,)`). For the architectures of
`robust_dd.kernels` in NT's parameterisation it converges to the exact infinite-width NTK as the
width grows (tests/test_empirical_ntk.py checks that), and at finite width it is the kernel a
finite network actually trains with. neural-tangents computes it three ways, all exact:

- 'jacobian' (NT's implementation 1): both Jacobians, then their contraction;
- 'ntvp' (2): NTK-vector products, a vmapped VJP of JVPs;
- 'structured' (3): NT's structured derivatives, which contract per-primitive Jacobians using
  their structure (a dense layer's weight Jacobian is an outer product, a convolution's is
  shared across positions); on current JAX through `robust_dd._nt_compat`;
- 'auto' (0): NT picks one of the three by XLA's FLOP estimate at compile time.

`EmpiricalNTKKernel` is a hashable description, like `random_features.RandomFeatureKernel`:
`sample(key)` returns a plain jittable `k(x1, x2) -> (n1, n2)` for the network drawn from `key`
(KIP draws a new network every step from the step's key); `fixed(seed)` is the one draw that KRR
evaluation uses.
"""

from __future__ import annotations

import dataclasses
import functools

import jax

from robust_dd import _nt_compat
from robust_dd import kernels
from robust_dd import precision

IMPLEMENTATIONS = {"auto": 0, "jacobian": 1, "ntvp": 2, "structured": 3}


@dataclasses.dataclass(frozen=True)
class EmpiricalNTKKernel:
  """The empirical NTK of `kernels.make_architecture(arch, ...)` at a random initialisation.

  Attributes:
    arch, depth, w_std, b_std, pool, readout: the architecture (as for `make_kernel_fn`).
    width: hidden units (fc) / channels (conv) of the finite network.
    num_outputs: the network's outputs; the kernel is their average (each output's NTK has the
      same expectation, so more outputs lower the variance, at a cost for 'jacobian'/'ntvp').
    implementation: 'structured' (default), 'jacobian', 'ntvp' or 'auto' (module docstring).
  """
  arch: str = "conv"
  depth: int = 3
  width: int = 128
  w_std: float = 2.0 ** 0.5
  b_std: float = 0.1
  pool: bool = False
  readout: str = "flatten"
  num_outputs: int = 1
  implementation: str = "structured"

  def __post_init__(self):
    if self.implementation not in IMPLEMENTATIONS:
      raise ValueError(f"Unknown empirical NTK implementation {self.implementation!r}; choose one "
                       f"of {tuple(IMPLEMENTATIONS)}.")
    if self.width < 1 or self.num_outputs < 1:
      raise ValueError(f"width ({self.width}) and num_outputs ({self.num_outputs}) must be >= 1.")

  def init(self, key: jax.Array, input_shape) -> list:
    """The network's parameters drawn from `key` (NT's `init_fn`), for inputs of `input_shape`
    (one example's shape)."""
    return _architecture(self)[0](key, (-1, *input_shape))[1]

  def kernel(self, params, x1: jax.Array, x2: jax.Array) -> jax.Array:
    """(n1, n2) empirical NTK of the network with `params`. Jittable."""
    return _ntk_fn(self)(x1, x2, params)

  def sample(self, key: jax.Array) -> kernels.KernelFn:
    """`k(x1, x2)`: the empirical NTK of the network drawn from `key`."""

    @precision.full_precision
    def kernel_fn(x1: jax.Array, x2: jax.Array) -> jax.Array:
      return self.kernel(self.init(key, x1.shape[1:]), x1, x2)

    kernel_fn.__name__ = f"entk_{self.arch}{self.depth}_w{self.width}_{self.implementation}"
    return kernel_fn

  def fixed(self, seed: int = 0) -> kernels.KernelFn:
    """`sample(key(seed))`, the same function object for the same seed (so jitted evaluation
    compiles once): the fixed draw of evaluation."""
    return _fixed(self, int(seed))


@functools.lru_cache(maxsize=None)
def _architecture(e: EmpiricalNTKKernel):
  return kernels.make_architecture(e.arch, num_classes=e.num_outputs, depth=e.depth,
                                   width=e.width, w_std=e.w_std, b_std=e.b_std, pool=e.pool,
                                   readout=e.readout)


@functools.lru_cache(maxsize=None)
def _ntk_fn(e: EmpiricalNTKKernel):
  nt = _nt_compat.import_neural_tangents()
  return nt.empirical_ntk_fn(_architecture(e)[1], trace_axes=(-1,), vmap_axes=0,
                             implementation=IMPLEMENTATIONS[e.implementation])


@functools.lru_cache(maxsize=None)
def _fixed(e: EmpiricalNTKKernel, seed: int) -> kernels.KernelFn:
  return e.sample(jax.random.key(seed))
