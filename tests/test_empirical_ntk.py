"""robust_dd.empirical_ntk: the finite-width NTK of an architecture, as a KIP/KRR kernel."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robust_dd import config as config_lib
from robust_dd import empirical_ntk
from robust_dd import kernels
from robust_dd import methods
from robust_dd import presets
from robust_dd import random_features


def explicit_mean_ntk(e, params, x1, x2):
  """Independent: Σ_p ∂f_a/∂θ_p(x1) ∂f_a/∂θ_p(x2), averaged over the outputs a, in float64."""
  apply_fn = empirical_ntk._architecture(e)[1]  # pylint: disable=protected-access

  def flat_jacobian(x):
    jac = jax.jit(jax.jacobian(apply_fn))(params, x)  # leaves (n, out, *param_shape)
    return np.concatenate([np.asarray(j, np.float64).reshape(j.shape[0], j.shape[1], -1)
                           for j in jax.tree_util.tree_leaves(jac)], axis=-1)

  j1, j2 = flat_jacobian(x1), flat_jacobian(x2)
  return np.einsum("iap,jap->ij", j1, j2) / j1.shape[1]


@pytest.mark.parametrize("implementation", ["jacobian", "ntvp", "structured", "auto"])
@pytest.mark.parametrize("arch,shape,pool", [("fc", (5,), False), ("conv", (6, 6, 1), True)])
def test_kernel_equals_explicit_jacobian_contraction(implementation, arch, shape, pool):
  e = empirical_ntk.EmpiricalNTKKernel(arch, depth=2, width=4, pool=pool, num_outputs=3,
                                       implementation=implementation)
  rng = np.random.default_rng(0)
  x1 = jnp.asarray(rng.normal(size=(3, *shape)), jnp.float32)
  x2 = jnp.asarray(rng.normal(size=(4, *shape)), jnp.float32)
  key = jax.random.key(1)
  got = jax.jit(e.sample(key))(x1, x2)
  expected = explicit_mean_ntk(e, e.init(key, shape), x1, x2)
  np.testing.assert_allclose(got, expected, rtol=2e-4, atol=1e-5 * np.abs(expected).max())


def test_converges_to_the_infinite_width_ntk_as_one_over_sqrt_width():
  """FC-1 in NT's parameterisation: the empirical NTK's error against the exact NTK falls like
  1/√width (64 -> 4096: 8×; required: at least 4× over 8 draws)."""
  x = jnp.asarray(np.random.default_rng(2).normal(size=(6, 8)), jnp.float32)
  exact = np.asarray(kernels.make_kernel_fn("fc", kernel="ntk", depth=1)(x, x))

  def mean_error(width):
    e = empirical_ntk.EmpiricalNTKKernel("fc", depth=1, width=width)
    errs = [np.abs(np.asarray(e.sample(jax.random.key(s))(x, x)) - exact).max() for s in range(8)]
    return np.mean(errs) / np.abs(exact).max()

  narrow, wide = mean_error(64), mean_error(4096)
  assert narrow / wide > 4, (narrow, wide)
  assert wide < 0.05


def test_draws_are_reproducible_and_differ_by_key():
  e = empirical_ntk.EmpiricalNTKKernel("fc", depth=1, width=16)
  x = jnp.asarray(np.random.default_rng(3).normal(size=(4, 3)), jnp.float32)
  a, b = e.sample(jax.random.key(0))(x, x), e.sample(jax.random.key(0))(x, x)
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, e.sample(jax.random.key(1))(x, x))
  assert e.fixed(0) is e.fixed(0)
  np.testing.assert_array_equal(e.fixed(0)(x, x), a)
  np.testing.assert_allclose(a, a.T, rtol=1e-5)  # K(x, x) is symmetric ...
  assert np.linalg.eigvalsh(np.asarray(a, np.float64)).min() > -1e-4  # ... and PSD.


def test_bad_arguments_are_refused():
  with pytest.raises(ValueError, match="implementation"):
    empirical_ntk.EmpiricalNTKKernel(implementation="fast")
  with pytest.raises(ValueError, match="width"):
    empirical_ntk.EmpiricalNTKKernel(width=0)


def test_config_selects_it_for_the_loss_and_a_fixed_draw_for_evaluation():
  c = config_lib.DistillConfig.make(kernel="empirical_ntk", arch="conv", depth=2,
                                    empirical_width=8, empirical_implementation="structured")
  loss_kernel = methods.config_kernel_fn(c)
  assert loss_kernel == empirical_ntk.EmpiricalNTKKernel("conv", depth=2, width=8,
                                                         implementation="structured")
  key = jax.random.key(4)
  x = jnp.asarray(np.random.default_rng(4).normal(size=(2, 6, 6, 1)), jnp.float32)
  np.testing.assert_array_equal(random_features.bind(loss_kernel, key)(x, x),
                                loss_kernel.sample(key)(x, x))
  assert methods.config_eval_kernel_fn(c) is loss_kernel.fixed(0)
  with pytest.raises(ValueError, match="needs a key"):
    random_features.bind(loss_kernel, None)


@pytest.mark.parametrize("bad,match", [(dict(random_features=64), "drop --random_features"),
                                       (dict(empirical_width=0), "--empirical_width")])
def test_config_refuses_bad_combinations(bad, match):
  with pytest.raises(ValueError, match=match):
    presets.validate_config(config_lib.DistillConfig.make(kernel="empirical_ntk", **bad))


def test_kip_gradient_through_the_empirical_ntk_matches_finite_differences():
  """KIP differentiates the KRR loss through K(support, targets) w.r.t. the support images: the
  structured-derivatives kernel's gradient against float64 central differences."""
  e = empirical_ntk.EmpiricalNTKKernel("fc", depth=1, width=8, implementation="structured")
  rng = np.random.default_rng(5)
  with jax.enable_x64(True):  # float64 throughout, so central differences are accurate.
    support = jnp.asarray(rng.normal(size=(2, 3)))
    targets, y_s, y_t = (jnp.asarray(rng.normal(size=s)) for s in ((5, 3), (2, 2), (5, 2)))
    kernel_fn = e.sample(jax.random.key(6))

    @jax.jit  # Compiled once: the differences call it 12 times.
    def loss(s):
      k_ss = kernel_fn(s, s) + 1e-2 * jnp.eye(2)
      pred = kernel_fn(targets, s) @ jnp.linalg.solve(k_ss, y_s)
      return jnp.mean((pred - y_t) ** 2)

    grad = np.asarray(jax.grad(loss)(support))
    eps, numeric = 1e-6, np.zeros(support.shape)
    for idx in np.ndindex(*support.shape):
      d = np.zeros(support.shape)
      d[idx] = eps
      numeric[idx] = (float(loss(support + d)) - float(loss(support - d))) / (2 * eps)
  assert grad.dtype == np.float64
  np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-8)
