"""robust_dd.augment: the siamese property, each op against its definition, gradients, jit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from robust_dd import augment


def _images(n=5, h=8, w=8, c=3, seed=0):
  return jax.random.uniform(jax.random.key(seed), (n, h, w, c), minval=0.1, maxval=1.0)


@pytest.mark.parametrize("op", augment.OPS)
def test_same_key_same_transform_whatever_the_batch(op):
  real, syn = _images(7, seed=1), _images(2, seed=2)
  for i in range(4):
    key = jax.random.key(i)
    both = augment.dsa(key, jnp.concatenate([real, syn]), ops=(op,))
    np.testing.assert_allclose(augment.dsa(key, real, ops=(op,)), both[:7], atol=1e-6)
    np.testing.assert_allclose(augment.dsa(key, syn, ops=(op,)), both[7:], atol=1e-6)


def test_flip_is_identity_or_mirror_for_the_whole_batch():
  x = _images()
  seen = set()
  for i in range(12):
    y = np.asarray(augment.dsa(jax.random.key(i), x, ops=("flip",)))
    flipped = np.allclose(y, np.asarray(x)[:, :, ::-1])
    assert flipped or np.allclose(y, x)
    seen.add(flipped)
  assert seen == {True, False}


def _shift(x, dx, dy):
  out = np.zeros_like(x)
  h, w = x.shape[1:3]
  for i in range(h):
    for j in range(w):
      if 0 <= i + dx < h and 0 <= j + dy < w:
        out[:, i, j] = x[:, i + dx, j + dy]
  return out


def test_crop_is_a_zero_filled_shift_of_at_most_one_eighth():
  x = np.asarray(_images(h=16, w=16))
  for i in range(8):
    y = np.asarray(augment.dsa(jax.random.key(i), x, ops=("crop",)))
    matches = [(dx, dy) for dx in range(-2, 3) for dy in range(-2, 3)
               if np.allclose(y, _shift(x, dx, dy))]
    assert len(matches) == 1


def test_per_sample_crop_shifts_each_sample_on_its_own():
  x = np.asarray(_images(n=16, h=16, w=16))
  y = np.asarray(augment.dsa(jax.random.key(0), x, ops=("crop",), per_sample=True))
  shifts = []
  for k in range(16):
    m = [(dx, dy) for dx in range(-2, 3) for dy in range(-2, 3)
         if np.allclose(y[k:k + 1], _shift(x[k:k + 1], dx, dy))]
    assert len(m) == 1
    shifts.append(m[0])
  assert len(set(shifts)) > 3


def test_cutout_zeroes_one_square_of_half_the_side():
  x = np.asarray(_images(n=2, h=8, w=8, c=1))
  for i in range(10):
    y = np.asarray(augment.dsa(jax.random.key(i), x, ops=("cutout",)))
    zero = (y[0, :, :, 0] == 0)
    assert np.array_equal(zero, y[1, :, :, 0] == 0)  # Same square for the whole batch.
    rows, cols = np.flatnonzero(zero.any(1)), np.flatnonzero(zero.any(0))
    assert zero.sum() == len(rows) * len(cols) and 1 <= len(rows) <= 4 and 1 <= len(cols) <= 4
    assert np.all(np.diff(rows) == 1) and np.all(np.diff(cols) == 1)
    np.testing.assert_allclose(y[:, ~zero], x[:, ~zero])


@pytest.mark.parametrize("op,params", [("rotate", augment.DSAParams(rotate_degrees=0.0)),
                                       ("scale", augment.DSAParams(scale=1.0))])
def test_affine_ops_at_zero_strength_are_the_identity(op, params):
  x = _images()
  np.testing.assert_allclose(augment.dsa(jax.random.key(3), x, ops=(op,), params=params), x,
                             atol=1e-5)


def test_rotate_by_90_degrees_matches_numpy_rot90():
  x = np.asarray(_images(n=1, h=7, w=7, c=1))
  theta = jnp.asarray([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0]])  # cos 90, -sin 90; sin 90, cos 90.
  y = np.asarray(augment._affine(jnp.asarray(x), theta))
  # Output (r, c) samples source (row = u-coordinate, col = -v): a transpose then column flip.
  expected = np.transpose(x, (0, 2, 1, 3))[:, ::-1, :, :]
  assert np.allclose(y, expected, atol=1e-5) or np.allclose(y, x[:, :, ::-1].transpose(0, 2, 1, 3),
                                                            atol=1e-5)


def test_colour_keeps_single_channel_saturation_and_is_affine():
  x = _images(c=1)
  key = jax.random.key(4)
  f = lambda v: augment.dsa(key, v, ops=("color",))
  # Affine in x: f(a) + f(b) - f(0) = f(a + b) (brightness adds, contrast/saturation scale).
  a, b, zero = x, _images(c=1, seed=9), jnp.zeros_like(x)
  np.testing.assert_allclose(f(a) + f(b) - f(zero), f(a + b), atol=1e-5)


@pytest.mark.parametrize("op", augment.OPS)
def test_gradients_in_the_images(op):
  x = _images(n=2, h=6, w=6, c=2)
  w = jax.random.normal(jax.random.key(7), x.shape)
  with jax.enable_x64(True):
    f = jax.jit(lambda v: jnp.sum(augment.dsa(jax.random.key(5), v, ops=(op,)) * w))
    check_grads(f, (jnp.asarray(x, jnp.float64),), order=1, modes=["rev"])


def test_jit_and_vmap_agree_with_eager():
  x = _images()
  keys = jax.random.split(jax.random.key(0), 3)
  eager = jnp.stack([augment.dsa(k, x) for k in keys])
  batched = jax.jit(jax.vmap(lambda k: augment.dsa(k, x)))(keys)
  np.testing.assert_allclose(batched, eager, atol=1e-5)


def test_bad_input_is_refused():
  with pytest.raises(ValueError, match="NHWC"):
    augment.dsa(jax.random.key(0), jnp.zeros((3, 10)))
  with pytest.raises(ValueError, match="Unknown"):
    augment.dsa(jax.random.key(0), _images(), ops=("mixup",))
