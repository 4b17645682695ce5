"""robust_dd.krr against NumPy solves, neural-tangents' predictor and numerical gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from robust_dd import _nt_compat
from robust_dd import kernels
from robust_dd import krr

nt = _nt_compat.import_neural_tangents()


def _spd(rng, m):
  a = rng.normal(size=(m, m))
  return a @ a.T / m + 0.1 * np.eye(m)


def test_krr_predict_equals_numpy_solve_with_relative_ridge():
  rng = np.random.default_rng(0)
  k_ss, k_ts, y_s = _spd(rng, 6), rng.normal(size=(4, 6)), rng.normal(size=(6, 3))
  got = krr.krr_predict(jnp.asarray(k_ss), jnp.asarray(k_ts), jnp.asarray(y_s), diag_reg=0.3)
  ridge = k_ss + 0.3 * np.trace(k_ss) / 6 * np.eye(6)
  np.testing.assert_allclose(got, k_ts @ np.linalg.solve(ridge, y_s), rtol=1e-4, atol=1e-5)


def test_krr_predict_equals_nt_gp_inference():
  rng = np.random.default_rng(1)
  k_ss, k_ts, y_s = _spd(rng, 8), rng.normal(size=(5, 8)), rng.normal(size=(8, 2))
  ours = krr.krr_predict(jnp.asarray(k_ss), jnp.asarray(k_ts), jnp.asarray(y_s), diag_reg=1e-2)
  theirs = nt.predict.gp_inference(k_ss, y_s, diag_reg=1e-2)("ntk", k_ts)
  np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)


def test_krr_loss_closed_form():
  rng = np.random.default_rng(2)
  k_ss, k_ts = _spd(rng, 5), rng.normal(size=(7, 5))
  y_s, y_t = rng.normal(size=(5, 3)), rng.normal(size=(7, 3))
  ridge = k_ss + 1e-3 * np.trace(k_ss) / 5 * np.eye(5)
  residual = y_t - k_ts @ np.linalg.solve(ridge, y_s)
  expected = 0.5 * np.mean(np.sum(residual ** 2, axis=1))
  args = [jnp.asarray(a, jnp.float32) for a in (k_ss, k_ts, y_s, y_t)]
  np.testing.assert_allclose(krr.krr_loss(*args, diag_reg=1e-3), expected, rtol=1e-4)
  np.testing.assert_allclose(krr.krr_loss_jit(*args, diag_reg=1e-3), expected, rtol=1e-4)


def test_platt_loss_is_the_cross_entropy_of_the_scaled_krr_predictions():
  rng = np.random.default_rng(12)
  k_ss, k_ts = _spd(rng, 5), rng.normal(size=(7, 5))
  y_s, classes = rng.normal(size=(5, 3)), rng.integers(0, 3, size=7)
  y_t = np.eye(3)[classes] - 1 / 3
  weights = rng.random(7)
  logits = np.exp(0.7) * (k_ts @ np.linalg.solve(k_ss + 1e-3 * np.trace(k_ss) / 5 * np.eye(5),
                                                 y_s))
  log_softmax = logits - np.log(np.sum(np.exp(logits), axis=1, keepdims=True))
  per_target = -log_softmax[np.arange(7), classes]
  args = [jnp.asarray(a, jnp.float32) for a in (k_ss, k_ts, y_s, y_t)]
  kw = dict(diag_reg=1e-3, loss="platt", log_scale=jnp.float32(0.7))
  np.testing.assert_allclose(krr.krr_loss(*args, **kw), per_target.mean(), rtol=1e-4)
  np.testing.assert_allclose(krr.krr_loss(*args, **kw, target_weights=jnp.asarray(weights)),
                             np.sum(weights * per_target) / np.sum(weights), rtol=1e-4)
  with pytest.raises(ValueError, match="mse"):
    krr.krr_loss(*args, diag_reg=1e-3, loss="hinge")


def test_platt_kip_loss_gradients_match_finite_differences():
  jax.config.update("jax_enable_x64", True)
  try:
    rng = np.random.default_rng(13)
    xs, ys = jnp.asarray(rng.normal(size=(3, 5))), jnp.asarray(rng.normal(size=(3, 2)))
    xt = jnp.asarray(rng.normal(size=(4, 5)))
    yt = jnp.asarray(np.eye(2)[[0, 1, 1, 0]] - 0.5)
    kernel_fn = lambda a, b: a @ b.T + 1.0
    loss = jax.jit(lambda a, b, s: krr.kip_loss(a, b, xt, yt, kernel_fn=kernel_fn,
                                                diag_reg=1e-2, loss="platt", log_scale=s))
    check_grads(loss, (xs, ys, jnp.asarray(0.3)), order=1, modes=["rev"], atol=1e-5, rtol=1e-5)
  finally:
    jax.config.update("jax_enable_x64", False)


def test_kip_loss_is_zero_when_targets_are_the_support():
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.normal(size=(6, 10)), jnp.float32)
  y = jnp.asarray(rng.normal(size=(6, 3)), jnp.float32)
  kernel_fn = kernels.make_kernel_fn("fc", kernel="ntk")
  assert float(krr.kip_loss(x, y, x, y, kernel_fn=kernel_fn, diag_reg=1e-7)) < 1e-5
  assert float(krr.kip_loss(x, y, x, -y, kernel_fn=kernel_fn, diag_reg=1e-7)) > 1.0


@pytest.mark.slow
def test_kip_loss_gradients_match_finite_differences():
  jax.config.update("jax_enable_x64", True)
  try:
    rng = np.random.default_rng(4)
    xs = jnp.asarray(rng.normal(size=(3, 5)))
    ys = jnp.asarray(rng.normal(size=(3, 2)))
    xt = jnp.asarray(rng.normal(size=(4, 5)))
    yt = jnp.asarray(rng.normal(size=(4, 2)))
    kernel_fn = kernels.make_kernel_fn("fc", kernel="ntk", depth=2)
    loss = jax.jit(lambda a, b: krr.kip_loss(a, b, xt, yt, kernel_fn=kernel_fn, diag_reg=1e-2))
    check_grads(loss, (xs, ys), order=1, modes=["rev"], atol=1e-5, rtol=1e-5)
  finally:
    jax.config.update("jax_enable_x64", False)


def test_kip_cluster_losses_equal_a_numpy_loop_over_unmasked_targets():
  rng = np.random.default_rng(5)
  xs, ys = rng.normal(size=(6, 5)), rng.normal(size=(6, 3))
  xt, yt = rng.normal(size=(4, 7, 5)), rng.normal(size=(4, 7, 3))
  mask = rng.random((4, 7)) > 0.4
  mask[3] = False  # An empty cluster: loss 0, not NaN.
  kernel_fn = lambda a, b: a @ b.T + 1.0
  got = krr.kip_cluster_losses(jnp.asarray(xs, jnp.float32), jnp.asarray(ys, jnp.float32),
                               jnp.asarray(xt, jnp.float32), jnp.asarray(yt, jnp.float32),
                               jnp.asarray(mask), kernel_fn=kernel_fn, diag_reg=1e-2)
  k_ss = xs @ xs.T + 1.0
  reg = k_ss + 1e-2 * np.trace(k_ss) / 6 * np.eye(6)
  alpha = np.linalg.solve(reg, ys)
  expected = []
  for k in range(4):
    x, y = xt[k][mask[k]], yt[k][mask[k]]
    expected.append(0.5 * np.mean(np.sum((y - (x @ xs.T + 1.0) @ alpha) ** 2, -1)) if len(x)
                    else 0.0)
  np.testing.assert_allclose(got, expected, rtol=2e-4, atol=1e-6)
  looped = [krr.kip_cluster_losses(jnp.asarray(xs, jnp.float32), jnp.asarray(ys, jnp.float32),
                                   jnp.asarray(xt[k:k + 1], jnp.float32),
                                   jnp.asarray(yt[k:k + 1], jnp.float32),
                                   jnp.asarray(mask[k:k + 1]), kernel_fn=kernel_fn,
                                   diag_reg=1e-2)[0] for k in range(4)]
  np.testing.assert_allclose(got, looped, rtol=1e-6)  # The vmap equals one cluster at a time.
  platt = krr.kip_cluster_losses(jnp.asarray(xs, jnp.float32), jnp.asarray(ys, jnp.float32),
                                 jnp.asarray(xt, jnp.float32), jnp.asarray(yt, jnp.float32),
                                 jnp.asarray(mask), kernel_fn=kernel_fn, diag_reg=1e-2,
                                 loss="platt", log_scale=jnp.float32(-0.5))
  for k in range(3):
    logits = np.exp(-0.5) * (xt[k][mask[k]] @ xs.T + 1.0) @ alpha
    log_softmax = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    classes = yt[k][mask[k]].argmax(-1)
    np.testing.assert_allclose(platt[k], -log_softmax[np.arange(len(classes)), classes].mean(),
                               rtol=2e-4)
  assert float(platt[3]) == 0.0


def test_jitted_alias_keeps_diag_reg_traced():
  rng = np.random.default_rng(0)
  xs, xt = rng.normal(size=(4, 3)), rng.normal(size=(6, 3))
  ys, yt = np.eye(4)[:, :2], np.eye(6)[:, :2]
  kernel_fn = lambda a, b: a @ b.T + 1.0
  before = krr.kip_loss_jit._cache_size()
  values = [krr.kip_loss_jit(xs, ys, xt, yt, kernel_fn=kernel_fn, diag_reg=r)
            for r in (1e-3, 1e-2, 1e-1)]
  assert krr.kip_loss_jit._cache_size() == before + 1  # One compilation for three ridges.
  np.testing.assert_allclose(values[1], krr.kip_loss(xs, ys, xt, yt, kernel_fn=kernel_fn,
                                                     diag_reg=1e-2), rtol=1e-5)


@pytest.mark.parametrize("m, num_features", [(5, 12), (12, 5)])
def test_feature_predictor_is_krr_with_the_feature_kernel_in_both_spaces(m, num_features):
  """Dual (m ≤ M) and primal (m > M) solves give NumPy's float64 KRR with K = Φ Φᵀ; the primal one
  also where the m × m kernel has rank M < m (more support points than features)."""
  rng = np.random.default_rng(0)
  phi_s, phi_t = rng.normal(size=(m, num_features)), rng.normal(size=(4, num_features))
  y = rng.normal(size=(m, 3))
  k = phi_s @ phi_s.T
  lam = 1e-2 * np.trace(k) / m
  expected = phi_t @ phi_s.T @ np.linalg.solve(k + lam * np.eye(m), y)
  predict = krr.make_feature_krr_predictor(jnp.asarray(phi_s, jnp.float32),
                                           jnp.asarray(y, jnp.float32), diag_reg=1e-2)
  np.testing.assert_allclose(predict(jnp.asarray(phi_t, jnp.float32)), expected, rtol=2e-3,
                             atol=2e-4)
  tiny = krr.make_feature_krr_predictor(jnp.asarray(phi_s, jnp.float32),
                                        jnp.asarray(y, jnp.float32), diag_reg=1e-6)
  assert np.all(np.isfinite(tiny(jnp.asarray(phi_t, jnp.float32))))


@pytest.mark.parametrize("m, num_features", [(40, 50), (50, 50), (60, 50)])
def test_feature_predictor_is_accurate_where_the_gram_cholesky_is_not(m, num_features):
  """Φ with singular values from 1 to 1e-4 and the default ridge (1e-6): the float32 Cholesky of
  Φ Φᵀ loses 5-20% of the predictions; the QR solve keeps them to 1e-4 of NumPy's float64."""
  rng = np.random.default_rng(1)
  rank = min(m, num_features)
  u = np.linalg.qr(rng.normal(size=(m, m)))[0][:, :rank]
  v = np.linalg.qr(rng.normal(size=(num_features, num_features)))[0][:, :rank]
  s = np.logspace(0, -4, rank)
  phi_s = (u * s) @ v.T
  phi_t = rng.normal(size=(5, rank)) @ (s[:, None] * v.T)
  y = rng.normal(size=(m, 3))
  k = phi_s @ phi_s.T
  expected = phi_t @ phi_s.T @ np.linalg.solve(k + 1e-6 * np.trace(k) / m * np.eye(m), y)
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  predicted = krr.make_feature_krr_predictor(f32(phi_s), f32(y))(f32(phi_t))
  np.testing.assert_allclose(predicted, expected, rtol=0, atol=1e-4 * np.abs(expected).max())
  gram = krr.make_krr_predictor(f32(k), f32(y))(f32(phi_t @ phi_s.T))
  assert not np.linalg.norm(gram - expected) < 1e-2 * np.linalg.norm(expected)  # Can fail.


def test_feature_predictor_gradient_equals_the_gram_solves_where_both_are_well_conditioned():
  rng = np.random.default_rng(2)
  phi_s, phi_t = (jnp.asarray(rng.normal(size=shape), jnp.float32) for shape in ((6, 9), (4, 9)))
  y = jnp.asarray(rng.normal(size=(6, 2)), jnp.float32)
  by_qr = jax.grad(lambda p: jnp.sum(
      krr.make_feature_krr_predictor(p, y, diag_reg=0.1)(phi_t) ** 2))(phi_s)
  by_gram = jax.grad(lambda p: jnp.sum(
      krr.make_krr_predictor(p @ p.T, y, diag_reg=0.1)(phi_t @ p.T) ** 2))(phi_s)
  np.testing.assert_allclose(by_qr, by_gram, rtol=1e-3, atol=1e-4)
