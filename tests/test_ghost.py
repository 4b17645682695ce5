"""robust_dd.ghost: per-example 'ours' distances without per-example gradients, against autodiff.

The reference is the definition: each example's own gradient by `jax.grad` (vmapped), matched to
the synthetic gradient by `matching.gradient_match_distance`.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxpr_counts  # tests/jaxpr_counts.py
from robust_dd import ghost
from robust_dd import matching
from robust_dd import convolutions
from robust_dd import models
from robust_dd import training


class _OddConvs(nn.Module):
  """Kernels that are not 3x3, 'SAME' padding with an even kernel (uneven pads) in a layer
  that forms each example's weight gradient (a) and in one that forms its Gram matrix (g), a
  dense layer on flat inputs: the cases ConvNet does not reach."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(models.PatchConv(16, (2, 3), padding=None, name="a")(x))
    x = nn.avg_pool(x, (2, 2), (2, 2))
    x = nn.relu(models.PatchConv(16, (2, 3), padding=None, name="g")(x))
    x = nn.relu(models.PatchConv(6, (3, 1), padding=2, impl="shifted", name="b")(x))
    x = nn.relu(nn.Dense(7, name="c")(x.reshape(x.shape[0], -1)))
    return nn.Dense(3, name="head")(x)


def _network(name, shape=(8, 8, 1), **kwargs):
  if name == "odd":
    model = _OddConvs()
  else:
    model = models.make_network(name, num_classes=3, input_shape=shape, **kwargs)
  return models.logits_fn(model), models.init_params(model, jax.random.key(0), shape)


def _autodiff_distances(apply_fn, params, g_syn, images, label, weights):
  def one(x, w):
    g = training.loss_and_grad(apply_fn, params, x[None], label, w[None])[1]
    return matching.gradient_match_distance(g_syn, g)
  return jax.vmap(one)(images, weights)


PATCHES = dict(depth=2, width=16, conv_impl="patches")
# (network, its arguments, chunk): every convolution of `models`, chunked and not.
CASES = [("convnet", PATCHES, 0), ("convnet", PATCHES, 3),
         ("convnet", dict(depth=2, width=16, conv_impl="winograd"), 0),
         ("convnet", dict(depth=2, width=16, conv_impl="winograd4"), 3),
         ("convnet", dict(depth=2, width=16, conv_impl="shifted"), 3),
         ("mlp", dict(depth=2, width=5), 3), ("odd", {}, 0)]


@pytest.mark.parametrize("name,kwargs,chunk", CASES)
def test_distances_and_their_gradient_equal_per_example_autodiff(name, kwargs, chunk):
  shape = (48,) if name == "mlp" else (8, 8, 1)
  apply_fn, params = _network(name, shape, **kwargs)
  rng = np.random.default_rng(1)
  syn = jnp.asarray(rng.normal(size=(2, *shape)), jnp.float32)
  images = jnp.asarray(rng.normal(size=(7, *shape)), jnp.float32)
  # Weights as a robust step passes them: 1 (kept), 0 (a padded row), other positive values
  # (a one-image cluster's gradient does not depend on its weight's size).
  weights = jnp.asarray([1.0, 0.0, 2.5, 1.0, 0.3, 1.0, 0.0])
  label = jnp.int32(2)
  g_syn = training.loss_and_grad(apply_fn, params, syn, label)[1]
  got = matching.ghost_distances(apply_fn, params, g_syn, images, label, weights, chunk=chunk)
  expected = _autodiff_distances(apply_fn, params, g_syn, images, label, weights)
  assert got.shape == (7,)
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
  # Each example's per-unit gradient norms against its autodiff gradient's.
  layers = ghost.find_layers(apply_fn, params, shape)
  stats = ghost.example_stats(apply_fn, params, images, weights, layers=layers, label=label)
  per_example = jax.vmap(lambda x, w: training.loss_and_grad(apply_fn, params, x[None], label,
                                                             w[None])[1])(images, weights)
  for layer, (norms2, *_) in zip(layers, stats):
    r = ghost._kernel(per_example, layer.path)  # pylint: disable=protected-access
    np.testing.assert_allclose(norms2, jnp.sum(r * r, tuple(range(1, r.ndim - 1))), rtol=1e-4,
                               atol=1e-7 * float(jnp.max(norms2)))
  # Matched against example 0's own gradient: cos = 1 there (but for units dead for it), so a
  # small error in a norm or an inner product shows.
  g_0 = jax.tree_util.tree_map(lambda t: t[0], per_example)
  got = matching.ghost_distances(apply_fn, params, g_0, images, label, weights, chunk=chunk)
  np.testing.assert_allclose(got, _autodiff_distances(apply_fn, params, g_0, images, label,
                                                      weights), rtol=1e-5, atol=1e-4)
  # Its distance to itself in closed form: sum_u 1 - n_u^2 / (n_u^2 + eps), 1 for a dead unit.
  units = [np.sum(np.asarray(t, np.float64) ** 2, tuple(range(t.ndim - 1)))
           for t in jax.tree_util.tree_leaves(g_0) if t.ndim >= 2]
  own = sum(np.sum(1 - n2 / (np.maximum(n2, 1e-30) + matching.EPS)) for n2 in units)
  np.testing.assert_allclose(got[0], own, rtol=1e-4, atol=1e-3)
  # The gradient in the synthetic gradient (what flows back to the synthetic images).
  cotangent = jnp.asarray(rng.uniform(size=7), jnp.float32)
  ghost_grad = jax.grad(lambda g: cotangent @ matching.ghost_distances(
      apply_fn, params, g, images, label, weights, chunk=chunk))(g_syn)
  autodiff_grad = jax.grad(lambda g: cotangent @ _autodiff_distances(
      apply_fn, params, g, images, label, weights))(g_syn)
  for a, b in zip(jax.tree_util.tree_leaves(ghost_grad),
                  jax.tree_util.tree_leaves(autodiff_grad)):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5 * float(jnp.max(jnp.abs(b))))


def test_layers_found_and_each_norm_method_is_exercised():
  """ConvNet width 16 on 8x8 digits: conv0 (one channel, 64 positions) forms each example's
  weight gradient, conv1 (16 channels, 4x4 maps) its Gram matrix: both paths run in the test
  above. The head is a dense layer on flat features."""
  apply_fn, params = _network("convnet", depth=2, width=16, conv_impl="patches")
  layers = ghost.find_layers(apply_fn, params, (8, 8, 1))
  assert [(layer.path, layer.kind) for layer in layers] == [
      (("conv0",), "conv"), (("conv1",), "conv"), (("head",), "dense")]
  assert [layer.direct for layer in layers] == [True, False, False]
  assert layers[0].pads == ((1, 1), (1, 1)) and layers[1].out_shape == (4, 4, 16)
  odd = {layer.path[0]: layer for layer in ghost.find_layers(*_network("odd"), (8, 8, 1))}
  # 'SAME' for a 2x3 kernel, in a direct layer and in a Gram layer.
  assert odd["a"].pads == odd["g"].pads == ((0, 1), (1, 1))
  assert [odd[k].direct for k in "agb"] == [True, False, True]


@pytest.mark.parametrize("positions", [1, 7, 16])
def test_symmetric_gram_and_quadratic_form_equal_numpy(positions):
  """The Gram norms' two products from three blocks each (halves of the positions; an odd count
  splits unevenly, one position leaves a top half of none) against NumPy."""
  # pylint: disable=protected-access
  rng = np.random.default_rng(4)
  x = rng.normal(size=(3, positions, 5))
  d = rng.normal(size=(3, positions, 2))
  gram = np.einsum("npc,nqc->npq", x, x)
  np.testing.assert_allclose(ghost._symmetric_gram(jnp.asarray(x, jnp.float32)), gram,
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(
      ghost._symmetric_quadratic_form(jnp.asarray(gram, jnp.float32), jnp.asarray(d, jnp.float32)),
      np.einsum("npu,npq,nqu->nu", d, gram, d), rtol=1e-4, atol=1e-4)


def test_gram_norms_take_three_quarters_of_the_multiplications():
  """A Gram layer's norms: n P_in^2 c_in for the Gram matrix and n P_out^2 c_out for the
  quadratic form as one batched matmul each; the symmetric halves take 3/4 of that."""
  layer = ghost.Layer(("conv",), "conv", (3, 3, 64, 32), (8, 8, 64), (8, 8, 32),
                      conv=convolutions.conv_winograd, padding=1)
  assert not layer.direct
  a, d = jnp.ones((2, 8, 8, 64)), jnp.ones((2, 8, 8, 32))
  # pylint: disable=protected-access
  got = jaxpr_counts.multiplications(lambda a, d: ghost._batch_stats(layer, a, d), a, d)
  assert got == 2 * 64 ** 2 * (64 + 32) * 3 // 4


class _WithBatchNorm(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = models.PatchConv(4, (3, 3), padding=1)(x)
    x = nn.BatchNorm(use_running_average=False)(x)
    return nn.Dense(3)(x.reshape(x.shape[0], -1))


def test_unsupported_networks_give_none_and_the_class_loss_falls_back():
  """nn.Conv (ConvNet's 'lax' convolutions), dense layers on sequences (ViT) and batch
  statistics (examples coupled) are not covered: None, and `cluster_losses` uses per-example
  autodiff, still equal to the class loss vmapped over the clusters."""
  for name, kwargs in [("convnet", dict(depth=1, width=4, conv_impl="lax")), ("vit", {})]:
    shape = (16, 16, 3) if name == "vit" else (8, 8, 1)
    apply_fn, params = _network(name, shape, **kwargs)
    assert ghost.find_layers(apply_fn, params, shape) is None
  model = _WithBatchNorm()
  variables = model.init(jax.random.key(0), jnp.zeros((2, 8, 8, 1)))
  apply_bn = lambda p, x: model.apply({**variables, "params": p}, x, mutable=["batch_stats"])[0]
  assert ghost.find_layers(apply_bn, variables["params"], (8, 8, 1)) is None
  apply_fn, params = _network("convnet", depth=1, width=4, conv_impl="lax")
  x = jax.random.normal(jax.random.key(1), (5, 1, 8, 8, 1))
  w = jnp.ones((5, 1))
  syn = jax.random.normal(jax.random.key(2), (1, 8, 8, 1))
  class_loss = matching.gradient_match_class_loss(apply_fn)
  np.testing.assert_allclose(
      class_loss.cluster_losses(params, syn, x, 1, w),
      jax.vmap(lambda xs, ws: class_loss(params, syn, xs, 1, ws))(x, w), rtol=1e-5)


@pytest.mark.parametrize("chunk", [0, 2])
def test_cluster_losses_with_ghost_norms_equal_autodiff_and_their_image_gradient(chunk):
  """`gradient_match_class_loss(...).cluster_losses` on one-image clusters (robust DC at K equal
  to the real batch): ghost norms (default) against `ghost=False`, values and the gradient in
  the synthetic images."""
  apply_fn, params = _network("convnet", depth=2, width=16)
  rng = np.random.default_rng(3)
  syn = jnp.asarray(rng.normal(size=(2, 8, 8, 1)), jnp.float32)
  real = jnp.asarray(rng.normal(size=(6, 1, 8, 8, 1)), jnp.float32)
  mask = jnp.asarray([[1], [1], [0], [1], [1], [0]], jnp.float32)
  cotangent = jnp.asarray(rng.uniform(size=6), jnp.float32)

  def losses(s, use_ghost):
    class_loss = matching.gradient_match_class_loss(apply_fn, chunk=chunk, ghost=use_ghost)
    return class_loss.cluster_losses(params, s, real, 1, mask)

  np.testing.assert_allclose(losses(syn, True), losses(syn, False), rtol=1e-4, atol=1e-4)
  grad = lambda use_ghost: jax.grad(lambda s: cotangent @ losses(s, use_ghost))(syn)
  expected = grad(False)
  np.testing.assert_allclose(grad(True), expected, rtol=1e-3,
                             atol=1e-5 * float(jnp.max(jnp.abs(expected))))
