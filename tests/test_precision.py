"""robust_dd.precision: wrapped functions trace their matmuls at float32 precision."""

import jax
import jax.numpy as jnp
import numpy as np

from robust_dd import precision


def test_full_precision_sets_the_matmul_precision_while_tracing_only():
  seen = []

  @precision.full_precision
  def gram(x):
    seen.append(jax.config.jax_default_matmul_precision)
    return x @ x.T

  x = jnp.asarray(np.random.default_rng(0).normal(size=(5, 3)), jnp.float32)
  np.testing.assert_allclose(jax.jit(gram)(x), np.asarray(x) @ np.asarray(x).T, rtol=1e-6)
  assert seen == ["float32"]
  assert jax.config.jax_default_matmul_precision != "float32"  # Restored afterwards.
  assert gram.__name__ == "gram"
