"""robust_dd.models: logits = head(embed); shapes; the folded first layer; the
cross-architecture networks' parameter counts against the reference definitions (counted here from
the layer lists of the DC code's networks.py) and that each learns a separable problem; errors."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxpr_counts  # tests/jaxpr_counts.py
from robust_dd import models


def test_instance_norm_is_flaxs_bit_for_bit():
  x = 3.0 * jax.random.normal(jax.random.key(0), (3, 6, 5, 4)) + 1.0
  scale, bias = jax.random.normal(jax.random.key(1), (2, 4))
  flax_norm = nn.InstanceNorm(epsilon=1e-5)
  ours = models.InstanceNorm(epsilon=1e-5)
  init = lambda m: jax.tree_util.tree_map(np.asarray, m.init(jax.random.key(2), x)["params"])
  jax.tree_util.tree_map(np.testing.assert_array_equal, init(ours), init(flax_norm))
  params = {"params": {"scale": scale, "bias": bias}}
  np.testing.assert_array_equal(jax.jit(lambda x: ours.apply(params, x))(x),
                                jax.jit(lambda x: flax_norm.apply(params, x))(x))


def test_convnet_folds_the_narrow_first_layer_and_its_norm_and_nothing_else():
  """fold_norm=True computes conv0 + norm0 (9 patch features) by conv_instance_norm: the same
  logits and gradients as fold_norm=False (to float rounding), one instance-norm mean over a
  (n, 32, 32, width) output fewer; wide and Winograd layers are not folded."""
  model = models.make_network("convnet", num_classes=3, input_shape=(28, 28, 1), width=8)
  unfolded = model.clone(fold_norm=False)
  params = models.init_params(model, jax.random.key(0), (28, 28, 1))
  x = jax.random.normal(jax.random.key(1), (2, 28, 28, 1))
  logits = lambda m: jax.jit(models.logits_fn(m))
  np.testing.assert_allclose(logits(model)(params, x), logits(unfolded)(params, x), rtol=1e-5,
                             atol=1e-5)
  grad = lambda m: jax.grad(lambda p: jnp.sum(models.logits_fn(m)(p, x) ** 2))(params)
  flat = lambda m: {jax.tree_util.keystr(path): g for path, g in
                    jax.tree_util.tree_leaves_with_path(grad(m))}
  folded_grads, grads = flat(model), flat(unfolded)
  np.testing.assert_array_equal(folded_grads["['conv0']['bias']"], 0.0)
  for name, g in folded_grads.items():
    if not (name.startswith("['conv") and name.endswith("['bias']")):  # The norms remove those.
      np.testing.assert_allclose(g, grads[name], rtol=1e-3, atol=1e-4 * np.abs(grads[name]).max())

  def wide_means(m):  # Reductions over a whole (n, 32, 32, 8) map: instance-norm statistics.
    jaxpr = jax.make_jaxpr(models.logits_fn(m))(params, x)
    return sum(e.primitive.name == "reduce_sum" and e.invars[0].aval.shape == (2, 32, 32, 8)
               for e in jaxpr.eqns)
  assert wide_means(unfolded) == 2 and wide_means(model) == 0
  conv = models.PatchConv(8, padding=1, impl="winograd4", winograd_min_channels=32)
  assert conv.folds(1) and conv.folds(3) and not conv.folds(32)
  assert not models.PatchConv(8, impl="winograd4").folds(1)
  assert not models.PatchConv(8, impl="patches").folds(4)  # 36 features.


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


@pytest.mark.parametrize("shape,padding,features", [((28, 28, 1), "reference", 4 * 4 * 8),
                                                    ((28, 28, 1), "same", 3 * 3 * 8),
                                                    ((32, 32, 3), "reference", 4 * 4 * 8),
                                                    ((8, 8, 1), "reference", 8)])
@pytest.mark.slow
def test_convnet_embed_shape_and_head(shape, padding, features):
  model = models.make_network("auto", num_classes=10, input_shape=shape, depth=3, width=8,
                              padding=padding)
  assert isinstance(model, models.ConvNet)
  params = models.init_params(model, jax.random.key(0), shape)
  x = jax.random.normal(jax.random.key(1), (2, *shape))
  z = jax.jit(models.embed_fn(model))(params, x)  # Jitted: one compilation, not one per op.
  assert z.shape == (2, features)
  head = params["head"]
  np.testing.assert_allclose(jax.jit(models.logits_fn(model))(params, x),
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


# ------------------------------------------------------------------ cross-architecture networks


def _conv(cin, cout, k, bias=True):
  return cin * cout * k * k + (cout if bias else 0)


def _reference_count(name: str, channels: int, classes: int = 10) -> int:
  """Parameters of the DC code's networks.py definition (instance norm = GroupNorm(C, C) with
  affine: 2C), on 28x28 one-channel or 32x32 inputs, counted from its layer lists."""
  if name == "convnet":  # ConvNet(width 128, depth 3, instancenorm, avgpooling), 4x4 maps left.
    return (_conv(channels, 128, 3) + 2 * _conv(128, 128, 3) + 3 * 2 * 128
            + 128 * 16 * classes + classes)
  if name == "alexnet":
    convs = [(channels, 128, 5), (128, 192, 5), (192, 256, 3), (256, 192, 3), (192, 192, 3)]
    return sum(_conv(*c) for c in convs) + 192 * 4 * 4 * classes + classes
  if name == "vgg11":
    widths = [64, 128, 256, 256, 512, 512, 512, 512]
    total, cin = 0, channels
    for w in widths:
      total += _conv(cin, w, 3) + 2 * w
      cin = w
    return total + 512 * classes + classes
  if name == "resnet18":
    total = _conv(channels, 64, 3, bias=False) + 2 * 64
    cin = 64
    for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
      for block in range(2):
        s = stride if block == 0 else 1
        total += _conv(cin, planes, 3, False) + 2 * planes + _conv(planes, planes, 3, False)
        total += 2 * planes
        if s != 1 or cin != planes:
          total += _conv(cin, planes, 1, False) + 2 * planes
        cin = planes
    return total + 512 * classes + classes
  raise ValueError(name)


def _vit_count(channels: int, tokens: int, classes: int = 10, dim=128, depth=4, mlp=256) -> int:
  """The ViT documented in models.ViT: patch embedding (4x4), class token, positions, blocks of
  [LN, attention (q, k, v, out with biases), LN, MLP], final LN, head."""
  block = 2 * 2 * dim + 4 * (dim * dim + dim) + (dim * mlp + mlp) + (mlp * dim + dim)
  return ((16 * channels * dim + dim) + dim + (tokens + 1) * dim + depth * block + 2 * dim
          + dim * classes + classes)


def _count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


@pytest.mark.parametrize("shape", [(28, 28, 1), (32, 32, 3)])
@pytest.mark.parametrize("name", ["convnet", "alexnet", "vgg11", "resnet18", "vit"])
def test_parameter_counts_match_the_reference_definitions(name, shape):
  model = models.make_network(name, num_classes=10, input_shape=shape)
  params = jax.eval_shape(lambda k: models.init_params(model, k, shape), jax.random.key(0))
  expected = (_vit_count(shape[-1], (shape[0] // 4) ** 2) if name == "vit"
              else _reference_count(name, shape[-1]))
  assert _count(params) == expected
  embed = jax.eval_shape(models.embed_fn(model), params, jnp.zeros((2, *shape)))
  width = {"convnet": 2048, "alexnet": 3072, "vgg11": 512, "resnet18": 512, "vit": 128}[name]
  assert embed.shape == (2, width)


def _separable(n, size, seed=0):
  """Two classes: a bright left or right half, plus noise."""
  rng = np.random.default_rng(seed)
  y = np.arange(n) % 2
  x = rng.normal(0.0, 0.3, (n, size, size, 1)).astype(np.float32)
  x[y == 0, :, : size // 2] += 2.0
  x[y == 1, :, size // 2:] += 2.0
  return x, y


@pytest.mark.slow
@pytest.mark.parametrize("name", [pytest.param("alexnet", marks=pytest.mark.extended), "vit"])
def test_network_fits_a_separable_problem(name):
  """Trained on 16 8x8 images (the evaluation schedule, 10 epochs), the network fits them."""
  from robust_dd import training  # pylint: disable=g-import-not-at-top
  x, y = _separable(16, 8)
  model = models.make_network(name, num_classes=2, input_shape=x.shape[1:])
  f = models.logits_fn(model)
  params, _ = training.train_network(
      jax.random.key(0), x, y, apply_fn=f, init_fn=models.init_fn(model, x.shape[1:]),
      epochs=10, batch_size=8, learning_rate=0.01, momentum=0.9, weight_decay=0.0)
  assert float(training.cross_entropy(f(params, x), y)) < 0.1
  assert training.accuracy(f, params, x, y) == 1.0


@pytest.mark.slow
@pytest.mark.parametrize("name,size", [("resnet18", 16), ("vgg11", 32), ("alexnet", 8)])
def test_every_parameter_gets_a_gradient_and_a_step_lowers_the_loss(name, size):
  """ResNet-18 and VGG-11 are too slow to train in the CPU suite (XLA optimisations off), and
  AlexNet's training (above) is in the extended tier: one gradient reaches every parameter
  tensor, and a small step lowers the loss on a separable batch."""
  from robust_dd import training  # pylint: disable=g-import-not-at-top
  x, y = _separable(4, size)
  model = models.make_network(name, num_classes=2, input_shape=x.shape[1:])
  f = models.logits_fn(model)
  params = models.init_params(model, jax.random.key(0), x.shape[1:])
  loss_fn = lambda p: training.cross_entropy(f(p, x), y)
  loss = jax.jit(loss_fn)  # Jitted, as is the gradient below: 2.5x less time than eager.
  value, grads = jax.jit(jax.value_and_grad(loss_fn))(params)
  assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree_util.tree_leaves(grads))
  stepped = jax.tree_util.tree_map(lambda p, g: p - 1e-3 * g, params, grads)
  assert float(loss(stepped)) < float(value)


def test_reference_padding_only_changes_one_channel_28x28_inputs():
  for shape in ((8, 8, 1), (32, 32, 3)):
    a = models.make_network("convnet", num_classes=2, input_shape=shape, padding="reference")
    b = models.make_network("convnet", num_classes=2, input_shape=shape, padding="same")
    assert a == b
  ref = models.make_network("vgg11", num_classes=2, input_shape=(28, 28, 1))
  assert ref.first_padding == 3
  with pytest.raises(ValueError, match="too small"):
    models.make_network("vgg11", num_classes=2, input_shape=(8, 8, 1))
  with pytest.raises(ValueError, match="padding"):
    models.make_network("convnet", num_classes=2, input_shape=(8, 8, 1), padding="valid")


def test_relu_avg_pool_is_flaxs_bit_for_bit_with_its_gradient():
  x = jax.random.normal(jax.random.key(0), (3, 8, 6, 5)).at[0, 0, 0].set(0.0)  # A tie at 0.
  reference = lambda x: nn.avg_pool(nn.relu(x), (2, 2), strides=(2, 2))
  out = jax.random.normal(jax.random.key(1), (3, 4, 3, 5))
  for f in (lambda g: g, jax.jit):
    np.testing.assert_array_equal(f(models.relu_avg_pool)(x), f(reference)(x))
    grad = lambda pool: f(jax.grad(lambda x: jnp.sum(out * pool(x))))(x)
    np.testing.assert_array_equal(grad(models.relu_avg_pool), grad(reference))
