"""robust_dd.trajectory: the unrolled student against a NumPy loop, the distance against NumPy,
remat against no remat, the gradient through the unroll against finite differences, experts."""

import jax
from jax.flatten_util import ravel_pytree
import jax.numpy as jnp
import numpy as np
import pytest

from robust_dd import models
from robust_dd import trajectory


def _linear(params, x):
  return x.reshape(x.shape[0], -1) @ params["w"] + params["b"]


def _problem(n=12, d=5, classes=3, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, d)).astype(np.float32)
  y = np.arange(n) % classes
  params = {"w": rng.normal(size=(d, classes)).astype(np.float32) * 0.1,
            "b": np.zeros(classes, np.float32)}
  return x, y, params


def _softmax(z):
  z = z - z.max(-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("batch_size", [0, 5])
def test_unrolled_sgd_equals_a_numpy_loop_with_closed_form_gradients(batch_size):
  """A softmax-regression student: each step's cross-entropy gradient is Xᵀ(softmax − onehot)/B,
  computed in NumPy on the mini-batch the same key draws."""
  x, y, params = _problem()
  key, lr, steps = jax.random.key(3), 0.5, 4
  got = trajectory.unrolled_sgd(_linear, params, jnp.asarray(x), jnp.asarray(y),
                                learning_rate=lr, key=key, steps=steps, batch_size=batch_size)
  w, b = params["w"].astype(np.float64), params["b"].astype(np.float64)
  for i in range(steps):
    k_batch, _ = jax.random.split(jax.random.fold_in(key, i))
    idx = (np.asarray(jax.random.permutation(k_batch, len(x)))[:batch_size] if batch_size
           else np.arange(len(x)))
    xb, yb = x[idx].astype(np.float64), np.eye(3)[y[idx]]
    delta = (_softmax(xb @ w + b) - yb) / len(idx)
    w, b = w - lr * xb.T @ delta, b - lr * delta.sum(0)
  np.testing.assert_allclose(got["w"], w, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got["b"], b, rtol=1e-5, atol=1e-6)


def test_trajectory_distance_matches_numpy():
  rng = np.random.default_rng(1)
  theta, start, target = (rng.normal(size=40).astype(np.float32) for _ in range(3))
  expected = np.sum((theta - target) ** 2) / np.sum((start - target) ** 2)
  np.testing.assert_allclose(trajectory.trajectory_distance(theta, start, target), expected,
                             rtol=1e-6)
  assert trajectory.trajectory_distance(target, start, target) == 0.0


def _mtt_setup():
  model = models.make_network("convnet", num_classes=3, input_shape=(8, 8, 1), depth=1, width=4)
  init = models.init_fn(model, (8, 8, 1))
  start, unravel = ravel_pytree(init(jax.random.key(0)))
  target = ravel_pytree(init(jax.random.key(1)))[0] * 0.1 + start * 0.9
  rng = np.random.default_rng(2)
  images = jnp.asarray(rng.normal(size=(6, 8, 8, 1)).astype(np.float32))
  labels = jnp.arange(6) % 3
  kw = dict(apply_fn=models.logits_fn(model), unravel=unravel, key=jax.random.key(4), steps=5,
            batch_size=4)
  return images, labels, start, target, kw


def test_remat_changes_nothing_but_memory():
  images, labels, start, target, kw = _mtt_setup()

  def value_and_grads(remat):
    return jax.value_and_grad(
        lambda im, lr: trajectory.mtt_loss(im, labels, lr, start, target, remat=remat, **kw),
        argnums=(0, 1))(images, jnp.log(jnp.float32(0.05)))

  plain, remat = value_and_grads(False), value_and_grads(True)
  np.testing.assert_allclose(remat[0], plain[0], rtol=1e-6)
  for a, b in zip(remat[1], plain[1]):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)


def test_gradient_through_the_unroll_matches_finite_differences():
  """Directional derivatives of the MTT loss in the images and in the step size, by central
  differences in float64 (jax.enable_x64), against the unrolled backward pass."""
  with jax.enable_x64(True):
    images, labels, start, target, kw = _mtt_setup()
    images, start, target = (a.astype(jnp.float64) for a in (images, start, target))
    unravel64 = kw["unravel"]
    kw["unravel"] = lambda v: jax.tree_util.tree_map(lambda a: a.astype(jnp.float64),
                                                     unravel64(v))

    def loss(im, lr):
      return trajectory.mtt_loss(im, labels, lr, start, target, **kw)

    lr = jnp.log(jnp.float64(0.05))
    g_images, g_lr = jax.grad(loss, argnums=(0, 1))(images, lr)
    direction = jnp.asarray(np.random.default_rng(5).normal(size=images.shape))
    eps = 1e-5
    numeric = (loss(images + eps * direction, lr) - loss(images - eps * direction, lr)) / (2 * eps)
    np.testing.assert_allclose(jnp.vdot(g_images, direction), numeric, rtol=1e-5)
    numeric_lr = (loss(images, lr + eps) - loss(images, lr - eps)) / (2 * eps)
    np.testing.assert_allclose(g_lr, numeric_lr, rtol=1e-5)


def test_expert_segments_start_before_t_plus_and_end_m_epochs_later():
  experts = jnp.arange(2 * 6 * 1, dtype=jnp.float32).reshape(2, 6, 1)  # value = 6e + t
  for i in range(50):
    seg = trajectory.sample_expert_segment(jax.random.key(i), experts, max_start_epoch=3,
                                           expert_epochs=2)
    e, t = divmod(int(seg["start"][0]), 6)
    assert 0 <= t < 3 and int(seg["target"][0]) == 6 * e + t + 2


def test_experts_record_every_epoch_and_each_is_the_network_its_key_trains_alone():
  x, y, _ = _problem(n=20, d=4)
  model = models.make_network("mlp", num_classes=3, input_shape=(4,), depth=1, width=8)
  kw = dict(apply_fn=models.logits_fn(model), init_fn=models.init_fn(model, (4,)), epochs=3,
            batch_size=8, learning_rate=0.1, momentum=0.5)
  epochs_seen = []
  keys = jnp.stack([jax.random.key(0), jax.random.key(1)])
  both = trajectory.train_experts(keys, jnp.asarray(x), jnp.asarray(y), on_epoch=epochs_seen.append,
                                  **kw)
  assert both.shape[:2] == (2, 4) and epochs_seen == [1, 2, 3]
  np.testing.assert_array_equal(both[1, 0], ravel_pytree(kw["init_fn"](
      jax.random.fold_in(jax.random.key(1), 0)))[0])  # Epoch 0: the initialisation.
  alone = trajectory.train_experts(jax.random.key(1)[None], jnp.asarray(x), jnp.asarray(y), **kw)
  np.testing.assert_allclose(both[1], alone[0], rtol=1e-5, atol=1e-6)
  assert not np.allclose(both[0, -1], both[0, 0])  # The experts moved.
