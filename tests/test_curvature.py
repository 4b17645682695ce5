"""robust_dd.curvature: HVPs against a dense Hessian and finite differences; the LCMat loss."""

import functools
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree
from jax.test_util import check_grads

from robust_dd import augment
from robust_dd import curvature
from robust_dd import matching
from robust_dd import models
from robust_dd import training


def _problem(dtype=jnp.float32):
  """A smooth (tanh) two-layer network, so finite differences meet no ReLU kinks."""
  k1, k2, k3, k4 = jax.random.split(jax.random.key(0), 4)
  params = {"w1": jax.random.normal(k1, (4, 5), dtype), "b1": jnp.zeros(5, dtype),
            "w2": jax.random.normal(k2, (5, 3), dtype)}
  x = jax.random.normal(k3, (7, 4), dtype)
  y = jnp.arange(7) % 3
  apply_fn = lambda p, v: jnp.tanh(v @ p["w1"] + p["b1"]) @ p["w2"]
  loss = lambda p: training.cross_entropy(apply_fn(p, x), y)
  v = jax.tree_util.tree_map(lambda a: jax.random.normal(k4, a.shape, dtype), params)
  return loss, params, v


@pytest.mark.slow
def test_hvp_equals_dense_hessian_times_vector():
  with jax.enable_x64(True):
    loss, params, v = _problem(jnp.float64)
    flat, unravel = ravel_pytree(params)
    hessian = jax.jit(jax.hessian(lambda f: loss(unravel(f))))(flat)
    expected = hessian @ ravel_pytree(v)[0]
    hv = jax.jit(curvature.hvp, static_argnums=0)(loss, params, v)
    np.testing.assert_allclose(ravel_pytree(hv)[0], expected,
                               rtol=1e-8, atol=1e-10)


def test_hvp_equals_central_finite_differences_of_the_gradient():
  with jax.enable_x64(True):
    loss, params, v = _problem(jnp.float64)
    eps = 1e-5
    g = lambda s: ravel_pytree(jax.grad(loss)(
        jax.tree_util.tree_map(lambda p, d: p + s * d, params, v)))[0]
    expected = (g(eps) - g(-eps)) / (2 * eps)
    np.testing.assert_allclose(ravel_pytree(curvature.hvp(loss, params, v))[0], expected,
                               rtol=1e-5, atol=1e-8)


def test_finite_difference_variant_converges_to_the_exact_hvp():
  with jax.enable_x64(True):
    loss, params, v = _problem(jnp.float64)
    exact = ravel_pytree(curvature.hvp(loss, params, v))[0]
    errors = []
    for scale in (1e-2, 1e-3, 1e-4):
      small = jax.tree_util.tree_map(lambda a: scale * a, v)
      approx = ravel_pytree(curvature.hvp_finite_difference(loss, params, small))[0] / scale
      errors.append(np.linalg.norm(approx - exact))
    assert errors[1] < 0.2 * errors[0] and errors[2] < 0.2 * errors[1]  # First order in |v|.


def test_adversarial_direction_has_norm_rho_and_no_gradient():
  a = {"w": jnp.asarray([3.0, 0.0]), "b": jnp.asarray([1.0])}
  b = {"w": jnp.asarray([0.0, 4.0]), "b": jnp.asarray([1.0])}
  v = curvature.adversarial_direction(a, b, rho=0.05)
  np.testing.assert_allclose(curvature.tree_norm(v), 0.05, rtol=1e-6)
  np.testing.assert_allclose(v["w"], 0.05 * np.array([3.0, -4.0]) / 5.0, rtol=1e-6)
  grad = jax.grad(lambda s: curvature.tree_norm(curvature.adversarial_direction(
      {"w": s * a["w"], "b": a["b"]}, b, rho=1.0)))(2.0)
  assert grad == 0.0


def _tiny_conv(dtype=jnp.float32):
  model = models.make_network("convnet", num_classes=2, input_shape=(4, 4, 1), depth=1, width=2)
  params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype),
                                  models.init_params(model, jax.random.key(0), (4, 4, 1)))
  syn = jax.random.normal(jax.random.key(1), (2, 1, 4, 4, 1), dtype)
  real = jax.random.normal(jax.random.key(2), (2, 3, 4, 4, 1), dtype)
  return models.logits_fn(model), params, syn, real


@pytest.mark.slow
def test_lcmat_with_zero_gamma_is_gradient_matching_and_adds_the_hvp_distance():
  apply_fn, params, syn, real = _tiny_conv()
  gm = matching.gradient_match_loss_jit(params, syn, real, apply_fn=apply_fn)
  lcmat = functools.partial(curvature.curvature_match_loss_jit, params, syn, real,
                            apply_fn=apply_fn)  # gamma traced: one compilation for both values.
  np.testing.assert_allclose(lcmat(gamma=0.0), gm, rtol=1e-5)
  # The curvature term by hand for each class, with the dense route: jvp of grad.
  @jax.jit  # One compilation instead of every operation's.
  def by_hand():
    extra = 0.0
    for c in range(2):
      ls = lambda p, c=c: training.cross_entropy(apply_fn(p, syn[c]), c)
      lt = lambda p, c=c: training.cross_entropy(apply_fn(p, real[c]), c)
      gs, gt = jax.grad(ls)(params), jax.grad(lt)(params)
      v = curvature.adversarial_direction(gs, gt, rho=0.05)
      extra += matching.gradient_match_distance(curvature.hvp(ls, params, v),
                                                curvature.hvp(lt, params, v))
    return extra

  extra = by_hand()
  np.testing.assert_allclose(lcmat(gamma=2.0), gm + 2.0 * extra, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("hvp_mode", [
    pytest.param(m, marks=pytest.mark.extended) if m == "finite_difference" else m
    for m in curvature.HVP_MODES])
def test_gradients_through_the_curvature_loss_order_two(hvp_mode):
  # The direction v is a stop-gradient, so the loss's derivative in the images is that of the
  # same loss with v frozen at its current value; check that, then check_grads the frozen loss.
  product = curvature.hvp if hvp_mode == "exact" else curvature.hvp_finite_difference
  with jax.enable_x64(True):
    apply_fn, params, syn, real = _tiny_conv(jnp.float64)

    def frozen(s, v):
      total = 0.0
      for c in range(2):
        ls = lambda p: training.cross_entropy(apply_fn(p, s[c]), c)
        lt = lambda p: training.cross_entropy(apply_fn(p, real[c]), c)
        total += (matching.gradient_match_distance(jax.grad(ls)(params), jax.grad(lt)(params),
                                                   metric="mse")
                  + matching.gradient_match_distance(product(ls, params, v[c]),
                                                     product(lt, params, v[c]), metric="mse"))
      return total

    @jax.jit
    def directions():
      v = []
      for c in range(2):
        gs = matching.class_loss_gradient(apply_fn, params, syn[c], c)
        gt = matching.class_loss_gradient(apply_fn, params, real[c], c)
        v.append(curvature.adversarial_direction(gs, gt, rho=0.5))
      return v

    v = directions()
    full = lambda s: curvature.curvature_match_loss(params, s, real, apply_fn=apply_fn,
                                                    hvp_mode=hvp_mode, metric="mse", rho=0.5)
    frozen_v = jax.jit(lambda s: frozen(s, v))  # Compiled once: check_grads calls it often.
    np.testing.assert_allclose(jax.jit(full)(syn), frozen_v(syn), rtol=1e-10)
    np.testing.assert_allclose(jax.jit(jax.grad(full))(syn), jax.jit(jax.grad(frozen_v))(syn),
                               rtol=1e-8, atol=1e-12)
    check_grads(frozen_v, (syn,), order=2, modes=["rev"], atol=1e-4, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.extended
def test_vmapped_curvature_loss_equals_a_loop_and_jit():
  apply_fn, params, syn, real = _tiny_conv()
  class_loss = curvature.curvature_match_class_loss(apply_fn)
  kw = dict(key=jax.random.key(3), augment=augment.dsa)
  np.testing.assert_allclose(matching.per_class_losses(class_loss, params, syn, real, **kw),
                             matching.per_class_losses(class_loss, params, syn, real,
                                                       class_batch=1, **kw),
                             rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(
      curvature.curvature_match_loss_jit(params, syn, real, apply_fn=apply_fn),
      curvature.curvature_match_loss(params, syn, real, apply_fn=apply_fn), rtol=1e-4)
  with pytest.raises(ValueError, match="hvp mode"):
    curvature.curvature_match_class_loss(apply_fn, hvp_mode="lanczos")


@pytest.mark.slow
def test_masked_real_rows_drop_out_of_the_curvature_loss():
  # The robust LCMat path: per-cluster losses with padded real rows, one vmap over clusters.
  apply_fn = lambda p, v: jnp.tanh(v.reshape(len(v), -1) @ p["w1"]) @ p["w2"]
  k1, k2, k3, k4 = jax.random.split(jax.random.key(1), 4)
  params = {"w1": jax.random.normal(k1, (4, 5)), "w2": jax.random.normal(k2, (5, 3))}
  syn = jax.random.normal(k3, (3, 2, 4))
  real = jax.random.normal(k4, (2, 5, 4))
  mask = jnp.asarray([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
  cluster_class = jnp.asarray([1, 2])
  class_loss = curvature.curvature_match_class_loss(apply_fn)
  got = jax.jit(lambda s: matching.per_cluster_match_losses(class_loss, params, s, real, mask,
                                                            cluster_class))(syn)
  for k in range(2):
    rows = np.asarray(mask[k])
    expected = jax.jit(class_loss)(params, syn[int(cluster_class[k])], real[k][rows],
                                   cluster_class[k])
    np.testing.assert_allclose(got[k], expected, rtol=1e-4, atol=1e-6)
