"""robust_dd.sensitivity: scores against explicit formulas, sampling frequencies (chi-square),
unbiased weighted estimators, Nyström convergence, near-duplicate removal."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robust_dd import data as data_lib
from robust_dd import sensitivity

# Upper 0.1% point of the chi-square distribution with 4 and 5 degrees of freedom.
CHI2_999 = {4: 18.47, 5: 20.52}


def _rbf(a, b, scale=4.0):
  a, b = jnp.asarray(a), jnp.asarray(b)
  return jnp.exp(-jnp.sum((a[:, None] - b[None]) ** 2, -1) / scale)


def test_kmeans_sensitivity_matches_the_formula_with_a_mask():
  rng = np.random.default_rng(0)
  x, centers = rng.normal(size=(12, 3)), rng.normal(size=(3, 3))
  mask = np.ones(12, bool)
  mask[[2, 7]] = False
  got = np.asarray(sensitivity.kmeans_sensitivity(x, centers, mask=mask))
  d2 = ((x[:, None] - centers[None]) ** 2).sum(-1)
  near, dist = d2.argmin(1), d2.min(1) * mask
  sizes = np.array([np.sum(mask & (near == j)) for j in range(3)])
  want = np.where(mask, dist / dist.sum() + 1.0 / np.maximum(sizes[near], 1), 0.0)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_ridge_leverage_scores_match_the_explicit_formula():
  x = np.random.default_rng(1).normal(size=(25, 4))
  k = np.asarray(_rbf(x, x), np.float64)
  for lam in (1e-2, 0.5):
    got = np.asarray(sensitivity.ridge_leverage_scores(k, ridge=lam))
    want = np.diag(k @ np.linalg.inv(k + lam * np.eye(25)))
    np.testing.assert_allclose(got, want, atol=2e-5)
    assert np.all(got >= -1e-6) and np.all(got < 1)
  with pytest.raises(ValueError, match="ridge"):
    sensitivity.ridge_leverage_scores(k, ridge=0.0)


def test_feature_scores_are_exact_for_an_exact_factorisation():
  phi = np.random.default_rng(2).normal(size=(30, 6)).astype(np.float32)
  exact = sensitivity.ridge_leverage_scores(phi @ phi.T, ridge=0.3)
  np.testing.assert_allclose(sensitivity.feature_leverage_scores(phi, ridge=0.3), exact,
                             atol=1e-4)


@pytest.mark.slow
def test_nystrom_scores_converge_to_the_exact_ones_as_rank_grows():
  x = jnp.asarray(np.random.default_rng(3).normal(size=(60, 3)), jnp.float32)
  exact = np.asarray(sensitivity.ridge_leverage_scores(_rbf(x, x), ridge=0.05))
  scores = jax.jit(lambda key, rank: sensitivity.nystrom_leverage_scores(
      key, x, _rbf, rank=rank, ridge=0.05), static_argnums=1)  # One compilation per rank.
  errors = []
  for rank in (4, 15, 60):
    errs = [np.abs(np.asarray(scores(jax.random.key(s), rank)) - exact).max() for s in range(4)]
    errors.append(np.mean(errs))
  assert errors[0] > errors[1] > errors[2]
  assert errors[2] < 1e-3  # All points as landmarks: the exact kernel.


def _chi2(counts, probs):
  expected = counts.sum() * probs
  return float(np.sum((counts - expected) ** 2 / expected))


def test_sampling_frequencies_match_the_requested_probabilities():
  p = np.array([0.05, 0.1, 0.15, 0.3, 0.4, 0.0], np.float32)
  draws = 20000
  # One draw without replacement is a Gumbel-max draw: frequencies ∝ p.
  one = jax.vmap(lambda k: sensitivity.weighted_sample(k, p, num=1)[0][0])(
      jax.random.split(jax.random.key(0), draws))
  counts = np.bincount(np.asarray(one), minlength=6)
  assert counts[5] == 0 and _chi2(counts[:5], p[:5]) < CHI2_999[4]
  # With replacement: every draw ∝ p.
  idx, w = sensitivity.weighted_sample(jax.random.key(1), p, num=draws, replace=True)
  counts = np.bincount(np.asarray(idx), minlength=6)
  assert counts[5] == 0 and _chi2(counts[:5], p[:5]) < CHI2_999[4]
  np.testing.assert_allclose(w, 1.0 / (draws * p[np.asarray(idx)]), rtol=1e-5)


def test_two_draws_without_replacement_follow_successive_sampling():
  p = np.array([0.1, 0.2, 0.3, 0.4])
  draws = 20000
  idx = jax.vmap(lambda k: sensitivity.weighted_sample(k, p, num=2)[0])(
      jax.random.split(jax.random.key(2), draws))
  idx = np.asarray(idx)
  assert np.all(idx[:, 0] != idx[:, 1])
  # P(i in S) = p_i + sum_{j != i} p_j p_i / (1 - p_j), the inclusion probability of
  # successive sampling; the counts of inclusions sum to 2 * draws.
  incl = np.array([p[i] + sum(p[j] * p[i] / (1 - p[j]) for j in range(4) if j != i)
                   for i in range(4)])
  counts = np.bincount(idx.reshape(-1), minlength=4)
  assert _chi2(counts, incl / 2) < CHI2_999[4]


@pytest.mark.parametrize("replace", [False, True])
def test_weighted_estimator_of_a_sum_is_unbiased(replace):
  rng = np.random.default_rng(4)
  f = rng.uniform(0.5, 3.0, size=12).astype(np.float32)
  p = rng.uniform(0.2, 1.0, size=12).astype(np.float32)
  mask = np.ones(12, bool)
  mask[3] = False  # Not drawable, and not part of the sum.

  def estimate(k):
    idx, w = sensitivity.weighted_sample(k, p, num=4, replace=replace, mask=mask)
    return jnp.sum(w * jnp.asarray(f)[idx]), jnp.any(idx == 3)

  est, hit = jax.vmap(estimate)(jax.random.split(jax.random.key(5), 40000))
  est = np.asarray(est)
  assert not np.any(np.asarray(hit))
  target = f[mask].sum()
  assert abs(est.mean() - target) < 4 * est.std() / np.sqrt(len(est))
  assert est.std() > 0.01 * target  # A random estimate (so the check above means something).


def test_drawing_everything_gives_unit_weights():
  idx, w = sensitivity.weighted_sample(jax.random.key(0), np.array([0.2, 0.5, 0.3]), num=3)
  assert sorted(np.asarray(idx).tolist()) == [0, 1, 2]
  np.testing.assert_allclose(w, 1.0)


def _numpy_dedup(x, threshold):
  keep = []
  for i in range(len(x)):
    d = [np.linalg.norm(x[i] - x[j]) for j in keep]
    if all(v >= threshold for v in d) and not any(np.array_equal(x[i], x[j]) for j in keep):
      keep.append(i)
  return np.isin(np.arange(len(x)), keep)


def test_dedup_mask_matches_a_numpy_greedy_and_drops_exact_duplicates():
  rng = np.random.default_rng(6)
  x = rng.normal(size=(40, 5)).astype(np.float32)
  x[10] = x[3]
  for threshold in (0.0, 1.5, 2.5):
    got = np.asarray(sensitivity.dedup_mask(x, threshold=threshold))
    np.testing.assert_array_equal(got, _numpy_dedup(x, threshold))
    assert not got[10]
  dists = np.asarray(sensitivity.nearest_neighbour_distances(x))
  assert dists[10] == pytest.approx(0.0, abs=1e-2) and np.all(dists[:3] > 0.1)


def test_importance_probabilities_and_unbiasing_weights():
  y = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
  table, counts = data_lib.class_index_table(y, 3)
  losses = np.array([1.0, 2.0, 1.0, 0.0, 0.0, 4.0, 0.0, 0.0, 4.0], np.float32)
  p = np.asarray(sensitivity.importance_probabilities(losses, jnp.asarray(table),
                                                      jnp.asarray(counts), beta=0.5))
  want = np.empty(9)
  for c in range(3):
    members = y == c
    share = (losses[members] / losses[members].sum() if losses[members].sum() > 0
             else np.full(members.sum(), 1.0 / members.sum()))
    want[members] = 0.5 * share + 0.5 / members.sum()
  np.testing.assert_allclose(p, want, rtol=1e-6)
  np.testing.assert_allclose(np.bincount(y, weights=p), 1.0, rtol=1e-6)
  # Weight 1 / (n_c p_i): E_p[w f] = mean of f within the class.
  idx = jnp.asarray(table)[:, :2]
  w = np.asarray(sensitivity.group_unbiasing_weights(jnp.asarray(p), idx, jnp.asarray(table),
                                                      jnp.asarray(counts)))
  np.testing.assert_allclose(w, 1.0 / (counts[:, None] * p[np.asarray(idx)]), rtol=1e-6)
  with pytest.raises(ValueError, match="beta"):
    sensitivity.importance_probabilities(losses, table, counts, beta=1.5)
