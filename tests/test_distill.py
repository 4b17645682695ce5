"""robust_dd.distill: the step, label freezing, resume equivalence, determinism, NaN guard."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robust_dd import data as data_lib
from robust_dd import distill
from robust_dd import io
from robust_dd import kernels


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
  step = distill.make_step(distill.kip_loss_fn(kernel_fn=kernel_fn, diag_reg=1e-6), optimizer,
                           per_class=5)
  return state, step, real


def _copy(state):
  return jax.tree_util.tree_map(lambda a: jnp.array(a, copy=True), state)


def test_steps_reduce_the_loss_on_held_batches():
  state, step, real = _setup()
  key = jax.random.key(0)
  loss_fn = distill.kip_loss_fn(kernel_fn=kernels.make_kernel_fn("fc"), diag_reg=1e-6)
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
                                        eval_fn=lambda p: {"norm": float(jnp.abs(p["images"]).sum())})
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
    distill.validate_config(distill.DistillConfig(ipc=0))
  with pytest.raises(ValueError, match="method"):
    distill.validate_config(dataclasses.replace(distill.DistillConfig(), method="dc"))
