"""Test helper: what a function's jaxpr computes, for tests of how much work a form takes."""

import jax
import numpy as np


def multiplications(fn, *args) -> int:
  """Multiplications of the batched matmuls (dot_general) in `fn(*args)`'s jaxpr."""
  count = 0
  for eqn in jax.make_jaxpr(fn)(*args).jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      (contracting, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      count += int(np.prod(eqn.outvars[0].aval.shape)) * int(np.prod([lhs[i] for i in contracting]))
  return count
