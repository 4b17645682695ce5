"""robust_dd.matching: the distance against NumPy, vmap equals a loop, gradients (order 2)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from robust_dd import augment
from robust_dd import matching
from robust_dd import convolutions
from robust_dd import models


def _grads(seed):
  rng = np.random.default_rng(seed)
  return {"conv": {"kernel": rng.normal(size=(3, 3, 2, 4)), "bias": rng.normal(size=4)},
          "norm": {"scale": rng.normal(size=4)},
          "head": {"kernel": rng.normal(size=(6, 3)), "bias": rng.normal(size=3)}}


def _numpy_distance(a, b, metric):
  la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
  if metric == "ours":
    total = 0.0
    for x, y in zip(la, lb):
      if x.ndim == 1:
        continue
      out = x.shape[-1]
      x, y = x.reshape(-1, out).T, y.reshape(-1, out).T  # Rows = output features.
      total += np.sum(1 - (x * y).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1)
                                           + 1e-6))
    return total
  x = np.concatenate([v.ravel() for v in la])
  y = np.concatenate([v.ravel() for v in lb])
  if metric == "mse":
    return np.sum((x - y) ** 2)
  return 1 - x @ y / (np.linalg.norm(x) * np.linalg.norm(y) + 1e-6)


@pytest.mark.parametrize("metric", matching.METRICS)
def test_distance_matches_numpy(metric):
  a, b = _grads(0), _grads(1)
  got = matching.gradient_match_distance(jax.tree_util.tree_map(jnp.asarray, a),
                                         jax.tree_util.tree_map(jnp.asarray, b), metric=metric)
  np.testing.assert_allclose(got, _numpy_distance(a, b, metric), rtol=1e-5)


def test_ours_ignores_biases_and_norm_parameters_and_row_scale():
  a = jax.tree_util.tree_map(jnp.asarray, _grads(0))
  b = jax.tree_util.tree_map(lambda x: x, a)
  b = {"conv": {"kernel": a["conv"]["kernel"] * jnp.arange(1.0, 5.0), "bias": -a["conv"]["bias"]},
       "norm": {"scale": a["norm"]["scale"] + 3}, "head": a["head"]}
  np.testing.assert_allclose(matching.gradient_match_distance(a, b), 0.0, atol=1e-5)
  with pytest.raises(ValueError, match="Unknown matching metric"):
    matching.gradient_match_distance(a, b, metric="l1")


def _tiny(width=3, shape=(6, 6, 1), classes=3):
  model = models.make_network("convnet", num_classes=classes, input_shape=shape, depth=1,
                              width=width)
  params = models.init_params(model, jax.random.key(0), shape)
  return models.logits_fn(model), params


@pytest.mark.slow
def test_vmapped_per_class_loss_equals_a_loop_with_and_without_dsa():
  apply_fn, params = _tiny()
  syn = jax.random.normal(jax.random.key(1), (3, 2, 6, 6, 1))
  real = jax.random.normal(jax.random.key(2), (3, 5, 6, 6, 1))
  class_loss = matching.gradient_match_class_loss(apply_fn)

  @functools.partial(jax.jit, static_argnums=(0, 1))
  def losses(aug, class_batch):
    return matching.per_class_losses(class_loss, params, syn, real, key=jax.random.key(3),
                                     augment=aug, class_batch=class_batch)

  for aug in (None, augment.dsa):
    vmapped = losses(aug, None)
    looped = losses(aug, 1)  # One class at a time (lax.map).
    assert vmapped.shape == (3,)
    np.testing.assert_allclose(vmapped, looped, rtol=1e-4, atol=1e-5)
    chunked = losses(aug, 2)
    np.testing.assert_allclose(chunked, vmapped, rtol=1e-4, atol=1e-5)  # 2 + a remainder of 1.
    if aug is None:
      manual = jax.jit(lambda: [matching.gradient_match_distance(  # Jitted: one compilation.
          matching.class_loss_gradient(apply_fn, params, syn[c], c),
          matching.class_loss_gradient(apply_fn, params, real[c], c)) for c in range(3)])()
      np.testing.assert_allclose(vmapped, manual, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_matching_a_set_to_itself_costs_nothing():
  apply_fn, params = _tiny()
  x = jax.random.normal(jax.random.key(1), (3, 4, 6, 6, 1))
  for metric in matching.METRICS:
    loss = matching.gradient_match_loss_jit(params, x, x, apply_fn=apply_fn, metric=metric)
    np.testing.assert_allclose(loss, 0.0, atol=1e-3)  # 'ours': eps / |row|^2 per row remains.
  # With DSA the shared key transforms both copies alike, so the loss stays zero.
  loss = matching.gradient_match_loss_jit(params, x, x, apply_fn=apply_fn, key=jax.random.key(4),
                                          augment=augment.dsa)
  np.testing.assert_allclose(loss, 0.0, atol=1e-3)
  other = matching.gradient_match_loss_jit(params, x, x[::-1], apply_fn=apply_fn)
  assert other > 0.5


@pytest.mark.slow
@pytest.mark.parametrize("metric", matching.METRICS)
def test_gradients_through_the_matching_loss_order_two(metric):
  with jax.enable_x64(True):
    apply_fn, params = _tiny(width=2, shape=(4, 4, 1), classes=2)
    params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), params)
    syn = jax.random.normal(jax.random.key(1), (2, 1, 4, 4, 1), jnp.float64)
    real = jax.random.normal(jax.random.key(2), (2, 3, 4, 4, 1), jnp.float64)
    f = jax.jit(lambda s: matching.gradient_match_loss(params, s, real, apply_fn=apply_fn,
                                                       metric=metric))  # Compiled once.
    check_grads(f, (syn,), order=2, modes=["rev"], atol=1e-4, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.extended  # Eager DSA compiles op by op (30 s); jitted losses are checked elsewhere.
def test_jitted_alias_equals_eager():
  apply_fn, params = _tiny()
  syn = jax.random.normal(jax.random.key(1), (3, 2, 6, 6, 1))
  real = jax.random.normal(jax.random.key(2), (3, 5, 6, 6, 1))
  kw = dict(apply_fn=apply_fn, key=jax.random.key(0), augment=augment.dsa)
  np.testing.assert_allclose(matching.gradient_match_loss_jit(params, syn, real, **kw),
                             matching.gradient_match_loss(params, syn, real, **kw), rtol=1e-4)


@pytest.mark.slow
def test_per_cluster_losses_vmap_equals_loop_and_masked_rows_drop_out():
  apply_fn, params = _tiny()
  rng = np.random.default_rng(4)
  syn = jnp.asarray(rng.normal(size=(3, 2, 6, 6, 1)), jnp.float32)
  real = jnp.asarray(rng.normal(size=(5, 4, 6, 6, 1)), jnp.float32)
  mask = jnp.asarray([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 0], [0, 0, 0, 0]], bool)
  cluster_class = jnp.asarray([0, 0, 1, 2, 2])
  class_loss = matching.gradient_match_class_loss(apply_fn)

  @functools.partial(jax.jit, static_argnums=0)
  def losses(cluster_batch, syn, real, mask):
    return matching.per_cluster_match_losses(class_loss, params, syn, real, mask, cluster_class,
                                             cluster_batch=cluster_batch)

  vmapped = losses(None, syn, real, mask)
  np.testing.assert_allclose(vmapped, losses(1, syn, real, mask), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(vmapped, losses(2, syn, real, mask), rtol=1e-5, atol=1e-6)
  # Cluster k's loss is the class loss on its unmasked real rows only.
  one = jax.jit(class_loss)
  for k in range(4):
    rows = np.asarray(mask[k])
    expected = one(params, syn[int(cluster_class[k])], real[k][rows], cluster_class[k])
    np.testing.assert_allclose(vmapped[k], expected, rtol=1e-4, atol=1e-6)
  # An empty cluster has a zero real gradient: finite, not NaN.
  assert np.isfinite(float(vmapped[4]))


@pytest.mark.parametrize("loss,chunk", [("gradient", 0), ("curvature", 0), ("gradient", 3),
                                        ("gradient", 8), ("curvature", 3)])
def test_per_class_cluster_losses_equal_the_general_form_and_its_gradient(loss, chunk):
  """The class-major form (synthetic work shared by a class's clusters) gives the per-cluster
  losses of `per_cluster_match_losses` and the same gradient in the synthetic images, for DC's
  and LCMat's class losses, with classes vmapped or one at a time. (DC's class loss computes its
  clusters by its own `cluster_losses`; the general form vmaps the class loss.) With `chunk`,
  the grouped form's real gradients run in chunks (3: each cluster's 4 rows in two; 8: two
  clusters at a time) and still equal the general form without chunks."""
  from robust_dd import curvature  # pylint: disable=g-import-not-at-top
  apply_fn, params = _tiny()
  rng = np.random.default_rng(5)
  syn = jnp.asarray(rng.normal(size=(3, 2, 6, 6, 1)), jnp.float32)
  real = jnp.asarray(rng.normal(size=(3, 2, 4, 6, 6, 1)), jnp.float32)
  mask = jnp.asarray([[[1, 1, 1, 1], [1, 1, 0, 0]], [[1, 0, 0, 0], [1, 1, 1, 0]],
                      [[1, 1, 1, 1], [0, 0, 0, 0]]], bool)  # Class 2's second cluster is empty.
  make = (matching.gradient_match_class_loss if loss == "gradient" else
          curvature.curvature_match_class_loss)

  def general(s):
    return matching.per_cluster_match_losses(make(apply_fn), params, s,
                                             real.reshape(6, 4, 6, 6, 1), mask.reshape(6, 4),
                                             jnp.repeat(jnp.arange(3), 2))

  def grouped(s, class_batch=None):
    return matching.per_class_cluster_losses(make(apply_fn, chunk=chunk), params, s, real, mask,
                                             class_batch=class_batch)

  expected = jax.jit(general)(syn)
  got = jax.jit(grouped)(syn)
  assert got.shape == (3, 2)
  np.testing.assert_allclose(got.reshape(-1), expected, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(jax.jit(grouped, static_argnums=1)(syn, 1), got, rtol=1e-5,
                             atol=1e-6)
  weights = jnp.asarray([0.5, 1.0, 2.0, 0.0, 1.5, 1.0])
  g_expected = jax.jit(jax.grad(lambda s: jnp.sum(weights * general(s))))(syn)
  g_got = jax.jit(jax.grad(lambda s: jnp.sum(weights * grouped(s).reshape(-1))))(syn)
  np.testing.assert_allclose(g_got, g_expected, rtol=1e-4, atol=1e-6)
  with pytest.raises(ValueError, match="leading"):
    matching.per_class_cluster_losses(make(apply_fn), params, syn, real, mask[:, :, :2])


@pytest.mark.slow
def test_per_class_cluster_losses_augment_a_class_and_its_clusters_alike():
  """With DSA, class c's synthetic images and every one of its clusters' real rows get the
  class's transformation (fold_in(key, c)): equal to the class loss on each cluster's rows."""
  apply_fn, params = _tiny()
  rng = np.random.default_rng(6)
  syn = jnp.asarray(rng.normal(size=(3, 1, 6, 6, 1)), jnp.float32)
  real = jnp.asarray(rng.normal(size=(3, 2, 3, 6, 6, 1)), jnp.float32)
  mask = jnp.asarray(rng.random((3, 2, 3)) < 0.7).at[:, :, 0].set(True)
  class_loss = matching.gradient_match_class_loss(apply_fn)
  key = jax.random.key(3)
  got = jax.jit(lambda s: matching.per_class_cluster_losses(
      class_loss, params, s, real, mask, key=key, augment=augment.dsa))(syn)
  one = jax.jit(class_loss)
  for c in range(3):
    k = jax.random.fold_in(key, c)
    for j in range(2):
      rows = np.asarray(mask[c, j])
      expected = one(params, augment.dsa(k, syn[c]), augment.dsa(k, real[c, j])[rows], c)
      np.testing.assert_allclose(got[c, j], expected, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_matching_loss_and_image_gradient_agree_across_conv_impls():
  """ConvNet's convolutions (patches, lax, shifted, winograd, winograd4, auto) give the same
  matching loss and the same gradient in the synthetic images (a gradient of per-class
  gradients)."""
  rng = np.random.default_rng(7)
  syn = jnp.asarray(rng.normal(size=(3, 2, 8, 8, 1)), jnp.float32)
  real = jnp.asarray(rng.normal(size=(3, 5, 8, 8, 1)), jnp.float32)
  results = []
  for impl in convolutions.CONV_IMPLS:
    model = models.make_network("convnet", num_classes=3, input_shape=(8, 8, 1), depth=2,
                                width=4, conv_impl=impl)
    params = models.init_params(model, jax.random.key(0), (8, 8, 1))
    results.append(jax.jit(jax.value_and_grad(lambda s, m=model, p=params: (
        matching.gradient_match_loss(p, s, real, apply_fn=models.logits_fn(m)))))(syn))
  for loss, grad in results[1:]:
    np.testing.assert_allclose(loss, results[0][0], rtol=1e-4)
    np.testing.assert_allclose(grad, results[0][1], rtol=1e-3, atol=1e-6)


def test_the_folded_first_block_changes_the_matching_loss_only_at_float32_rounding():
  """Same seed, ConvNet with and without its first conv and norm folded (`fold_norm`): the
  matching loss and its image gradient agree to 1e-10 in float64, and in float32 both lie
  within float32 rounding of the float64 value: folding moves results at that rounding only."""
  model = models.make_network("convnet", num_classes=3, input_shape=(28, 28, 1), width=16)
  params = models.init_params(model, jax.random.key(0), (28, 28, 1))
  rng = np.random.default_rng(3)
  syn, real = rng.normal(size=(3, 1, 28, 28, 1)), rng.normal(size=(3, 6, 28, 28, 1))

  def loss_and_grad(m, dtype):
    p = jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), params)
    return jax.jit(jax.value_and_grad(lambda s: matching.gradient_match_loss(
        p, s, jnp.asarray(real, dtype), apply_fn=models.logits_fn(m))))(jnp.asarray(syn, dtype))
  unfolded = model.clone(fold_norm=False)
  with jax.enable_x64(True):
    (l64, g64), (l64_folded, g64_folded) = [loss_and_grad(m, jnp.float64)
                                            for m in (unfolded, model)]
    np.testing.assert_allclose(l64_folded, l64, rtol=1e-10)
    np.testing.assert_allclose(g64_folded, g64, rtol=1e-8, atol=1e-10 * np.abs(g64).max())
  for m in (unfolded, model):
    loss, grad = loss_and_grad(m, jnp.float32)
    np.testing.assert_allclose(loss, l64, rtol=1e-5)
    np.testing.assert_allclose(grad, g64, rtol=1e-2, atol=1e-3 * np.abs(g64).max())


def test_a_dead_units_zero_gradient_row_gives_finite_gradients():
  g_real = {"w": jnp.ones((3, 2))}

  def distance(v):
    return matching.gradient_match_distance({"w": v}, g_real)

  v = jnp.asarray([[1.0, 0.0], [2.0, 0.0], [0.5, 0.0]])  # Output unit 1's row is all zero.
  grad = jax.grad(distance)(v)
  assert np.all(np.isfinite(grad))
  a = np.array([1.0, 2.0, 0.5])
  cos0 = a.sum() / (np.linalg.norm(a) * np.sqrt(3.0) + 1e-6)
  np.testing.assert_allclose(distance(v), (1.0 - cos0) + 1.0, rtol=1e-5)


@pytest.mark.parametrize("hvp_mode", [None, "exact", "finite_difference"])
def test_real_gradients_in_chunks_give_the_same_loss_and_image_gradient(hvp_mode):
  """DC's (hvp_mode None) and LCMat's class losses with the real batch's gradient (and LCMat's
  Hessian-vector product) computed in chunks equal those in one batch, weighted real rows
  included, in value and in the gradient with respect to the synthetic images."""
  from robust_dd import curvature  # pylint: disable=g-import-not-at-top
  apply_fn, params = _tiny()
  rng = np.random.default_rng(6)
  syn = jnp.asarray(rng.normal(size=(2, 6, 6, 1)), jnp.float32)
  real = jnp.asarray(rng.normal(size=(7, 6, 6, 1)), jnp.float32)
  weights = jnp.asarray(rng.uniform(size=7), jnp.float32)
  make = (matching.gradient_match_class_loss if hvp_mode is None else functools.partial(
      curvature.curvature_match_class_loss, hvp_mode=hvp_mode))

  def value_and_image_grad(chunk):
    loss = make(apply_fn, chunk=chunk)
    return jax.jit(jax.value_and_grad(lambda s: loss(params, s, real, 1, weights)))(syn)

  value, grad = value_and_image_grad(0)
  for chunk in (2, 3):  # Four chunks of 2 (one padded row), three of 3 (two padded rows).
    got_value, got_grad = value_and_image_grad(chunk)
    np.testing.assert_allclose(got_value, value, rtol=1e-5)
    np.testing.assert_allclose(got_grad, grad, rtol=1e-4, atol=1e-6)
  assert np.any(np.asarray(grad))


def test_default_class_batch_is_one_on_cpu_all_elsewhere_and_keeps_explicit_values():
  assert matching.default_class_batch(None, backend="cpu") == 1
  assert matching.default_class_batch(None, backend="gpu") is None  # All classes in one vmap.
  assert matching.default_class_batch(0, backend="cpu") is None
  assert matching.default_class_batch(3, backend="gpu") == 3
