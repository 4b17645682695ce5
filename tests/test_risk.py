"""CVaR against its variational definition, its gradient support, and the per-cluster vmap."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robust_dd import risk


def brute_force_cvar(losses, alpha, p=None):
  """min over eta of eta + (1/alpha) sum_k p_k (L_k - eta)_+, in float64. The objective is convex
  and piecewise linear in eta, so its minimum is at one of the L_k."""
  losses = np.asarray(losses, np.float64)
  p = np.full(len(losses), 1 / len(losses)) if p is None else np.asarray(p, np.float64) / np.sum(p)
  return min(eta + np.sum(p * np.maximum(losses - eta, 0.0)) / alpha for eta in losses)


@pytest.mark.parametrize("weighted", [False, True])
def test_cvar_equals_brute_force(weighted):
  rng = np.random.default_rng(0)
  for trial in range(20):
    k = int(rng.integers(1, 12))
    losses = rng.normal(size=k).astype(np.float32)
    p = rng.random(k).astype(np.float32) + 0.01 if weighted else None
    for alpha in (0.01, 0.1, 0.2, 0.37, 0.5, 0.9, 1.0):
      got = float(risk.cvar_jit(jnp.asarray(losses), tail_fraction=alpha,
                                weights=None if p is None else jnp.asarray(p)))
      np.testing.assert_allclose(got, brute_force_cvar(losses, alpha, p), rtol=1e-6, atol=1e-6)


def test_cvar_limits_mean_and_worst():
  losses = jnp.asarray([0.3, 2.0, -1.0, 0.7])
  p = jnp.asarray([0.1, 0.2, 0.3, 0.4])
  np.testing.assert_allclose(risk.cvar(losses, tail_fraction=1.0, weights=p),
                             float(jnp.sum(p * losses)), rtol=1e-6)
  np.testing.assert_allclose(risk.cvar(losses, tail_fraction=0.05, weights=p), 2.0, rtol=1e-6)
  # A zero-mass cluster never counts, however large its loss.
  np.testing.assert_allclose(
      risk.cvar(jnp.asarray([100.0, 1.0, 0.0]), tail_fraction=0.5,
                weights=jnp.asarray([0.0, 1.0, 1.0])), 1.0, rtol=1e-6)


def test_cvar_gradient_is_nonzero_exactly_on_the_tail():
  rng = np.random.default_rng(1)
  losses = jnp.asarray(rng.permutation(10).astype(np.float32))  # Distinct: no ties.
  p = jnp.full((10,), 0.1)
  # alpha = 0.25: the worst two clusters fully (mass 0.1 each), the third with mass 0.05.
  grad = np.asarray(jax.grad(lambda l: risk.cvar(l, tail_fraction=0.25, weights=p))(losses))
  order = np.argsort(-np.asarray(losses))
  expected = np.zeros(10)
  expected[order[:2]] = 0.1 / 0.25
  expected[order[2]] = 0.05 / 0.25
  np.testing.assert_allclose(grad, expected, rtol=1e-6, atol=1e-7)
  assert set(np.flatnonzero(grad)) == set(order[:3])


def test_robust_objective_interpolates_mean_and_cvar():
  losses = jnp.asarray([1.0, 4.0, 2.0, 3.0])
  mean, tail = 2.5, risk.cvar(losses, tail_fraction=0.5)
  np.testing.assert_allclose(tail, 3.5, rtol=1e-6)
  for lam in (0.0, 0.3, 1.0):
    np.testing.assert_allclose(
        risk.robust_objective_jit(losses, tail_fraction=0.5, robust_weight=lam),
        (1 - lam) * mean + lam * 3.5, rtol=1e-6)
  with pytest.raises(ValueError, match="tail_fraction"):
    risk.cvar(losses, tail_fraction=0.0)
  with pytest.raises(ValueError, match="robust_weight"):
    risk.robust_objective(losses, tail_fraction=0.5, robust_weight=1.5)


def test_worst_group_and_group_accuracies():
  correct = np.array([1, 0, 1, 1, 0, 1], bool)
  groups = np.array([0, 0, 1, 1, 2, 2])
  accs, counts = risk.group_accuracies(correct, groups, num_groups=4)
  np.testing.assert_allclose(accs[:3], [0.5, 1.0, 0.5])
  assert np.isnan(accs[3]) and counts.tolist() == [2, 2, 2, 0]
  assert risk.worst_group(accs, counts=counts) == 0.5


def test_cluster_index_table_and_masked_sampling():
  ids = np.array([2, 0, 2, 1, 0, 2, 2])
  table, counts = jax.jit(lambda i: risk.cluster_index_table(i, 4, width=5))(jnp.asarray(ids))
  assert counts.tolist() == [2, 1, 4, 0]
  for k in range(4):
    assert sorted(np.asarray(table[k, :counts[k]]).tolist()) == np.flatnonzero(ids == k).tolist()
  idx, mask = risk.sample_cluster_batch(jax.random.key(0), table, counts, per_cluster=3)
  assert mask.tolist() == [[True, True, False], [True, False, False], [True] * 3, [False] * 3]
  for k in range(4):
    members = np.asarray(idx[k])[np.asarray(mask[k])]
    assert len(set(members.tolist())) == len(members)  # Distinct.
    assert all(ids[i] == k for i in members)


def test_per_cluster_losses_vmap_equals_loop():
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=(5, 7, 3)), jnp.float32)
  mask = jnp.asarray(rng.random((5, 7)) > 0.3)
  w = jnp.asarray(rng.normal(size=3), jnp.float32)

  def loss_fn(w, xk, mk):
    return jnp.sum(mk * (xk @ w) ** 2) / jnp.maximum(mk.sum(), 1)

  vmapped = risk.map_clusters(loss_fn, w, x, mask)
  looped = [loss_fn(w, x[k], mask[k]) for k in range(5)]
  np.testing.assert_allclose(vmapped, looped, rtol=1e-6)
  xn, mn, wn = np.asarray(x), np.asarray(mask), np.asarray(w)
  expected = [np.sum(mn[k] * (xn[k] @ wn) ** 2) / max(mn[k].sum(), 1) for k in range(5)]
  np.testing.assert_allclose(vmapped, expected, rtol=1e-5)


def test_per_cluster_losses_from_ids_equal_a_numpy_loop():
  rng = np.random.default_rng(3)
  x = rng.normal(size=(30, 4)).astype(np.float32)
  ids = rng.integers(0, 6, 30)
  ids[ids == 5] = 0  # Cluster 5 is empty.
  w = rng.normal(size=4).astype(np.float32)

  def loss_fn(w, xk, mk):  # Masked mean squared projection.
    return jnp.sum(mk * (xk @ w) ** 2) / jnp.maximum(mk.sum(), 1)

  got = risk.per_cluster_losses(loss_fn, jnp.asarray(w), jnp.asarray(x), ids, num_clusters=6)
  expected = [np.mean((x[ids == k] @ w) ** 2) if np.any(ids == k) else 0.0 for k in range(6)]
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  looped = [loss_fn(jnp.asarray(w), jnp.asarray(x[ids == k]), jnp.ones(np.sum(ids == k)))
            for k in range(6)]
  np.testing.assert_allclose(got, looped, rtol=1e-6)


def test_jitted_aliases_keep_floats_traced():
  losses = jnp.asarray([0.3, 1.2, 0.5, 0.9, 0.1, 0.7, 0.4])  # A shape no other test uses.
  before = risk.robust_objective_jit._cache_size()
  for alpha, lam in ((0.25, 0.5), (0.5, 0.1), (1.0, 1.0)):
    np.testing.assert_allclose(
        risk.robust_objective_jit(losses, tail_fraction=alpha, robust_weight=lam),
        risk.robust_objective(losses, tail_fraction=alpha, robust_weight=lam), rtol=1e-6)
  assert risk.robust_objective_jit._cache_size() == before + 1
  np.testing.assert_allclose(risk.cvar_jit(losses[:4], tail_fraction=0.5), 1.05, rtol=1e-6)


def test_group_mean_losses_match_numpy_and_carry_gradients():
  rng = np.random.default_rng(3)
  losses, ids = rng.random(12).astype(np.float32), rng.integers(0, 4, 12)
  ids[ids == 2] = 1  # Group 2 is empty.
  means, counts = risk.group_mean_losses(jnp.asarray(losses), jnp.asarray(ids), num_groups=4)
  expected = [losses[ids == k].mean() if (ids == k).any() else 0.0 for k in range(4)]
  np.testing.assert_allclose(means, expected, rtol=1e-6)
  np.testing.assert_array_equal(counts, np.bincount(ids, minlength=4))
  grad = jax.grad(lambda l: risk.group_mean_losses(l, jnp.asarray(ids), num_groups=4)[0][0])(
      jnp.asarray(losses))
  np.testing.assert_allclose(grad, (ids == 0) / max((ids == 0).sum(), 1), rtol=1e-6)
