"""robust_dd.models: the patch convolution equals lax.conv; logits = head(embed); shapes; errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robust_dd import models


@pytest.mark.parametrize("kernel_size", [1, 3, 5])
def test_patch_convolution_equals_lax_conv(kernel_size):
  kx, kk = jax.random.split(jax.random.key(0))
  x = jax.random.normal(kx, (3, 7, 6, 2))
  kernel = jax.random.normal(kk, (kernel_size, kernel_size, 2, 4))
  expected = jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME",
                                          dimension_numbers=("NHWC", "HWIO", "NHWC"))
  np.testing.assert_allclose(models.conv_patches(x, kernel), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_convnet_patch_and_lax_implementations_agree():
  x = jax.random.normal(jax.random.key(1), (4, 8, 8, 3))
  patch = models.make_network("convnet", num_classes=5, input_shape=(8, 8, 3), depth=2, width=6)
  lax_net = models.make_network("convnet", num_classes=5, input_shape=(8, 8, 3), depth=2,
                                width=6, conv_impl="lax")
  params = models.init_params(patch, jax.random.key(2), (8, 8, 3))
  same_structure = models.init_params(lax_net, jax.random.key(2), (8, 8, 3))
  assert (jax.tree_util.tree_structure(params)
          == jax.tree_util.tree_structure(same_structure))
  np.testing.assert_allclose(models.logits_fn(patch)(params, x),
                             models.logits_fn(lax_net)(params, x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shape,depth,features", [((28, 28, 1), 3, 3 * 3 * 8),
                                                  ((32, 32, 3), 3, 4 * 4 * 8),
                                                  ((8, 8, 1), 3, 8)])
@pytest.mark.slow
def test_convnet_embed_shape_and_head(shape, depth, features):
  model = models.make_network("auto", num_classes=10, input_shape=shape, depth=depth, width=8)
  assert isinstance(model, models.ConvNet)
  params = models.init_params(model, jax.random.key(0), shape)
  x = jax.random.normal(jax.random.key(1), (2, *shape))
  z = models.embed_fn(model)(params, x)
  assert z.shape == (2, features)
  head = params["head"]
  np.testing.assert_allclose(models.logits_fn(model)(params, x),
                             z @ head["kernel"] + head["bias"], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_instance_norm_makes_the_network_invariant_to_input_scale():
  model = models.make_network("convnet", num_classes=3, input_shape=(8, 8, 1), depth=1, width=4)
  params = models.init_params(model, jax.random.key(0), (8, 8, 1))
  params["conv0"]["bias"] = jnp.zeros(4)
  x = jax.random.normal(jax.random.key(1), (2, 8, 8, 1))
  f = models.logits_fn(model)
  np.testing.assert_allclose(f(params, x), f(params, 3.0 * x), rtol=1e-3, atol=1e-3)
  assert not np.allclose(f(params, x), f(params, x + 1.0), atol=1e-3)  # Zero padding.


def test_mlp_matches_numpy():
  model = models.make_network("auto", num_classes=3, input_shape=(5,), depth=2, width=4)
  assert isinstance(model, models.MLP)
  params = models.init_params(model, jax.random.key(0), (5,))
  x = np.random.default_rng(0).normal(size=(6, 5)).astype(np.float32)
  h = x
  for name in ("dense0", "dense1"):
    h = np.maximum(h @ np.asarray(params[name]["kernel"]) + np.asarray(params[name]["bias"]), 0)
  expected = h @ np.asarray(params["head"]["kernel"]) + np.asarray(params["head"]["bias"])
  np.testing.assert_allclose(models.logits_fn(model)(params, x), expected, rtol=1e-5, atol=1e-5)


def test_bad_networks_are_refused():
  with pytest.raises(ValueError, match="flat inputs"):
    models.make_network("convnet", num_classes=2, input_shape=(40,))
  with pytest.raises(ValueError, match="too small"):
    models.make_network("convnet", num_classes=2, input_shape=(8, 8, 1), depth=4)
  with pytest.raises(ValueError, match="Unknown network"):
    models.make_network("resnet", num_classes=2, input_shape=(8, 8, 1))


def test_equal_models_share_one_function_object():
  a = models.make_network("auto", num_classes=2, input_shape=(8, 8, 1), width=4)
  b = models.make_network("auto", num_classes=2, input_shape=(8, 8, 1), width=4)
  assert models.logits_fn(a) is models.logits_fn(b)
