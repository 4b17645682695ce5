"""robust_dd.kernels: golden conv kernels, blockwise evaluation, architecture errors."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robust_dd import kernels

GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "conv_ntk.npz")
# Must match scripts/golden_conv_ntk.py CASES.
CASES = {"conv2_flatten": dict(depth=2, pool=False, readout="flatten"),
         "conv2_pool_flatten": dict(depth=2, pool=True, readout="flatten"),
         "conv1_gap": dict(depth=1, pool=False, readout="gap")}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("kernel", ["ntk", "nngp"])
def test_conv_kernels_match_golden_values_from_old_stack(name, kernel):
  golden = np.load(GOLDEN)
  assert str(golden["jax_version"]) == "0.4.38"
  kernel_fn = kernels.make_kernel_fn("conv", kernel=kernel, **CASES[name])
  got = jax.jit(kernel_fn)(jnp.asarray(golden["x1"]), jnp.asarray(golden["x2"]))
  np.testing.assert_allclose(got, golden[f"{name}_{kernel}"], rtol=2e-5, atol=1e-6)


def test_kernel_matrix_in_ragged_blocks_equals_direct():
  rng = np.random.default_rng(0)
  x1 = rng.normal(size=(11, 4, 4, 1)).astype(np.float32)
  x2 = rng.normal(size=(7, 4, 4, 1)).astype(np.float32)
  kernel_fn = kernels.make_kernel_fn("fc", kernel="ntk", depth=2)
  direct = np.asarray(kernel_fn(jnp.asarray(x1), jnp.asarray(x2)))
  np.testing.assert_allclose(kernels.kernel_matrix(kernel_fn, x1, x2, batch_size=4), direct,
                             rtol=1e-5, atol=1e-6)
  sym = kernels.kernel_matrix(kernel_fn, x1, batch_size=3)
  np.testing.assert_allclose(sym, sym.T, rtol=1e-5, atol=1e-6)


def test_fc_flattens_images():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(3, 2, 3, 2)).astype(np.float32)
  kernel_fn = kernels.make_kernel_fn("fc", kernel="nngp")
  np.testing.assert_allclose(kernel_fn(jnp.asarray(x), jnp.asarray(x)),
                             kernel_fn(jnp.asarray(x.reshape(3, -1)),
                                       jnp.asarray(x.reshape(3, -1))), rtol=1e-6)


def test_same_arguments_give_same_function_object():
  assert kernels.make_kernel_fn("fc", depth=2) is kernels.make_kernel_fn("fc", depth=2)
  assert kernels.make_kernel_fn("fc", depth=2) is not kernels.make_kernel_fn("fc", depth=3)


def test_bad_arguments_raise_value_errors():
  with pytest.raises(ValueError, match="Unknown architecture"):
    kernels.make_kernel_fn("resnet")
  with pytest.raises(ValueError, match="Unknown kernel"):
    kernels.make_kernel_fn("fc", kernel="rbf")
  with pytest.raises(ValueError, match="--arch=fc"):
    kernels.check_inputs("conv", np.zeros((2, 40)))
  with pytest.raises(ValueError, match="depth"):
    kernels.make_architecture("fc", depth=0)
