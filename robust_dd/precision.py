"""Full float32 matmuls where accuracy matters: Gram matrices, distances, Cholesky solves.

TPUs (and GPUs with TF32) run float32 matmuls in reduced precision by default; a bf16 pass has a
relative error near 1e-3, which swamps KRR's 1e-6 ridge. Functions wrapped with `full_precision`
trace their matmuls under `jax.default_matmul_precision("float32")`. On CPU this changes nothing.
"""

from __future__ import annotations

import functools
from typing import Callable, TypeVar

import jax

F = TypeVar("F", bound=Callable)


def full_precision(fn: F) -> F:
  """`fn` with its matmuls traced at full float32 precision."""

  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    with jax.default_matmul_precision("float32"):
      return fn(*args, **kwargs)

  return wrapped  # type: ignore[return-value]
