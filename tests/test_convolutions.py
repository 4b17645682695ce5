"""robust_dd.convolutions: every --conv_impl against lax.conv and independent NumPy convolutions,
in value, gradients and forward mode; the Winograd kernels' multiplication counts from their
jaxprs; the folded conv + InstanceNorm against NumPy and the unfolded form; the 'auto' choice."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxpr_counts  # tests/jaxpr_counts.py
from robust_dd import convolutions
from robust_dd import models


@pytest.mark.parametrize("kernel_size", [1, 3, 5])
def test_patch_convolution_equals_lax_conv(kernel_size):
  kx, kk = jax.random.split(jax.random.key(0))
  x = jax.random.normal(kx, (3, 7, 6, 2))
  kernel = jax.random.normal(kk, (kernel_size, kernel_size, 2, 4))
  expected = jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME",
                                          dimension_numbers=("NHWC", "HWIO", "NHWC"))
  np.testing.assert_allclose(convolutions.conv_patches(x, kernel), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("padding", [0, 2, 3])
def test_padded_patch_convolution_equals_lax_conv(padding):
  kx, kk = jax.random.split(jax.random.key(3))
  x = jax.random.normal(kx, (2, 6, 5, 2))
  kernel = jax.random.normal(kk, (3, 3, 2, 4))
  expected = jax.lax.conv_general_dilated(x, kernel, (1, 1), [(padding, padding)] * 2,
                                          dimension_numbers=("NHWC", "HWIO", "NHWC"))
  out = convolutions.conv_patches(x, kernel, padding)
  assert out.shape == (2, 6 + 2 * padding - 2, 5 + 2 * padding - 2, 4)
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", ["shifted", "winograd", "winograd4"])
@pytest.mark.parametrize("padding", [None, 1, 3])
def test_shifted_and_winograd_convolutions_and_their_gradients_equal_lax_conv(impl, padding):
  """conv_shifted's, conv_winograd's and conv_winograd4's values (odd and even output sizes),
  input and weight gradients (also per class under vmap, with shared weights) and a
  second-order gradient equal those of lax.conv."""
  kx, kk, kg = jax.random.split(jax.random.key(4), 3)
  x = jax.random.normal(kx, (3, 2, 6, 5, 2))  # (classes, n, H, W, C)
  kernel = jax.random.normal(kk, (3, 3, 2, 4))
  pads = "SAME" if padding is None else [(padding, padding)] * 2
  lax = lambda v, k: jax.lax.conv_general_dilated(v, k, (1, 1), pads,
                                                  dimension_numbers=("NHWC", "HWIO", "NHWC"))
  conv = {"shifted": convolutions.conv_shifted, "winograd": convolutions.conv_winograd,
          "winograd4": convolutions.conv_winograd4}[impl]
  shifted = lambda v, k: conv(v, k, padding)
  # Errors as fractions of the largest entry: float32 rounding of different orders of summation
  # (~2e-6), and F(4x4)'s transforms, whose entries reach 5 and 1/24 (~3e-6 of the largest).
  close = lambda got, expected: np.testing.assert_allclose(
      got, expected, rtol=1e-4, atol=1e-5 * max(1.0, np.max(np.abs(expected))))
  assert shifted(x[0], kernel).shape == lax(x[0], kernel).shape
  close(shifted(x[0], kernel), lax(x[0], kernel))
  r = jax.random.normal(kg, lax(x[0], kernel).shape)

  def loss(conv):
    return lambda v, k: jnp.sum(jnp.tanh(conv(v, k)) * r)

  # Every derivative jitted: one compilation each instead of one per operation.
  for argnum in (0, 1):
    close(jax.jit(jax.grad(loss(shifted), argnum))(x[0], kernel),
          jax.jit(jax.grad(loss(lax), argnum))(x[0], kernel))
  per_class = lambda conv: jax.jit(jax.vmap(jax.grad(loss(conv), 1), in_axes=(0, None)))(
      x, kernel)
  close(per_class(shifted), per_class(lax))
  # Reverse over reverse: d/dx <dL/dkernel, kernel>, as the matching loss needs (entries reach
  # ~300 here; both orders of summation agree to 2e-13 in float64).
  second = lambda conv: jax.jit(jax.grad(
      lambda v: jnp.sum(jax.grad(loss(conv), 1)(v, kernel) ** 2)))(x[0])
  close(second(shifted), second(lax))
  if impl != "shifted":  # Forward mode too (LCMat's exact Hessian-vector products).
    tangent = jax.random.normal(kg, kernel.shape)
    jvp = lambda conv: jax.jit(lambda t: jax.jvp(lambda k: conv(x[0], k), (kernel,), (t,))[1])(
        tangent)
    close(jvp(shifted), jvp(lax))


@pytest.mark.parametrize("impl", ["winograd", "winograd4"])
def test_winograd_convolution_matches_an_independent_numpy_convolution(impl):
  """F(2x2, 3x3) and F(4x4, 3x3) against a direct NumPy sum over the 9 taps, at the ConvNet's
  layer sizes (and sides that 4 does not divide)."""
  conv = {"winograd": convolutions.conv_winograd, "winograd4": convolutions.conv_winograd4}[impl]
  rng = np.random.default_rng(0)
  for shape, padding in (((2, 28, 28, 1), 3), ((2, 16, 16, 5), 1), ((1, 9, 7, 3), 0),
                         ((2, 8, 8, 128), 1), ((1, 6, 5, 2), 1)):
    x = rng.normal(size=shape).astype(np.float32)
    kernel = rng.normal(size=(3, 3, shape[-1], 4)).astype(np.float32)
    xp = np.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    h, w = xp.shape[1] - 2, xp.shape[2] - 2
    expected = sum(np.einsum("nhwc,cd->nhwd", xp[:, i:i + h, j:j + w], kernel[i, j])
                   for i in range(3) for j in range(3))
    # F(4x4)'s transforms (entries up to 5 and 1/24) round to ~3e-6 of the largest output.
    np.testing.assert_allclose(conv(x, kernel, padding), expected, rtol=1e-5,
                               atol=1e-5 * max(1.0, np.max(np.abs(expected))))


@pytest.mark.parametrize("impl", ["patches", "shifted", "winograd", "winograd4"])
def test_conv_kernel_grad_equals_an_independent_numpy_weight_gradient(impl):
  """sum_p window_k(x)[p, c] g[p, u] by NumPy over the 9 taps, at odd and even output sizes
  and 'SAME' padding."""
  conv = {"patches": convolutions.conv_patches, "shifted": convolutions.conv_shifted,
          "winograd": convolutions.conv_winograd, "winograd4": convolutions.conv_winograd4}[impl]
  rng = np.random.default_rng(1)
  for shape, padding in (((2, 28, 28, 1), 3), ((3, 16, 16, 5), 1), ((1, 9, 7, 3), 0),
                         ((2, 6, 5, 2), None)):
    x = rng.normal(size=shape).astype(np.float32)
    pad = 1 if padding is None else padding
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    h, w = xp.shape[1] - 2, xp.shape[2] - 2
    g = rng.normal(size=(shape[0], h, w, 4)).astype(np.float32)
    expected = np.stack([np.stack([np.einsum("nhwc,nhwu->cu", xp[:, i:i + h, j:j + w], g)
                                   for j in range(3)]) for i in range(3)])
    got = convolutions.conv_kernel_grad(conv, x, g, (3, 3, shape[-1], 4), padding)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_winograd_backward_pass_has_no_padded_copy_per_component():
  """conv_winograd splits its tiles' rows and components with `lax.split` (transpose: one
  concatenation), not indexing or strided slices, whose transposes are a zero-padded full-size
  copy per slice: 32 pads in its VJP before (plain DC 7-10% slower), 12 now (one per reshaped
  slice of the input, the padding and the crop)."""
  x, kernel = jnp.ones((2, 16, 16, 8)), jnp.ones((3, 3, 8, 4))

  def value_and_vjp(x, kernel):
    y, vjp = jax.vjp(lambda x, k: convolutions.conv_winograd(x, k, 1), x, kernel)
    return vjp(y)

  eqns = jax.make_jaxpr(value_and_vjp)(x, kernel).jaxpr.eqns
  assert sum(e.primitive.name == "pad" for e in eqns) <= 12


@pytest.mark.parametrize("conv", [convolutions.conv_winograd, convolutions.conv_winograd4])
def test_winograd_kernel_gradient_takes_f4x4_multiplications(conv):
  """`conv_kernel_grad` of both Winograd convolutions is F(4x4, 3x3)'s: 36 products per 4x4
  output tile and channel pair (F(2x2)'s VJP: 16 per 2x2 tile, 1.78x as many), and G^T . G back
  to 3x3."""
  x, g = jnp.ones((2, 16, 16, 8)), jnp.ones((2, 16, 16, 4))
  got = jaxpr_counts.multiplications(
      lambda x, g: convolutions.conv_kernel_grad(conv, x, g, (3, 3, 8, 4), 1), x, g)
  assert got == 36 * (2 * 4 * 4) * 8 * 4 + 9 * 36 * 8 * 4


def test_f4x4_convolution_and_its_gradients_take_f4x4_multiplications():
  """conv_winograd4's forward pass multiplies 36 products per 4x4 output tile and channel pair
  (F(2x2): 64), its VJP (input and weight gradients) 36 more each, besides the kernel's
  transform G g G^T and its transpose (9 x 36 per channel pair); F(2x2)'s are 1.78x as many."""
  x, kernel = jnp.ones((2, 16, 16, 8)), jnp.ones((3, 3, 8, 4))
  tiles, pairs = 2 * 4 * 4, 8 * 4

  def value_and_vjp(conv):
    def f(x, kernel):
      y, vjp = jax.vjp(lambda x, k: conv(x, k, 1), x, kernel)
      return vjp(y)
    return jaxpr_counts.multiplications(f, x, kernel)

  transform = 2 * 9 * 36 * pairs
  assert value_and_vjp(convolutions.conv_winograd4) == 3 * 36 * tiles * pairs + transform
  f2 = value_and_vjp(convolutions.conv_winograd) - 2 * 9 * 16 * pairs
  assert f2 == 3 * 16 * (4 * tiles) * pairs


def test_winograd_convolution_refuses_other_kernel_sizes():
  for conv in (convolutions.conv_winograd, convolutions.conv_winograd4):
    with pytest.raises(ValueError, match="3x3"):
      conv(jnp.zeros((1, 5, 5, 1)), jnp.zeros((5, 5, 1, 2)))


def _numpy_conv_instance_norm(x, kernel, conv_bias, scale, bias, padding, eps=1e-5):
  """float64 NumPy: the convolution tap by tap, then instance norm with centred variance."""
  x, kernel = np.asarray(x, np.float64), np.asarray(kernel, np.float64)
  kh, kw, _, cout = kernel.shape
  (top, bottom), (left, right) = convolutions.conv_pads(kh, kw, padding)
  xp = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
  h, w = xp.shape[1] - kh + 1, xp.shape[2] - kw + 1
  y = np.zeros((x.shape[0], h, w, cout)) + np.asarray(conv_bias, np.float64)
  for i in range(kh):
    for j in range(kw):
      y += np.einsum("nhwc,cu->nhwu", xp[:, i:i + h, j:j + w], kernel[i, j])
  centred = y - y.mean((1, 2), keepdims=True)
  return centred / np.sqrt((centred ** 2).mean((1, 2), keepdims=True) + eps) * scale + bias


@pytest.mark.parametrize("channels,padding", [(1, 3), (3, None), (2, 1)])
def test_folded_conv_instance_norm_equals_numpy_and_the_unfolded_form(channels, padding):
  """conv_instance_norm against float64 NumPy (float32), and against instance_norm(conv_patches
  + b) in float64, where they agree to rounding: values, gradients in all five arguments (the
  conv bias's is zero: the norm removes it), reverse over reverse (the matching loss
  differentiates a parameter gradient in the images) and forward mode."""
  ks = jax.random.split(jax.random.key(channels), 6)
  x = jax.random.normal(ks[0], (3, 7, 6, channels)) + 0.5
  args = (x, jax.random.normal(ks[1], (3, 3, channels, 5)), jax.random.normal(ks[2], (5,)),
          1.0 + 0.3 * jax.random.normal(ks[3], (5,)), jax.random.normal(ks[4], (5,)))
  got = convolutions.conv_instance_norm(args[0], args[1], args[3], args[4], padding)
  np.testing.assert_allclose(got, _numpy_conv_instance_norm(*args, padding), rtol=1e-5,
                             atol=1e-5)
  folded = lambda x, k, cb, s, b: convolutions.conv_instance_norm(x, k, s, b, padding)
  unfolded = lambda x, k, cb, s, b: convolutions.instance_norm(
      convolutions.conv_patches(x, k, padding) + cb, s, b)
  with jax.enable_x64(True):
    args = tuple(jnp.asarray(a, jnp.float64) for a in args)
    out = jax.random.normal(ks[5], got.shape, jnp.float64)
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9 * np.abs(b).max())
    close(folded(*args), unfolded(*args))
    grads = [jax.grad(lambda *a, f=f: jnp.sum(out * f(*a)), argnums=range(5))(*args)
             for f in (folded, unfolded)]
    for i, (g_folded, g_unfolded) in enumerate(zip(*grads)):
      if i == 2:  # The conv bias: zero, and rounding noise unfolded.
        np.testing.assert_array_equal(g_folded, 0.0)
        assert np.abs(g_unfolded).max() < 1e-12
      else:
        close(g_folded, g_unfolded)
    twice = [jax.grad(lambda x, f=f: jnp.sum(jax.grad(
        lambda k: jnp.sum(out * f(x, k, *args[2:])))(args[1]) ** 2))(args[0])
             for f in (folded, unfolded)]
    close(*twice)
    tangents = tuple(jax.random.normal(k, a.shape, jnp.float64) for k, a in zip(ks, args))
    close(*[jax.jvp(f, args, tangents)[1] for f in (folded, unfolded)])


def test_folded_per_example_kernel_gradients_equal_per_example_autodiff():
  ks = jax.random.split(jax.random.key(7), 4)
  x = jax.random.normal(ks[0], (4, 6, 5, 2))
  kernel = jax.random.normal(ks[1], (3, 3, 2, 6))
  scale = 1.0 + 0.3 * jax.random.normal(ks[2], (6,))
  g = jax.random.normal(ks[3], (4, 6, 5, 6))
  one = lambda x, g: jax.grad(lambda k: jnp.sum(g * convolutions.conv_instance_norm(
      x[None], k, scale, jnp.zeros(6), 1)[0]))(kernel)
  np.testing.assert_allclose(
      convolutions.conv_instance_norm_kernel_grads(x, kernel, scale, g, 1), jax.vmap(one)(x, g),
      rtol=1e-4, atol=1e-5)


def test_auto_convolution_is_winograd_on_cpu_and_lax_on_accelerators():
  """On CPU 'auto' is Winograd F(4x4) in layers of at least WINOGRAD_MIN_CHANNELS input
  channels and patches in the others: bit for bit the network built with that convolution."""
  assert convolutions.auto_conv_impl("cpu") == "winograd4"
  assert convolutions.auto_conv_impl("gpu") == convolutions.auto_conv_impl("tpu") == "lax"
  wide = convolutions.WINOGRAD_MIN_CHANNELS
  expected = {1: "patches" if jax.default_backend() == "cpu" else convolutions.auto_conv_impl(),
              wide: convolutions.auto_conv_impl()}
  for channels, impl in expected.items():
    shape = (8, 8, channels)
    x = jax.random.normal(jax.random.key(1), (2, *shape))
    auto = models.make_network("convnet", num_classes=3, input_shape=shape, depth=1, width=4)
    chosen = models.make_network("convnet", num_classes=3, input_shape=shape, depth=1, width=4,
                                 conv_impl=impl)
    params = models.init_params(auto, jax.random.key(2), shape)
    np.testing.assert_array_equal(models.logits_fn(auto)(params, x),
                                  models.logits_fn(chosen)(params, x))
  other = models.make_network("convnet", num_classes=3, input_shape=shape, depth=1, width=4,
                              conv_impl="patches" if impl != "patches" else "lax")
  assert not np.array_equal(models.logits_fn(other)(params, x), models.logits_fn(auto)(params, x))
