"""robust_dd.random_features: the random-feature NNGP against NT's exact kernel."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robust_dd import kernels
from robust_dd import krr
from robust_dd import random_features as rf_lib
from robust_dd import select

X = jnp.asarray(np.random.default_rng(0).normal(size=(6, 8, 8, 1)), jnp.float32)


@pytest.mark.parametrize("arch, pool, readout, shape", [
    ("conv", True, "flatten", (7, 9, 2)),  # Odd sides: SAME pooling pads.
    ("conv", False, "gap", (6, 6, 1)),
    ("fc", False, "flatten", (5, 5, 1))])
def test_apply_equals_neural_tangents_apply_fn(arch, pool, readout, shape):
  rf = rf_lib.RandomFeatureKernel(arch, num_features=64, width=32, depth=2, pool=pool,
                                  readout=readout)
  x = jnp.asarray(np.random.default_rng(1).random((3, *shape)), jnp.float32)
  params = jax.tree_util.tree_map(lambda a: a[1], rf.init_networks(jax.random.key(0), shape))
  _, nt_apply, _ = kernels.make_architecture(arch, num_classes=32, depth=2, width=32,
                                             pool=pool, readout=readout)
  np.testing.assert_allclose(rf.apply(params, x), nt_apply(params, x), rtol=1e-5, atol=1e-5)


def _relative_errors(rf, exact, draws):
  """‖K̂ − K‖_F / ‖K‖_F of `draws` independent draws (keys 0..draws-1)."""
  kernel = jax.jit(jax.vmap(lambda k: rf.sample(k)(X, X)))
  k = np.asarray(kernel(jax.vmap(jax.random.key)(jnp.arange(draws))))
  return np.linalg.norm(k - exact, axis=(1, 2)) / np.linalg.norm(exact)


@pytest.mark.parametrize("integrate_readout", [True, False])
def test_converges_to_exact_nngp_at_rate_one_over_sqrt_m(integrate_readout):
  """One conv block with pooling: the estimate is unbiased, so its mean squared error is c/M: 16x
  the features, a quarter of the root-mean-square error (over 24 draws)."""
  exact = np.asarray(kernels.make_kernel_fn("conv", kernel="nngp", depth=1, pool=True)(X, X))
  rms = {}
  for m in (64, 1024):
    rf = rf_lib.RandomFeatureKernel(num_features=m, width=32, depth=1, pool=True,
                                    integrate_readout=integrate_readout)
    rms[m] = np.sqrt(np.mean(_relative_errors(rf, exact, 24) ** 2))
  ratio = rms[64] / rms[1024]
  assert 3.0 < ratio < 5.3, (rms, ratio)  # 4 expected.
  assert rms[1024] < 0.06


def test_integrated_readout_is_the_readout_covariance_of_the_same_networks():
  """Φ Φᵀ = mean over networks of w_std² ⟨h, h'⟩ / fan_in + b_std², h the last hidden layer
  (computed here network by network in NumPy), and it has less error than sampling the readout."""
  rf = rf_lib.RandomFeatureKernel(num_features=64, width=32, depth=2, pool=True, b_std=0.3)
  key = jax.random.key(4)
  params = rf.init_networks(key, X.shape[1:])
  expected = 0.0
  for i in range(rf.num_networks):
    h = np.asarray(rf.last_hidden(jax.tree_util.tree_map(lambda a: a[i], params), X), np.float64)
    expected = expected + (rf.w_std ** 2 * h @ h.T / h.shape[1] + rf.b_std ** 2) / rf.num_networks
  phi = rf.sample(key).features(X)
  assert phi.shape == (len(X), rf.num_networks * 2 * 2 * 32 + 1)  # 8x8 -> 4 -> 2; 32 channels.
  np.testing.assert_allclose(phi @ phi.T, expected, rtol=1e-4, atol=1e-6)
  exact = np.asarray(kernels.make_kernel_fn("conv", kernel="nngp", depth=1, pool=True)(X, X))
  sampled, integrated = (
      np.sqrt(np.mean(_relative_errors(
          rf_lib.RandomFeatureKernel(num_features=64, width=32, depth=1, pool=True,
                                     integrate_readout=flag), exact, 24) ** 2))
      for flag in (False, True))
  assert integrated < 0.5 * sampled, (integrated, sampled)


def test_convnet3_with_pooling_approaches_exact_nngp():
  """ConvNet-3 with pooling (8x8 -> 4 -> 2 -> 1): finite width adds an O(1/width) bias, so the
  estimate gets close but not unbiased."""
  exact = np.asarray(kernels.make_kernel_fn("conv", kernel="nngp", depth=3, pool=True)(X, X))
  rf = rf_lib.RandomFeatureKernel(num_features=4096, width=64, depth=3, pool=True)
  assert _relative_errors(rf, exact, 1)[0] < 0.08


def test_draws_differ_by_key_and_fixed_draw_is_one_object():
  rf = rf_lib.RandomFeatureKernel(num_features=64, width=32, depth=1)
  a, b = rf.sample(jax.random.key(0))(X, X), rf.sample(jax.random.key(1))(X, X)
  assert not np.allclose(a, b)
  np.testing.assert_array_equal(a, rf.sample(jax.random.key(0))(X, X))
  assert rf.fixed(3) is rf.fixed(3) and rf.fixed(3) is not rf.fixed(4)
  np.testing.assert_allclose(rf.fixed(0)(X, X), a, rtol=1e-6)


def test_features_are_blockwise_and_give_the_kernel():
  rf = rf_lib.RandomFeatureKernel(num_features=64, width=32, depth=1, batch_size=4)
  k = rf.fixed(0)
  phi = kernels.feature_matrix(k, X, batch_size=4)  # 6 rows: one padded block.
  assert phi.shape == (6, 2 * 4 * 4 * 32 + 1)  # Two networks' last hidden layers, one bias.
  np.testing.assert_allclose(phi, k.features(X), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(kernels.kernel_matrix(k, X, batch_size=4), phi @ phi.T, rtol=1e-4,
                             atol=1e-5)


def test_kip_loss_with_features_equals_loss_with_the_kernel_matrix():
  k = rf_lib.RandomFeatureKernel(num_features=64, width=32, depth=1).fixed(0)
  ys = jax.nn.one_hot(jnp.arange(3) % 2, 2)
  yt = jax.nn.one_hot(jnp.arange(3, 6) % 2, 2)
  gram = np.asarray(k.features(X)) @ np.asarray(k.features(X)).T
  direct = krr.krr_loss(jnp.asarray(gram[:3, :3]), jnp.asarray(gram[3:, :3]), ys, yt)
  np.testing.assert_allclose(krr.kip_loss(X[:3], ys, X[3:], yt, kernel_fn=k), direct, rtol=1e-4)
  per_sample = krr.krr_sample_losses(X[:3], ys, X[3:], yt, kernel_fn=k, batch_size=2)
  np.testing.assert_allclose(per_sample.mean(), direct, rtol=1e-4)


def test_leverage_sampling_uses_feature_leverage_without_the_n_by_n_kernel():
  """With features, sensitivity_krr scores are τ_i = φ_iᵀ(ΦᵀΦ + λI)⁻¹φ_i, which equal the exact
  ridge leverage of K = ΦΦᵀ."""
  from robust_dd import sensitivity
  k = rf_lib.RandomFeatureKernel(num_features=32, width=32, depth=1).fixed(0)
  phi = np.asarray(k.features(X))
  lam = 1e-2 * np.trace(phi @ phi.T) / len(phi)
  exact = sensitivity.ridge_leverage_scores(jnp.asarray(phi @ phi.T), ridge=lam)
  np.testing.assert_allclose(sensitivity.feature_leverage_scores(jnp.asarray(phi), ridge=lam),
                             exact, rtol=1e-3, atol=1e-4)
  idx, w = select.leverage_sample(jax.random.key(0), X, budget=6, kernel_fn=k, ridge=1e-2)
  assert sorted(np.asarray(idx).tolist()) == list(range(6))
  np.testing.assert_allclose(w, 1.0, rtol=1e-5)


def test_bad_sizes_and_missing_key_are_clear_errors():
  with pytest.raises(ValueError, match="multiple of the network width"):
    rf_lib.RandomFeatureKernel(num_features=100, width=32)
  with pytest.raises(ValueError, match="needs a key"):
    rf_lib.bind(rf_lib.RandomFeatureKernel(num_features=64, width=32), None)
  exact = kernels.make_kernel_fn("fc")
  assert rf_lib.bind(exact, None) is exact


def test_features_of_a_read_only_test_set_are_computed_once():
  k = rf_lib.RandomFeatureKernel(num_features=64, width=32, depth=1).fixed(5)
  x = np.asarray(X).copy()
  x.flags.writeable = False
  first = kernels.feature_matrix(k, x)
  assert kernels.feature_matrix(k, x) is first  # Cached: the same array object.
  writable = np.asarray(X).copy()
  assert kernels.feature_matrix(k, writable) is not kernels.feature_matrix(k, writable)
  np.testing.assert_allclose(kernels.feature_matrix(k, writable), first, rtol=1e-6)
