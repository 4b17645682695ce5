"""Infinite-width NTK / NNGP kernels of named architectures (neural-tangents `stax`).

`make_architecture` builds the NT (init_fn, apply_fn, kernel_fn) triple; `make_kernel_fn` returns a
plain `k(x1, x2) -> (n1, n2)` array function for one kernel ('ntk' or 'nngp'), pure and jittable;
`kernel_matrix` evaluates it block by block so that memory stays bounded for large matrices.

A kernel function may carry `features(x) -> Φ (n, M)` with k(x1, x2) = Φ(x1) Φ(x2)ᵀ (random
features, `robust_dd.random_features`); `krr.make_predictor` and `kernel_matrix` then compute each
image's features once, so costs are linear in the number of images.
"""

from __future__ import annotations

import collections
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from robust_dd import _nt_compat
from robust_dd import names
from robust_dd import parallel
from robust_dd import precision

nt = _nt_compat.import_neural_tangents()
stax = nt.stax

ARCHITECTURES = names.ARCHITECTURES
KERNELS = names.KERNELS
KernelFn = Callable[[jax.Array, jax.Array], jax.Array]


def fc_layers(*, depth: int, width: int, w_std: float, b_std: float, num_classes: int):
  """FC-depth: depth × [Dense(width) → ReLU] → Dense(num_classes), on flattened inputs."""
  layers = [stax.Flatten()]
  for _ in range(depth):
    layers += [stax.Dense(width, W_std=w_std, b_std=b_std), stax.Relu()]
  layers.append(stax.Dense(num_classes, W_std=w_std, b_std=b_std))
  return stax.serial(*layers)


def conv_layers(*, depth: int, width: int, w_std: float, b_std: float, num_classes: int,
                pool: bool, readout: str = "flatten"):
  """Conv-depth: depth × [Conv 3×3 (SAME) → ReLU [→ AvgPool 2×2]] → Flatten|GAP → Dense.

  Without pooling and with a Flatten readout NT only tracks per-pixel variances (cheap); pooling
  or a global-average readout needs the full spatial covariance, O((HW)²) per pair of images.
  """
  if readout not in ("flatten", "gap"):
    raise ValueError(f"readout must be 'flatten' or 'gap', got {readout!r}.")
  layers = []
  for _ in range(depth):
    layers += [stax.Conv(width, (3, 3), padding="SAME", W_std=w_std, b_std=b_std), stax.Relu()]
    if pool:
      layers.append(stax.AvgPool((2, 2), strides=(2, 2), padding="SAME"))
  layers.append(stax.Flatten() if readout == "flatten" else stax.GlobalAvgPool())
  layers.append(stax.Dense(num_classes, W_std=w_std, b_std=b_std))
  return stax.serial(*layers)


def make_architecture(arch: str, *, num_classes: int = 10, depth: int = 1, width: int = 1024,
                      w_std: float = float(np.sqrt(2.0)), b_std: float = 0.1, pool: bool = False,
                      readout: str = "flatten"):
  """Returns NT's (init_fn, apply_fn, kernel_fn) for a named architecture ('fc' or 'conv')."""
  if depth < 1:
    raise ValueError(f"depth must be >= 1, got {depth}.")
  if arch == "fc":
    return fc_layers(depth=depth, width=width, w_std=w_std, b_std=b_std, num_classes=num_classes)
  if arch == "conv":
    return conv_layers(depth=depth, width=width, w_std=w_std, b_std=b_std,
                       num_classes=num_classes, pool=pool, readout=readout)
  raise ValueError(f"Unknown architecture {arch!r}; choose one of {ARCHITECTURES}.")


@functools.lru_cache(maxsize=None)
def _cached_kernel_fn(arch, kernel, depth, width, w_std, b_std, pool, readout) -> KernelFn:
  _, _, nt_kernel_fn = make_architecture(arch, depth=depth, width=width, w_std=w_std, b_std=b_std,
                                         pool=pool, readout=readout)

  @precision.full_precision
  def kernel_fn(x1: jax.Array, x2: jax.Array) -> jax.Array:
    return nt_kernel_fn(x1, x2, kernel)

  kernel_fn.__name__ = f"{arch}{depth}_{kernel}"
  return kernel_fn


def make_kernel_fn(arch: str = "fc", *, kernel: str = "ntk", depth: int = 1, width: int = 1024,
                   w_std: float = float(np.sqrt(2.0)), b_std: float = 0.1, pool: bool = False,
                   readout: str = "flatten") -> KernelFn:
  """Returns `k(x1, x2)`: the (n1, n2) infinite-width kernel matrix of the architecture.

  The same arguments return the same function object, so it can be a static argument of `jax.jit`
  without recompiling. The kernel does not depend on `width` (kept for finite networks).

  Args:
    arch: 'fc' (flattens its inputs) or 'conv' (inputs NHWC).
    kernel: 'ntk' or 'nngp'.
    depth, width, w_std, b_std: hidden layers, width, weight and bias standard deviations.
    pool: 'conv' only: AvgPool 2×2 after each block.
    readout: 'conv' only: 'flatten' or 'gap' (global average pooling).
  """
  if kernel not in KERNELS:
    raise ValueError(f"Unknown kernel {kernel!r}; choose one of {KERNELS}.")
  if arch not in ARCHITECTURES:
    raise ValueError(f"Unknown architecture {arch!r}; choose one of {ARCHITECTURES}.")
  return _cached_kernel_fn(arch, kernel, int(depth), int(width), float(w_std), float(b_std),
                           bool(pool), readout)


def check_inputs(arch: str, x: np.ndarray) -> None:
  """Raises ValueError if data of shape x.shape cannot go through `arch`."""
  if arch == "conv" and x.ndim != 4:
    raise ValueError(f"arch='conv' needs images (n, H, W, C); this dataset has samples of shape "
                     f"{x.shape[1:]}. Use --arch=fc.")


@functools.partial(jax.jit, static_argnums=0)
def _row_blocks(kernel_fn, rows, x2):
  # (d, b1, ...) row blocks against one block of columns, one row block per device when `rows`
  # is split over a mesh (`parallel.call_split`: XLA partitions the vmap).
  return jax.vmap(kernel_fn, in_axes=(0, None))(rows, x2)


@functools.partial(jax.jit, static_argnums=0)
def _feature_block(kernel_fn, x):
  return kernel_fn.features(x)


_FEATURE_CACHE: collections.deque = collections.deque(maxlen=8)


def feature_matrix(kernel_fn: KernelFn, x, *, batch_size: int = 256) -> np.ndarray:
  """The features Φ (n, M) of a kernel function that has them, `batch_size` rows at a time
  (one compilation), as a host NumPy array.

  The features of the last few NumPy arrays are kept (keyed by the array object itself, which the
  cache holds, and the kernel function), so evaluating many support sets on one test set (random
  baselines, evaluation during training) computes the test set's features once.
  """
  for cached_fn, cached_x, phi in _FEATURE_CACHE:
    if cached_fn is kernel_fn and cached_x is x:
      return phi
  xs = np.asarray(x)
  b = min(batch_size, len(xs))
  phi = np.concatenate([np.asarray(_feature_block(kernel_fn, _pad_to(xs[i:i + b], b)))
                        [:min(b, len(xs) - i)] for i in range(0, len(xs), b)])
  if isinstance(x, np.ndarray) and not x.flags.writeable:
    _FEATURE_CACHE.append((kernel_fn, x, phi))
  return phi


def _pad_to(x: np.ndarray, n: int) -> np.ndarray:
  if len(x) == n:
    return x
  return np.concatenate([x, np.repeat(x[-1:], n - len(x), axis=0)])


def kernel_matrix(kernel_fn: KernelFn, x1, x2=None, *, batch_size: int = 256,
                  mesh=None) -> np.ndarray:
  """Computes k(x1, x2) in (batch_size × batch_size) blocks, returning a host NumPy array.

  Memory is bounded by one block (blocks are padded to a fixed shape, so one compilation). Use it
  for evaluation-sized matrices; inside a jitted training step call `kernel_fn` directly. A kernel
  with `features` costs one feature pass per image (`feature_matrix`) and one matrix product. On
  a `mesh` of d > 1 devices (`parallel.make_mesh`) d row blocks are computed at once, one per
  device, each against a whole `batch_size` block of columns.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be positive, got {batch_size}.")
  if hasattr(kernel_fn, "features"):
    phi1 = feature_matrix(kernel_fn, x1, batch_size=batch_size)
    phi2 = phi1 if x2 is None else feature_matrix(kernel_fn, x2, batch_size=batch_size)
    return (phi1.astype(np.float64) @ phi2.T.astype(np.float64)).astype(np.float32)
  x1 = np.asarray(x1)
  x2 = x1 if x2 is None else np.asarray(x2)
  d = parallel.size(mesh)
  b1, b2 = min(batch_size, len(x1)), min(batch_size, len(x2))
  step = d * b1  # d row blocks at a time, one per device.
  blocks = functools.partial(_row_blocks, kernel_fn)
  out = np.empty((len(x1), len(x2)), np.float32)
  for i in range(0, len(x1), step):
    rows = _pad_to(x1[i:i + step], step).reshape(d, b1, *x1.shape[1:])
    for j in range(0, len(x2), b2):
      cols = _pad_to(x2[j:j + b2], b2)
      block = np.asarray(parallel.call_split(blocks, (rows,), mesh, shared=(cols,)))
      out[i:i + step, j:j + b2] = block.reshape(step, b2)[:min(step, len(x1) - i),
                                                          :min(b2, len(x2) - j)]
  return out

