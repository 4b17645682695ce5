"""robust_dd.select: closed-form last-layer derivatives against autodiff, greedy selections
against brute-force NumPy, block-wise similarities, and every method's output invariants."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robust_dd import data as data_lib
from robust_dd import kernels
from robust_dd import select


def test_closed_form_last_layer_gradient_and_hessian_diagonal_match_autodiff():
  rng = np.random.default_rng(0)
  c, d = 4, 3
  z = rng.normal(size=(5, d)).astype(np.float32)
  labels = np.array([0, 3, 1, 1, 2])
  theta = rng.normal(size=c + c * d).astype(np.float32) * 0.5

  def loss(theta, zi, yi):
    b, w = theta[:c], theta[c:].reshape(c, d)
    logits = w @ zi + b
    return -jax.nn.log_softmax(logits)[yi]

  b, w = theta[:c], theta[c:].reshape(c, d)
  probs = jax.nn.softmax(z @ w.T + b, -1)
  g, h = select.last_layer_grad_hessian(jnp.asarray(z), probs, jnp.asarray(labels))
  for i in range(5):
    np.testing.assert_allclose(g[i], jax.grad(loss)(theta, z[i], labels[i]), atol=1e-5)
    np.testing.assert_allclose(h[i], jnp.diag(jax.hessian(loss)(theta, z[i], labels[i])),
                               atol=1e-5)


def _numpy_facility_location(sim, budget, valid):
  chosen, best = [], np.zeros(len(sim))
  for _ in range(budget):
    gains = np.maximum(sim - best[:, None], 0).sum(0)
    gains[chosen] = -np.inf
    gains[~valid] = -np.inf
    j = int(np.argmax(gains))
    chosen.append(j)
    best = np.maximum(best, sim[:, j])
  return chosen


def test_facility_location_equals_a_brute_force_greedy():
  rng = np.random.default_rng(1)
  for trial in range(3):
    a = rng.normal(size=(30, 4))
    sim = np.exp(-((a[:, None] - a[None]) ** 2).sum(-1)).astype(np.float32)
    valid = np.ones(30, bool)
    if trial == 2:
      valid[25:] = False
      sim = sim * valid[:, None] * valid[None, :]
    got = select.facility_location(jnp.asarray(sim), budget=6, mask=jnp.asarray(valid))
    assert np.asarray(got).tolist() == _numpy_facility_location(sim, 6, valid)


def test_lcmat_similarity_in_blocks_equals_the_direct_formula():
  rng = np.random.default_rng(2)
  g, h = rng.normal(size=(11, 7)).astype(np.float32), rng.normal(size=(11, 3)).astype(np.float32)
  mask = np.ones(11, bool)
  mask[-2:] = False
  got = np.asarray(select.lcmat_similarity(jnp.asarray(g), jnp.asarray(h), eps=0.1, block=4,
                                           mask=jnp.asarray(mask)))
  dist = (np.linalg.norm(g[:, None] - g[None], axis=-1)
          + 0.1 * np.abs(h[:, None] - h[None]).sum(-1))
  pair = mask[:, None] & mask[None, :]
  want = np.where(pair, dist[pair].max() - dist, 0.0)
  np.testing.assert_allclose(got, want, atol=2e-4)
  assert got.min() >= 0


def test_top_variance_coordinates():
  h = np.random.default_rng(3).normal(size=(20, 6)) * np.array([1, 5, 0.1, 3, 0.2, 4])
  got = np.asarray(select.top_variance_coordinates(jnp.asarray(h, jnp.float32), num=3))
  np.testing.assert_allclose(got, h[:, np.argsort(-h.var(0))[:3]], rtol=1e-5)


def test_herding_kcenter_and_nearest_to_centres_match_numpy_greedies():
  x = np.random.default_rng(4).normal(size=(25, 3)).astype(np.float32)
  mu, chosen, total = x.mean(0), [], np.zeros(3)
  for t in range(5):
    cost = [np.inf if i in chosen else np.sum(((total + x[i]) / (t + 1) - mu) ** 2)
            for i in range(25)]
    chosen.append(int(np.argmin(cost)))
    total += x[chosen[-1]]
  assert np.asarray(select.herding(jnp.asarray(x), budget=5)).tolist() == chosen
  got = np.asarray(select.kcenter_greedy(jax.random.key(0), jnp.asarray(x), budget=5)).tolist()
  centres = [got[0]]
  for _ in range(4):
    d = np.min(((x[:, None] - x[centres][None]) ** 2).sum(-1), 1)
    centres.append(int(np.argmax(d)))
  assert got == centres
  # Two centres closest to the same point get distinct points.
  c = np.stack([x[7] + 1e-3, x[7] - 1e-3])
  near = np.asarray(select.nearest_to_centers(jnp.asarray(x), jnp.asarray(c), budget=2))
  assert near[0] == 7 and near[1] != 7


@pytest.fixture(scope="module")
def digits():
  ds = data_lib.load_dataset("digits")
  return ds.x_train.reshape(len(ds.x_train), -1), ds.y_train


@pytest.mark.parametrize("method", select.METHODS)
def test_every_method_picks_distinct_samples_of_each_class(digits, method):
  x, y = digits
  extra = {}
  if method == "lcmat":
    rng = np.random.default_rng(5)
    z = rng.normal(size=(len(y), 6)).astype(np.float32)
    extra["lcmat_inputs"] = (z, jax.nn.softmax(rng.normal(size=(len(y), 10)), -1))
  idx, w = select.select_indices(method, jax.random.key(0), x, y, num_classes=10, budget=3,
                                 kernel_fn=kernels.make_kernel_fn("fc"), dedup_quantile=0.05,
                                 **extra)
  assert idx.shape == (30,) and len(set(idx.tolist())) == 30
  np.testing.assert_array_equal(y[idx], np.repeat(np.arange(10), 3))
  assert np.all(w > 0)
  if method.startswith("sensitivity"):
    # Importance weights estimate class totals: each at least 1, summing near the class size.
    assert np.all(w >= 1 - 1e-5)
  else:
    np.testing.assert_array_equal(w, 1.0)


@pytest.mark.slow
def test_lcmat_vmapped_over_classes_equals_one_class_at_a_time(digits):
  _, y = digits
  rng = np.random.default_rng(6)
  z = rng.normal(size=(len(y), 5)).astype(np.float32)
  probs = jax.nn.softmax(rng.normal(size=(len(y), 10)), -1)
  all_at_once = select.lcmat_select(z, probs, y, num_classes=10, budget=4, num_coords=8)
  batched = select.lcmat_select(z, probs, y, num_classes=10, budget=4, num_coords=8,
                                class_batch=3)
  np.testing.assert_array_equal(all_at_once, batched)
  table, counts = data_lib.class_index_table(y, 10)
  one_class = jax.jit(select.lcmat_class_select, static_argnames=("budget", "num_coords"))
  for c in (0, 9):
    members = table[c, :counts[c]]
    pos = one_class(jnp.asarray(z[members]), probs[members], jnp.asarray(y[members]),
                    jnp.ones(len(members), bool), budget=4, num_coords=8)
    np.testing.assert_array_equal(all_at_once[4 * c:4 * c + 4], members[np.asarray(pos)])


def test_budget_per_class_and_bad_input(digits):
  x, y = digits
  assert select.budget_per_class(0.002, [400] * 10) == 1
  assert select.budget_per_class(0.05, [400] * 10) == 20
  with pytest.raises(ValueError, match="fraction"):
    select.budget_per_class(0.0, [400] * 10)
  with pytest.raises(ValueError, match="Unknown selection method"):
    select.select_indices("best", jax.random.key(0), x, y, num_classes=10, budget=1)
  with pytest.raises(ValueError, match="lcmat_inputs"):
    select.select_indices("lcmat", jax.random.key(0), x, y, num_classes=10, budget=1)
  with pytest.raises(ValueError, match="only"):
    select.select_indices("random", jax.random.key(0), x, y, num_classes=10, budget=1000)


def test_selection_is_compiled_once_per_setting():
  rng = np.random.default_rng(5)
  x, y = rng.normal(size=(30, 4)).astype(np.float32), np.arange(30) % 3
  select.select_indices("herding", jax.random.key(0), x, y, num_classes=3, budget=2)
  # pylint: disable-next=protected-access
  compiled = select._compiled_select("herding", 2, None, 0, None)
  size = compiled._cache_size()
  select.select_indices("herding", jax.random.key(1), x, y, num_classes=3, budget=2)
  assert compiled._cache_size() == size == 1  # The second call reused the compiled program.


def test_every_selection_method_but_lcmat_is_one_picker_in_the_table():
  assert set(select.PICKERS) | {"lcmat"} == set(select.METHODS)
  assert set(select.SAMPLING) <= set(select.PICKERS)
