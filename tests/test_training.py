"""robust_dd.training: cross-entropy, SGD steps and the evaluation optimiser against NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import optax

from robust_dd import models
from robust_dd import training


def _linear(params, x):
  return x @ params["w"] + params["b"]


def _softmax(logits):
  p = np.exp(logits - logits.max(1, keepdims=True))
  return p / p.sum(1, keepdims=True)


def test_default_chunk_is_16_on_cpu_none_elsewhere_and_keeps_explicit_values():
  assert training.default_chunk(None, backend="cpu") == 16
  assert training.default_chunk(None, backend="gpu") == 0
  assert training.default_chunk(0, backend="cpu") == 0
  assert training.default_chunk(5, backend="tpu") == 5


def test_cross_entropy_matches_numpy():
  rng = np.random.default_rng(0)
  logits, labels = rng.normal(size=(6, 4)), rng.integers(0, 4, 6)
  p = _softmax(logits)
  expected = -np.mean(np.log(p[np.arange(6), labels]))
  np.testing.assert_allclose(training.cross_entropy(jnp.asarray(logits, jnp.float32), labels),
                             expected, rtol=1e-5)
  # A scalar label labels every row.
  np.testing.assert_allclose(training.cross_entropy(jnp.asarray(logits, jnp.float32), 2),
                             -np.mean(np.log(p[:, 2])), rtol=1e-5)


@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_loss_and_grad_in_chunks_equals_the_closed_form(loss):
  """`loss_and_grad` of a linear model against its NumPy gradient, in one batch and in chunks
  (one row, uneven chunks with a padded last one, exactly n, more than n), weighted or not."""
  rng = np.random.default_rng(2)
  n = 11
  x = rng.normal(size=(n, 3)).astype(np.float32)
  params = {"w": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32),
            "b": jnp.asarray(rng.normal(size=4), jnp.float32)}
  ids = rng.integers(0, 4, n)
  labels = ids if loss == "ce" else np.eye(4, dtype=np.float32)[ids]
  logits = x @ np.asarray(params["w"], np.float64) + np.asarray(params["b"], np.float64)
  for weights in (None, rng.uniform(size=n) * (rng.uniform(size=n) > 0.3)):
    w = np.ones(n) if weights is None else weights
    if loss == "ce":
      rows = -np.log(_softmax(logits)[np.arange(n), ids])
      dlogits = _softmax(logits) - np.eye(4)[ids]
    else:
      rows = 0.5 * np.sum((logits - labels) ** 2, 1)
      dlogits = logits - labels
    dlogits = w[:, None] * dlogits / w.sum()
    for chunk in (0, 1, 4, n, 20):
      value, grads = training.loss_and_grad(_linear, params, x, labels, weights, loss=loss,
                                            chunk=chunk)
      np.testing.assert_allclose(value, np.sum(w * rows) / w.sum(), rtol=1e-5)
      np.testing.assert_allclose(grads["w"], x.T @ dlogits, rtol=1e-4, atol=1e-6)
      np.testing.assert_allclose(grads["b"], dlogits.sum(0), rtol=1e-4, atol=1e-6)
  # One label for every row (a class's batch), and an all-zero mask: 0, not NaN.
  if loss == "ce":
    one = training.loss_and_grad(_linear, params, x, 2, chunk=4)
    every = training.loss_and_grad(_linear, params, x, np.full(n, 2), chunk=0)
    np.testing.assert_allclose(one[0], every[0], rtol=1e-6)
    value, grads = training.loss_and_grad(_linear, params, x, ids, np.zeros(n), chunk=4)
    assert float(value) == 0.0 and not np.any(np.asarray(grads["w"]))


@pytest.mark.parametrize("chunk", [0, 3])
def test_sgd_steps_equal_manual_gradient_descent(chunk):
  rng = np.random.default_rng(1)
  x, y = rng.normal(size=(8, 3)).astype(np.float32), rng.integers(0, 2, 8)
  params = {"w": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32), "b": jnp.zeros(2)}
  out = training.sgd_steps(_linear, params, x, y, key=jax.random.key(0), steps=3,
                           learning_rate=0.5, chunk=chunk)
  w, b = np.asarray(params["w"], np.float64), np.zeros(2)
  onehot = np.eye(2)[y]
  for _ in range(3):
    g = (_softmax(x @ w + b) - onehot) / len(x)
    w, b = w - 0.5 * x.T @ g, b - 0.5 * g.sum(0)
  np.testing.assert_allclose(out["w"], w, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(out["b"], b, rtol=1e-4, atol=1e-5)


def test_training_with_chunked_gradients_trains_the_same_networks():
  """`train_network(chunk=...)` (the evaluator's default on CPU) trains the networks it trains
  in one batch, to float rounding: 8 SGD steps of a small ConvNet, 3 seeds vmapped, batches of
  12 images in chunks of 5 (two full, one padded) with DSA."""
  from robust_dd import evaluate  # pylint: disable=g-import-not-at-top
  model = models.make_network("convnet", num_classes=3, input_shape=(8, 8, 1), depth=2, width=4)
  rng = np.random.default_rng(3)
  x, y = rng.normal(size=(24, 8, 8, 1)).astype(np.float32), np.arange(24) % 3
  keys = jnp.stack([jax.random.key(i) for i in range(3)])
  kw = dict(apply_fn=models.logits_fn(model), init_fn=models.init_fn(model, (8, 8, 1)),
            epochs=4, batch_size=12, augment=evaluate.dsa_per_sample)
  whole, losses = training.train_network(keys, x, y, **kw)
  chunked, chunked_losses = training.train_network(keys, x, y, chunk=5, **kw)
  np.testing.assert_allclose(chunked_losses, losses, rtol=1e-4)
  for a, b in zip(jax.tree_util.tree_leaves(chunked), jax.tree_util.tree_leaves(whole)):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)
  moved = jax.tree_util.tree_leaves(training.train_network(keys, x, y, **{**kw, "epochs": 0})[0])
  assert not np.allclose(moved[-2], jax.tree_util.tree_leaves(whole)[-2])  # Training moved them.


def test_evaluation_optimizer_is_torch_sgd_with_coupled_decay_and_halving_schedule():
  opt = training.evaluation_optimizer(learning_rate=0.1, momentum=0.9, weight_decay=0.01,
                                      total_steps=4)
  theta = jnp.asarray([1.0, -2.0])
  state = opt.init(theta)
  t, buf, lr = np.array([1.0, -2.0]), np.zeros(2), 0.1
  for step in range(4):
    grad = 2 * theta  # d/dtheta |theta|^2
    updates, state = opt.update(grad, state, theta)
    theta = optax.apply_updates(theta, updates)
    g = 2 * t + 0.01 * t  # torch: weight decay added to the gradient
    buf = 0.9 * buf + g
    t = t - (lr if step < 2 else lr * 0.1) * buf
  np.testing.assert_allclose(theta, t, rtol=1e-5)


def test_train_network_fits_a_separable_problem_and_is_deterministic():
  rng = np.random.default_rng(2)
  centers = rng.normal(size=(3, 6)) * 3
  y = np.repeat(np.arange(3), 20)
  x = (centers[y] + rng.normal(size=(60, 6))).astype(np.float32)
  model = models.make_network("mlp", num_classes=3, input_shape=(6,), depth=1, width=16)
  apply_fn, init = models.logits_fn(model), models.init_fn(model, (6,))
  kw = dict(apply_fn=apply_fn, init_fn=init, epochs=30, batch_size=16, learning_rate=0.05)
  params, losses = training.train_network(jax.random.key(0), x, y, **kw)
  assert losses.shape == (30 * 4,) and losses[-10:].mean() < 0.5 * losses[:4].mean()
  assert training.accuracy(apply_fn, params, x, y) > 0.95
  again, _ = training.train_network(jax.random.key(0), x, y, **kw)
  np.testing.assert_array_equal(again["head"]["kernel"], params["head"]["kernel"])
  # Keys (s,): s networks in one vmap, each the network its key trains alone.
  keys = jnp.stack([jax.random.key(0), jax.random.key(5)])
  both, both_losses = training.train_network(keys, x, y, **kw)
  alone, alone_losses = training.train_network(jax.random.key(5), x, y, **kw)
  assert both_losses.shape == (2, 30 * 4)
  for got, expected in ((0, params), (1, alone)):
    jax.tree_util.tree_map(lambda a, b, i=got: np.testing.assert_allclose(a[i], b, rtol=1e-4,
                                                                          atol=1e-5),
                           both, expected)
  np.testing.assert_allclose(both_losses[1], alone_losses, rtol=1e-4, atol=1e-5)


class _Count:
  def __init__(self):
    self.updates = []

  def update(self, n):
    self.updates.append(n)


@pytest.mark.parametrize("many", [False, True])
def test_training_in_chunks_for_progress_trains_the_same_networks(many):
  """With a progress counter, training runs in equal chunks of whole epochs (30 epochs: 15 of
  2), reporting each; the networks and losses are those of one call, bit for bit (the same
  steps, batches and augmentation keys, fold_in(loop key, step))."""
  rng = np.random.default_rng(4)
  y = np.repeat(np.arange(3), 10)
  x = (rng.normal(size=(30, 5)) + y[:, None]).astype(np.float32)
  model = models.make_network("mlp", num_classes=3, input_shape=(5,), depth=1, width=8)
  kw = dict(apply_fn=models.logits_fn(model), init_fn=models.init_fn(model, (5,)), epochs=30,
            batch_size=8, learning_rate=0.05)
  key = jnp.stack([jax.random.key(1), jax.random.key(2)]) if many else jax.random.key(1)
  whole, whole_losses = training.train_network(key, x, y, **kw)
  count = _Count()
  chunked, chunked_losses = training.train_network(key, x, y, progress=count, **kw)
  assert count.updates == [2] * 15 and training._chunks(30) == 15 and training._chunks(7) == 7
  np.testing.assert_array_equal(chunked_losses, whole_losses)
  jax.tree_util.tree_map(np.testing.assert_array_equal, chunked, whole)


def test_predict_in_padded_batches_equals_one_call():
  x = np.random.default_rng(3).normal(size=(23, 4)).astype(np.float32)
  params = {"w": jnp.ones((4, 2)), "b": jnp.arange(2.0)}
  np.testing.assert_allclose(training.predict(_linear, params, x, batch_size=10),
                             _linear(params, x), rtol=1e-6)


def test_prototype_robust_loss_matches_numpy_and_its_cvar_reaches_the_gradient():
  from robust_dd import risk  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(20, 5)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 3, 20))
  protos = jnp.asarray(rng.normal(size=(4, 5)), jnp.float32)
  params = {"w": jnp.asarray(rng.normal(size=(5, 3)), jnp.float32), "b": jnp.zeros(3)}
  embed = lambda p, v: jnp.tanh(v @ p["w"])  # The embedding depends on the parameters.
  kw = dict(tail_fraction=0.3, robust_weight=0.7)
  loss = training.prototype_robust_loss(_linear, embed, params, x, y, protos, **kw)
  # NumPy: assign in the embedding, mean cross-entropy per non-empty cluster, CVaR by brute force.
  w = np.asarray(params["w"])
  feats, pf = np.tanh(np.asarray(x) @ w), np.tanh(np.asarray(protos) @ w)
  ids = np.argmin(((feats[:, None] - pf[None]) ** 2).sum(-1), 1)
  logits = np.asarray(x) @ w
  logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
  ce = -logp[np.arange(20), np.asarray(y)]
  means = np.array([ce[ids == k].mean() for k in range(4) if (ids == k).any()])
  p = np.full(len(means), 1.0 / len(means))
  etas = np.concatenate([means, [0.0]])
  cvar = min(e + np.sum(p * np.maximum(means - e, 0)) / kw["tail_fraction"] for e in etas)
  expected = (1 - kw["robust_weight"]) * means.mean() + kw["robust_weight"] * cvar
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  # The CVaR is differentiable: the gradient is the robust objective's, not plain ERM's.
  grad = jax.grad(lambda q: training.prototype_robust_loss(_linear, embed, q, x, y, protos,
                                                           **kw))(params)
  mean_only = jax.grad(lambda q: training.prototype_robust_loss(
      _linear, embed, q, x, y, protos, tail_fraction=1.0, robust_weight=0.0))(params)
  assert not np.allclose(grad["w"], mean_only["w"], atol=1e-4)
  del risk
