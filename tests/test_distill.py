"""robust_dd.distill: the step, label freezing, resume equivalence, determinism, NaN guard."""

import functools
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robust_dd import config as config_lib
from robust_dd import data as data_lib
from robust_dd import distill
from robust_dd import experiment
from robust_dd import interrupt
from robust_dd import io
from robust_dd import kernels
from robust_dd import krr
from robust_dd import methods
from robust_dd import presets
from robust_dd import risk
from robust_dd import sensitivity


def _problem(seed=0, n_per_class=20, classes=3, dim=12):
  rng = np.random.default_rng(seed)
  centers = rng.normal(size=(classes, dim))
  y = np.repeat(np.arange(classes), n_per_class)
  x = (centers[y] + 0.8 * rng.normal(size=(len(y), dim))).astype(np.float32)
  table, counts = data_lib.class_index_table(y, classes)
  real = {"images": jnp.asarray(x), "labels": data_lib.one_hot_centered(jnp.asarray(y), classes),
          "table": jnp.asarray(table), "counts": jnp.asarray(counts)}
  return x, y, real


def _setup(learn_labels=True, learning_rate=0.01):
  x, y, real = _problem()
  kernel_fn = kernels.make_kernel_fn("fc", kernel="ntk")
  optimizer = distill.make_optimizer(learning_rate=learning_rate, learn_labels=learn_labels)
  idx = np.array([0, 20, 40])
  state = distill.init_state(x[idx], data_lib.one_hot_centered(y[idx], 3), optimizer)
  step = distill.make_step(methods.kip_loss_fn(kernel_fn=kernel_fn, diag_reg=1e-6), optimizer,
                           per_class=5)
  return state, step, real


def _copy(state):
  return jax.tree_util.tree_map(lambda a: jnp.array(a, copy=True), state)


@pytest.mark.slow
def test_steps_reduce_the_loss_on_held_batches():
  state, step, real = _setup()
  key = jax.random.key(0)
  loss_fn = methods.kip_loss_fn(kernel_fn=kernels.make_kernel_fn("fc"), diag_reg=1e-6)
  everything = {"images": real["images"], "labels": real["labels"]}
  before = float(loss_fn(state.params, everything))
  state, _ = distill.run_distillation(step, state, real, key=key, num_steps=60, log_every=1000,
                                      log=lambda s: None)
  assert int(state.step) == 60
  assert float(loss_fn(state.params, everything)) < 0.7 * before


def test_labels_stay_fixed_unless_learned():
  for learn, changes in ((False, False), (True, True)):
    state, step, real = _setup(learn_labels=learn)
    labels0 = np.array(state.params["labels"])
    images0 = np.array(state.params["images"])
    state, _ = step(state, real, jax.random.key(1))
    assert np.array_equal(np.asarray(state.params["labels"]), labels0) != changes
    assert not np.array_equal(np.asarray(state.params["images"]), images0)


def test_platt_scale_is_learned_even_with_fixed_labels():
  x, y, real = _problem()
  optimizer = distill.make_optimizer(learning_rate=0.05, learn_labels=False)
  idx = np.array([0, 20, 40])
  state = distill.init_state(x[idx], data_lib.one_hot_centered(y[idx], 3), optimizer,
                             extra_params=methods.kip_params("platt"))
  assert float(state.params["log_scale"]) == 0.0
  loss_fn = methods.kip_loss_fn(kernel_fn=kernels.make_kernel_fn("fc"), diag_reg=1e-6,
                                loss="platt")
  step = distill.make_step(loss_fn, optimizer, per_class=5)
  labels0 = np.array(state.params["labels"])
  for i in range(3):
    state, _ = step(state, real, jax.random.key(i))
  assert np.array_equal(np.asarray(state.params["labels"]), labels0)
  # Centered one-hot labels give predictions in (-1/3, 2/3): a larger scale sharpens the softmax,
  # so the learned log-scale grows.
  assert float(state.params["log_scale"]) > 0.1
  assert methods.kip_params("mse") == {}


def test_resumed_run_equals_uninterrupted_run(tmp_path):
  state, step, real = _setup()
  key = jax.random.key(3)
  straight, _ = distill.run_distillation(step, _copy(state), real, key=key, num_steps=20,
                                         log=lambda s: None)
  ckpt = str(tmp_path / "ckpt")
  distill.run_distillation(step, _copy(state), real, key=key, num_steps=10,
                           checkpoint_dir=ckpt, checkpoint_every=5, log=lambda s: None)
  restored, at = io.restore_checkpoint(ckpt, state)
  assert at == 10
  resumed, _ = distill.run_distillation(step, jax.tree_util.tree_map(jnp.asarray, restored), real,
                                        key=key, num_steps=20, log=lambda s: None)
  np.testing.assert_array_equal(resumed.params["images"], straight.params["images"])
  np.testing.assert_array_equal(resumed.params["labels"], straight.params["labels"])


def test_same_key_same_result_and_progress_lines():
  lines = []
  state, step, real = _setup()
  a, history = distill.run_distillation(step, _copy(state), real, key=jax.random.key(5),
                                        num_steps=12, log_every=4, log=lines.append,
                                        eval_fn=lambda p: {
                                            "norm": float(jnp.abs(p["images"]).sum())})
  b, _ = distill.run_distillation(step, _copy(state), real, key=jax.random.key(5), num_steps=12,
                                  log=lambda s: None)
  np.testing.assert_array_equal(a.params["images"], b.params["images"])
  assert [h["step"] for h in history] == [4, 8, 12] and "norm" in history[0]
  assert len(lines) == 3 and "left≈" in lines[0] and "step      4/12" in lines[0]


def test_nan_loss_stops_with_advice():
  state, step, real = _setup()
  real = dict(real, images=real["images"].at[0].set(jnp.nan))
  with pytest.raises(FloatingPointError, match="learning_rate"):
    distill.run_distillation(step, state, real, key=jax.random.key(0), num_steps=40,
                             log_every=40, log=lambda s: None)


def test_config_validation_messages():
  with pytest.raises(ValueError, match="--ipc"):
    presets.validate_config(config_lib.DistillConfig.make(ipc=0))
  with pytest.raises(ValueError, match="method"):
    presets.validate_config(config_lib.DistillConfig.make().replace(method="mtt"))
  with pytest.raises(ValueError, match="--metric"):
    presets.validate_config(config_lib.DistillConfig.make(method="dc", metric="l2"))
  with pytest.raises(ValueError, match="outer_loop"):
    presets.validate_config(config_lib.DistillConfig.make(method="dc", outer_loop=0))


def test_method_defaults_follow_dc_by_ipc_and_keep_explicit_values():
  dc10 = presets.resolve_config(config_lib.DistillConfig.make(method="dc", ipc=10), 10)
  assert (dc10.matching.outer_loop, dc10.matching.inner_loop, dc10.optim.real_per_class) == (
      10, 50, 256)
  assert (dc10.optim.optimizer, dc10.optim.learning_rate, dc10.optim.learn_labels,
          dc10.matching.augment) == ("sgd", 0.1, False, False)
  assert presets.resolve_config(config_lib.DistillConfig.make(method="dsa", ipc=1),
                                   10).matching.augment
  lc = presets.resolve_config(config_lib.DistillConfig.make(method="lcmat", ipc=50,
                                                               inner_loop=3, target_batch=100), 10)
  assert (lc.get("outer_loop"), lc.get("inner_loop"), lc.get("real_per_class")) == (50, 3, 10)
  assert lc.optim.target_batch is None  # The deprecated total became real_per_class.
  kip = presets.resolve_config(config_lib.DistillConfig.make(), 10)
  assert (kip.optim.optimizer, kip.optim.learning_rate, kip.optim.real_per_class,
          kip.steps) == ("adam", 0.01, 50, 2000)
  assert methods.dc_loops(7) == {"outer_loop": 10, "inner_loop": 50}
  assert methods.dc_loops(2) == {"outer_loop": 1, "inner_loop": 1}


def _matching_setup(updates_per_network, inner_steps=2):
  from robust_dd import augment, matching, models
  rng = np.random.default_rng(0)
  y = np.repeat(np.arange(3), 8)
  x = (rng.normal(size=(24, 6, 6, 1)) + y[:, None, None, None]).astype(np.float32)
  table, counts = data_lib.class_index_table(y, 3)
  real = {"images": jnp.asarray(x), "labels": data_lib.one_hot_centered(jnp.asarray(y), 3),
          "table": jnp.asarray(table), "counts": jnp.asarray(counts)}
  model = models.make_network("convnet", num_classes=3, input_shape=(6, 6, 1), depth=1, width=3)
  apply_fn = models.logits_fn(model)
  loss_fn = methods.matching_loss_fn(matching.gradient_match_class_loss(apply_fn), num_classes=3,
                                     augment=augment.dsa)
  network = methods.inner_loop_network(model, input_shape=(6, 6, 1), steps=inner_steps,
                                       learning_rate=0.01)
  optimizer = distill.make_optimizer(name="sgd", learning_rate=0.1, learn_labels=False)
  state = distill.init_state(x[[0, 8, 16]], data_lib.one_hot_centered(y[[0, 8, 16]], 3),
                             optimizer)
  step = distill.make_step(loss_fn, optimizer, per_class=4, network=network,
                           updates_per_network=updates_per_network)
  return state, step, real, loss_fn, network, optimizer


@pytest.mark.slow
def test_network_step_is_the_dc_outer_iteration_written_out():
  import optax
  state, step, real, loss_fn, network, optimizer = _matching_setup(3)
  key = jax.random.key(7)
  params, opt_state = _copy(state.params), _copy(state.opt_state)
  k_net, k_loop = jax.random.split(jax.random.fold_in(key, 0))  # The step folds in step 0.
  net = network.init(k_net)
  losses = []
  # Each piece jitted on its own (compiled once, not dispatched op by op); the loop is Python.
  train, value_and_grad = jax.jit(network.train), jax.jit(jax.value_and_grad(loss_fn))
  draw = jax.jit(functools.partial(distill.class_balanced_batch, per_class=4))
  for i in range(3):  # update, train, update, train, update: no training after the last update.
    k_update = jax.random.fold_in(k_loop, 0)
    if i:
      k_train, k_update = jax.random.split(jax.random.fold_in(k_loop, i))
      net = train(net, params, real, k_train)
    k_batch, k_loss = jax.random.split(k_update)
    batch = draw(k_batch, real)
    loss, grads = value_and_grad(params, batch, net, k_loss)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    losses.append(loss)
  new, metrics = step(_copy(state), real, key)
  np.testing.assert_allclose(new.params["images"], params["images"], rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(new.params["labels"], state.params["labels"])
  np.testing.assert_allclose(metrics["loss"], np.mean(losses), rtol=1e-4)
  assert int(new.step) == 1


@pytest.mark.slow
def test_inner_loop_changes_the_network_between_updates():
  # With 0 inner steps both updates see the same network; with 5 they must not.
  state, step0, real, *_ = _matching_setup(2, inner_steps=0)
  state5, step5, *_ = _matching_setup(2, inner_steps=5)
  a, _ = step0(_copy(state), real, jax.random.key(1))
  b, _ = step5(_copy(state5), real, jax.random.key(1))
  assert not np.allclose(a.params["images"], b.params["images"])


# ------------------------------------------------------------------------------- robust


def _one_cluster_per_class(real, y, per_cluster):
  """Cluster ids = class labels; returns the cluster batch and the same samples class-major."""
  real = experiment.with_clusters(real, y, np.arange(3), width=int(np.bincount(y).max()))
  batch = distill.cluster_batch(jax.random.key(4), real, per_cluster=per_cluster)
  flat = {k: batch[k].reshape(-1, *batch[k].shape[2:]) for k in ("images", "labels")}
  return batch, flat


@pytest.mark.slow
def test_robust_kip_loss_reduces_to_plain_kip_and_to_the_worst_cluster():
  x, y, real = _problem()
  kernel_fn = kernels.make_kernel_fn("fc", kernel="ntk")
  batch, flat = _one_cluster_per_class(real, y, 5)
  assert bool(batch["mask"].all()) and batch["images"].shape == (3, 5, 12)
  params = {"images": jnp.asarray(x[[1, 21, 41]]),
            "labels": data_lib.one_hot_centered(jnp.asarray([0, 1, 2]), 3)}
  plain = jax.jit(methods.kip_loss_fn(kernel_fn=kernel_fn))(params, flat)
  mean = jax.jit(methods.robust_kip_loss_fn(kernel_fn=kernel_fn, robust_weight=0.0))(params,
                                                                                    batch)
  np.testing.assert_allclose(mean, plain, rtol=1e-5)
  per_cluster = krr.kip_cluster_losses(params["images"], params["labels"], batch["images"],
                                       batch["labels"], batch["mask"], kernel_fn=kernel_fn)
  worst = jax.jit(methods.robust_kip_loss_fn(kernel_fn=kernel_fn, robust_weight=1.0,
                                             tail_fraction=0.1))(params, batch)
  np.testing.assert_allclose(worst, per_cluster.max(), rtol=1e-4)
  # The robust gradient reaches the synthetic images.
  g = jax.jit(jax.grad(methods.robust_kip_loss_fn(kernel_fn=kernel_fn)))(params, batch)
  g = g["images"]
  assert float(jnp.abs(g).max()) > 0


@pytest.mark.slow
def test_robust_matching_loss_reduces_to_plain_matching():
  from robust_dd import augment, matching, models
  state, _, real, loss_fn, network, _ = _matching_setup(1)
  batch, flat = _one_cluster_per_class(real, np.repeat(np.arange(3), 8), 4)
  net = network.init(jax.random.key(5))
  model = models.make_network("convnet", num_classes=3, input_shape=(6, 6, 1), depth=1, width=3)
  class_loss = matching.gradient_match_class_loss(models.logits_fn(model))
  robust = methods.robust_matching_loss_fn(class_loss, num_classes=3, robust_weight=0.0,
                                           augment=augment.dsa)
  key = jax.random.key(6)
  np.testing.assert_allclose(jax.jit(robust)(state.params, batch, net, key),
                             jax.jit(loss_fn)(state.params, flat, net, key), rtol=1e-4)


def test_cluster_real_ids_classes_and_counts():
  x, y, _ = _problem(n_per_class=12)
  syn = x[[0, 1, 12, 13, 24, 25]]  # IPC 2.
  key = jax.random.key(0)
  base = config_lib.DistillConfig.make(ipc=2, num_clusters=3)
  ids, cc = experiment.cluster_real(base, key, x, y, num_classes=3)
  assert len(cc) == 9 and np.all(cc[ids] == y) and len(np.unique(ids)) == 9
  glob = base.replace(cluster_scope="global")
  ids, cc = experiment.cluster_real(glob, key, x, y, num_classes=3)
  assert cc.tolist() == [-1, -1, -1] and set(ids) <= {0, 1, 2}  # KIP: clusters may mix classes.
  ids, cc = experiment.cluster_real(glob.replace(method="dc"), key, x, y, num_classes=3)
  assert len(cc) == 9 and np.all(cc[ids] == y)  # Matching: each global cluster split by class.
  proto = base.replace(cluster_assignment="prototype")
  ids, cc = experiment.cluster_real(proto, key, x, y, num_classes=3, syn_images=syn)
  assert len(cc) == 6 and np.all(cc[ids] == y)
  d = ((x[:, None] - syn[None]) ** 2).sum(-1)
  d[cc[None, :] != y[:, None]] = np.inf
  np.testing.assert_array_equal(ids, d.argmin(1))
  assert presets.resolve_config(proto, 3).robust.recluster_every == 1
  assert presets.resolve_config(base, 3).robust.recluster_every == 0


def test_reclusterer_is_a_function_of_the_step_and_follows_the_synthetic_set():
  x, y, real = _problem(n_per_class=12)
  config = config_lib.DistillConfig.make(ipc=1, cluster_assignment="prototype",
                                         cluster_scope="global", cluster_features="random")
  recluster = experiment.make_reclusterer(config, real, x, y, num_classes=3,
                                       key=jax.random.key(0))
  optimizer = distill.make_optimizer()
  state = distill.init_state(x[[0, 12, 24]], data_lib.one_hot_centered(jnp.arange(3), 3),
                             optimizer)
  a, b = recluster(state, 3), recluster(state, 3)
  np.testing.assert_array_equal(a["cluster_table"], b["cluster_table"])
  assert a["cluster_table"].shape == (3, 36)  # Global clusters: padded to all samples.
  moved = state._replace(params=dict(state.params, images=state.params["images"][::-1]))
  c = recluster(moved, 3)
  assert int(c["cluster_counts"].sum()) == 36
  assert not np.array_equal(a["cluster_counts"], c["cluster_counts"]) or not np.array_equal(
      a["cluster_table"], c["cluster_table"])


def test_robust_config_validation():
  for bad, message in ((dict(robust="dro"), "--robust"), (dict(tail_fraction=0.0), "tail"),
                       (dict(robust_weight=2.0), "robust_weight"),
                       (dict(num_clusters=0), "num_clusters"),
                       (dict(cluster_features="sift"), "cluster_features"),
                       (dict(recluster_every=3, checkpoint_every=10), "multiple"),
                       (dict(subgroup="blur"), "subgroup")):
    with pytest.raises(ValueError, match=message):
      presets.validate_config(config_lib.DistillConfig.make(**bad))


# ------------------------------------------------------------ provable subset selection (§4)


def test_importance_batches_follow_the_probabilities_and_uniform_ones_change_nothing():
  _, y, real = _problem()
  key = jax.random.key(0)
  plain = distill.class_balanced_batch(key, real, per_class=5)
  same = distill.class_balanced_batch(key, real, per_class=5, probs=jnp.ones(len(y)))
  np.testing.assert_array_equal(plain["images"], same["images"])
  # All mass of class c on its first 5 members: exactly those are drawn.
  probs = jnp.asarray(np.tile(np.r_[np.ones(5), np.full(15, 1e-9)], 3), jnp.float32)
  batch = distill.class_balanced_batch(key, real, per_class=5, probs=probs, unbiased=True)
  first = np.concatenate([np.arange(5) + 20 * c for c in range(3)])
  np.testing.assert_array_equal(np.sort(np.asarray(batch["images"]).reshape(3, 5, -1), 1),
                                np.sort(np.asarray(real["images"])[first].reshape(3, 5, -1), 1))
  # Unbiasing weights 1 / (n_c p_i), p normalised within the class.
  np.testing.assert_allclose(batch["weights"], (5 + 15e-9) / 20, rtol=1e-5)


def test_krr_sample_losses_match_numpy():
  x, y, real = _problem()
  kernel_fn = kernels.make_kernel_fn("fc")
  s_idx = np.array([0, 1, 20, 21, 40, 41])
  ys = np.asarray(data_lib.one_hot_centered(y[s_idx], 3))
  got = np.asarray(krr.krr_sample_losses(x[s_idx], ys, x, real["labels"], kernel_fn=kernel_fn,
                                         diag_reg=1e-6, batch_size=7))
  k_ss = np.asarray(kernel_fn(x[s_idx], x[s_idx]), np.float64)
  k_ts = np.asarray(kernel_fn(x, x[s_idx]), np.float64)
  reg = k_ss + 1e-6 * np.trace(k_ss) / len(k_ss) * np.eye(len(k_ss))
  pred = k_ts @ np.linalg.solve(reg, ys)
  want = 0.5 * np.sum((np.asarray(real["labels"]) - pred) ** 2, -1)
  np.testing.assert_allclose(got, want, rtol=2e-3, atol=1e-5)


def _importance_setup(every):
  x, y, real = _problem()
  kernel_fn = kernels.make_kernel_fn("fc", kernel="ntk")
  optimizer = distill.make_optimizer(learning_rate=0.01)
  idx = np.array([0, 20, 40])
  state = distill.init_state(x[idx], data_lib.one_hot_centered(y[idx], 3), optimizer,
                             num_real=len(y))
  sample_losses = methods.kip_sample_losses(kernel_fn=kernel_fn)
  step = distill.make_step(methods.kip_loss_fn(kernel_fn=kernel_fn), optimizer,
                           sample_batch=functools.partial(distill.class_balanced_batch,
                                                          per_class=5, unbiased=True),
                           rescore=distill.importance_rescorer(sample_losses, beta=0.5),
                           rescore_every=every)
  return state, step, real, sample_losses


def test_importance_sampler_state_is_rescored_every_r_steps_and_resumes_exactly(tmp_path):
  state, step, real, sample_losses = _importance_setup(every=3)
  params0 = _copy(state).params
  s1, _ = step(_copy(state), real, jax.random.key(0))
  want = sensitivity.importance_probabilities(sample_losses(params0, real, None), real["table"],
                                              real["counts"], beta=0.5)
  np.testing.assert_allclose(s1.sampler, want, rtol=1e-4)
  s2, _ = step(_copy(s1), real, jax.random.key(1))  # Step 1: not a multiple of 3, kept.
  np.testing.assert_array_equal(s2.sampler, s1.sampler)
  s3, _ = step(_copy(s2), real, jax.random.key(2))
  s4, _ = step(_copy(s3), real, jax.random.key(3))  # Step 3: rescored with the current set.
  want = sensitivity.importance_probabilities(sample_losses(s3.params, real, None),
                                              real["table"], real["counts"], beta=0.5)
  np.testing.assert_allclose(s4.sampler, want, rtol=1e-4)
  assert not np.allclose(s4.sampler, s1.sampler, rtol=1e-3)
  key = jax.random.key(7)
  straight, _ = distill.run_distillation(step, _copy(state), real, key=key, num_steps=8,
                                         log=lambda s: None)
  ckpt = str(tmp_path / "ckpt")
  distill.run_distillation(step, _copy(state), real, key=key, num_steps=4, checkpoint_dir=ckpt,
                           checkpoint_every=4, log=lambda s: None)
  restored, _ = io.restore_checkpoint(ckpt, state)
  resumed, _ = distill.run_distillation(step, jax.tree_util.tree_map(jnp.asarray, restored),
                                        real, key=key, num_steps=8, log=lambda s: None)
  np.testing.assert_array_equal(resumed.params["images"], straight.params["images"])
  np.testing.assert_array_equal(resumed.sampler, straight.sampler)


@pytest.mark.parametrize("init", list(config_lib.INIT_METHODS))
def test_initial_indices_per_class(init):
  x, y, _ = _problem()
  config = config_lib.DistillConfig.make(ipc=2, init=init, dedup_quantile=0.1)
  idx, w = experiment.initial_indices(config, jax.random.key(0), x, y, num_classes=3)
  assert len(set(idx.tolist())) == 6
  np.testing.assert_array_equal(y[idx], np.repeat(np.arange(3), 2))
  assert np.all(w > 0)
  with pytest.raises(ValueError, match="init"):
    presets.validate_config(config_lib.DistillConfig.make(init="best"))
  with pytest.raises(ValueError, match="sampler_every"):
    presets.validate_config(config_lib.DistillConfig.make(sampler="importance", sampler_every=0))


def test_importance_cluster_batches_weight_the_mask():
  _, y, real = _problem()
  ids = 2 * y + (np.arange(len(y)) % 2)  # Two clusters per class: even and odd positions.
  real = experiment.with_clusters(real, ids, np.repeat(np.arange(3), 2), width=10)
  key = jax.random.key(2)
  plain = distill.cluster_batch(key, real, per_cluster=4)
  uniform = distill.cluster_batch(key, real, per_cluster=4, probs=jnp.ones(len(y)),
                                  unbiased=True)
  np.testing.assert_array_equal(plain["images"], uniform["images"])
  np.testing.assert_allclose(uniform["mask"], 1.0, rtol=1e-6)  # 1 / (n_k p_i) = 1 when uniform.
  probs = jnp.asarray(np.where(np.arange(len(y)) % 4 < 2, 1.0, 3.0), jnp.float32)
  batch = distill.cluster_batch(key, real, per_cluster=4, probs=probs, unbiased=True)
  idx = np.asarray(real["cluster_table"])[:, :10]
  drawn = np.asarray(batch["images"])[:, :, 0]
  x0 = np.asarray(real["images"])[:, 0]
  for k in range(6):
    members = idx[k][: int(real["cluster_counts"][k])]
    p = np.asarray(probs)[members] / np.asarray(probs)[members].sum()
    for j in range(4):
      i = members[np.flatnonzero(x0[members] == drawn[k, j])[0]]
      expected = 1.0 / (len(members) * p[list(members).index(i)])
      assert batch["mask"][k, j] == pytest.approx(expected, rel=1e-5)


def test_random_feature_kip_step_redraws_the_kernel_from_the_step_key():
  """The step's loss is the KIP loss under the draw `fold_in(fold_in(loop key, step), ...)`:
  the same key and state give the same step, another step index another kernel."""
  from robust_dd import random_features
  x, y, real = _problem()
  rf = random_features.RandomFeatureKernel("fc", num_features=64, width=32, depth=1)
  optimizer = distill.make_optimizer(learning_rate=0.01)
  idx = np.array([0, 20, 40])
  state = distill.init_state(x[idx], data_lib.one_hot_centered(y[idx], 3), optimizer)
  step = distill.make_step(methods.kip_loss_fn(kernel_fn=rf), optimizer, per_class=5)
  key = jax.random.key(0)
  _, m1 = step(_copy(state), real, key)
  _, m2 = step(_copy(state), real, key)
  _, m3 = step(_copy(state)._replace(step=jnp.asarray(1, jnp.int32)), real, key)
  assert float(m1["loss"]) == float(m2["loss"]) and float(m1["loss"]) != float(m3["loss"])
  # The loss the step reports is the KIP loss of its batch under its own kernel draw.
  k_batch, k_loss = jax.random.split(jax.random.fold_in(key, 0))
  batch = distill.class_balanced_batch(k_batch, real, per_class=5)
  expected = krr.kip_loss(state.params["images"], state.params["labels"], batch["images"],
                          batch["labels"], kernel_fn=rf.sample(k_loss))
  np.testing.assert_allclose(float(m1["loss"]), float(expected), rtol=1e-5)


@pytest.mark.slow
@pytest.mark.extended
def test_robust_network_trains_on_real_batches_first_then_matches():
  """--robust_on=network: a fresh network, `steps` SGD steps on real class-balanced batches with
  the prototype CVaR loss, then the update, written out against make_step at outer_loop 1."""
  import optax
  from robust_dd import models, training
  state, _, real, loss_fn, _, optimizer = _matching_setup(1)
  model = models.make_network("convnet", num_classes=3, input_shape=(6, 6, 1), depth=1, width=3)
  kw = dict(tail_fraction=0.5, robust_weight=0.5)
  network = methods.robust_network(model, input_shape=(6, 6, 1), steps=2, learning_rate=0.05,
                                   per_class=4, **kw)
  assert network.train_first
  step = distill.make_step(loss_fn, optimizer, per_class=4, network=network,
                           updates_per_network=1)
  key = jax.random.key(3)
  params, opt_state = _copy(state.params), _copy(state.opt_state)
  new_state, _ = step(state, real, key)
  k_net, k_loop = jax.random.split(jax.random.fold_in(key, 0))
  net = network.init(k_net)
  k_train = jax.random.fold_in(k_net, 1)
  apply_fn, embed_fn = models.logits_fn(model), models.embed_fn(model)
  for i in range(2):
    k_batch, _ = jax.random.split(jax.random.fold_in(k_train, i))
    batch = distill.class_balanced_batch(k_batch, real, per_class=4)
    g = jax.grad(lambda q: training.prototype_robust_loss(
        apply_fn, embed_fn, q, batch["images"], jnp.argmax(batch["labels"], -1),
        params["images"], **kw))(net)
    net = jax.tree_util.tree_map(lambda a, b: a - 0.05 * b, net, g)
  untrained = network.init(k_net)
  assert not np.allclose(net["conv0"]["kernel"], untrained["conv0"]["kernel"])
  k_batch, k_loss = jax.random.split(jax.random.fold_in(k_loop, 0))
  batch = distill.class_balanced_batch(k_batch, real, per_class=4)
  grads = jax.grad(loss_fn)(params, batch, net, k_loss)
  updates, _ = optimizer.update(grads, opt_state, params)
  expected = optax.apply_updates(params, updates)
  np.testing.assert_allclose(new_state.params["images"], expected["images"], rtol=1e-4,
                             atol=1e-6)


def test_cluster_masses_uniform_or_by_size():
  """--cluster_masses: every non-empty cluster weighs the same, or its share of the real data;
  with size masses and robust_weight 0 the robust objective is the data's average loss."""
  _, y, real = _problem()
  ids = np.where(np.arange(len(y)) % 5 == 0, 2 * y + 1, 2 * y)  # Clusters of 16 and 4 per class.
  real = experiment.with_clusters(real, ids, np.repeat(np.arange(3), 2), width=20)
  counts = np.asarray(real["cluster_counts"])
  key = jax.random.key(2)
  uniform = distill.cluster_batch(key, real, per_cluster=4)
  size = distill.cluster_batch(key, real, per_cluster=4, masses="size")
  np.testing.assert_array_equal(uniform["weights"], counts > 0)
  np.testing.assert_array_equal(size["weights"], counts)
  np.testing.assert_array_equal(uniform["images"], size["images"])
  losses = jnp.arange(1.0, 7.0)
  np.testing.assert_allclose(
      risk.robust_objective(losses, tail_fraction=0.2, robust_weight=0.0,
                            weights=size["weights"]),
      np.sum(counts * np.arange(1.0, 7.0)) / counts.sum(), rtol=1e-6)
  with pytest.raises(ValueError, match="cluster masses"):
    distill.cluster_batch(key, real, per_cluster=4, masses="area")


@pytest.mark.parametrize("refresh_every, resume_at", [(0, 3), (1, 3), (2, 2)])
def test_a_signal_checkpoints_the_step_a_rerun_resumes_exactly_from(tmp_path, refresh_every,
                                                                     resume_at):
  """After `interrupt.install()`, a SIGINT during step 3 stops the loop after it with a checkpoint
  of step 3; when the real data is refreshed every 2 steps, a resumed run would refresh from step
  3's state, so the loop stops at the checkpoint of step 2 instead and writes none of step 3."""
  state = distill.init_state(jnp.zeros((2, 3)), jnp.zeros((2, 2)), distill.make_optimizer())

  def step_fn(state, real, key):  # pylint: disable=unused-argument
    if int(state.step) == 2:  # During the third step.
      os.kill(os.getpid(), signal.SIGINT)
    return state._replace(step=state.step + 1), {"loss": jnp.float32(0.0)}

  assert interrupt.install()
  try:
    with pytest.raises(interrupt.Interrupted) as e:
      distill.run_distillation(step_fn, state, {}, key=jax.random.key(0), num_steps=10,
                               log_every=100, checkpoint_dir=str(tmp_path), checkpoint_every=2,
                               refresh_real=lambda s, step: {}, refresh_every=refresh_every,
                               log=lambda s: None)
  finally:
    interrupt.uninstall()
  assert e.value.step == resume_at and e.value.signum == signal.SIGINT
  assert io.checkpoint_steps(str(tmp_path))[-1] == resume_at
