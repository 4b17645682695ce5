"""robust_dd.methods: the METHODS table, and that a new method is one record."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robust_dd import config as config_lib
from robust_dd import data as data_lib
from robust_dd import distill
from robust_dd import experiment
from robust_dd import krr
from robust_dd import matching
from robust_dd import methods
from robust_dd import presets


def test_every_record_is_complete_and_its_presets_are_config_fields():
  fields = set(config_lib.DistillConfig().flat())
  for name, m in methods.METHODS.items():
    assert m.name == name and m.evaluator in ("krr", "network")
    assert set(m.defaults) <= fields, set(m.defaults) - fields
    # Network-evaluated methods train a network between updates, or (MTT) draw their own batches.
    assert (m.trains_network or m.sample_batch is not None) == (m.evaluator == "network")
    if m.ipc_defaults is not None:
      assert set(m.ipc_defaults(10)) <= fields
  assert methods.METHODS["dsa"].defaults["augment"] and not methods.METHODS["dc"].defaults[
      "augment"]
  with pytest.raises(ValueError, match="choose one of"):
    methods.get("frepo")


def _real(n_per_class=6, classes=3, dim=5):
  rng = np.random.default_rng(0)
  y = np.repeat(np.arange(classes), n_per_class)
  x = (rng.normal(size=(len(y), dim)) + y[:, None]).astype(np.float32)
  table, counts = data_lib.class_index_table(y, classes)
  return x, y, {"images": jnp.asarray(x), "labels": data_lib.one_hot_centered(y, classes),
                "table": jnp.asarray(table), "counts": jnp.asarray(counts)}


def test_a_new_method_is_one_record(monkeypatch):
  """A toy method (KRR with a linear kernel) added as one record runs through the config's
  presets, `build_step` and the loop with no other change."""

  def linear_loss(config, ctx):
    del ctx
    return lambda params, batch, key: krr.kip_loss(
        params["images"], params["labels"], batch["images"], batch["labels"],
        kernel_fn=lambda a, b: a @ b.T, diag_reg=config.kernel.diag_reg)

  record = dataclasses.replace(methods.METHODS["kip"], name="linear", loss=linear_loss,
                               defaults=dict(methods.METHODS["kip"].defaults, steps=3,
                                             real_per_class=4))
  monkeypatch.setitem(methods.METHODS, "linear", record)
  config = presets.resolve_config(config_lib.DistillConfig.make(method="linear", ipc=1), 3)
  assert (config.steps, config.optim.real_per_class) == (3, 4)
  x, y, real = _real()
  optimizer = distill.make_optimizer(learning_rate=0.01)
  state = distill.init_state(x[[0, 6, 12]], data_lib.one_hot_centered(np.arange(3), 3),
                             optimizer)
  step = methods.build_step(config, optimizer, num_classes=3, input_shape=(5,))
  state, history = distill.run_distillation(step, state, real, key=jax.random.key(0),
                                            num_steps=config.steps, log=lambda s: None)
  assert int(state.step) == 3 and np.isfinite(history[-1]["loss"])


def test_build_step_uses_the_records_loss_per_class_batches():
  x, y, real = _real()
  config = presets.resolve_config(
      config_lib.DistillConfig.make(ipc=1, real_per_class=6, learning_rate=0.0), 3)
  optimizer = distill.make_optimizer(learning_rate=config.optim.learning_rate, name="sgd")
  state = distill.init_state(x[[0, 6, 12]], data_lib.one_hot_centered(np.arange(3), 3),
                             optimizer)
  step = methods.build_step(config, optimizer, num_classes=3, input_shape=(5,))
  # All 6 samples of every class are drawn, so the loss is the KIP loss on the whole set.
  expected = methods.kip_loss_fn(kernel_fn=methods.config_kernel_fn(config))(
      state.params, {"images": real["images"], "labels": real["labels"]})
  _, metrics = step(state, real, jax.random.key(0))  # Donates (deletes) `state`.
  np.testing.assert_allclose(metrics["loss"], expected, rtol=1e-4)  # Rows in another order.


@pytest.mark.parametrize("masses", ["uniform", "size"])
def test_build_step_weighs_clusters_by_cluster_masses(masses):
  """`--cluster_masses` reaches the robust step: with robust_weight 0 and every member of every
  cluster drawn, the step's loss is the KIP losses of the clusters averaged with weight 1 each
  (uniform) or by cluster size (size), computed here cluster by cluster."""
  x, y, real = _real()
  ids = np.where(np.arange(len(y)) % 6 < 4, 2 * y, 2 * y + 1)  # Clusters of 4 and 2 per class.
  real = experiment.with_clusters(real, ids, np.repeat(np.arange(3), 2), width=4)
  config = presets.resolve_config(config_lib.DistillConfig.make(
      ipc=1, real_per_class=8, learning_rate=0.0, robust="cvar", robust_weight=0.0,
      cluster_masses=masses), 3)
  optimizer = distill.make_optimizer(learning_rate=0.0, name="sgd")
  state = distill.init_state(x[[0, 6, 12]], data_lib.one_hot_centered(np.arange(3), 3),
                             optimizer)
  plain = methods.kip_loss_fn(kernel_fn=methods.config_kernel_fn(config))
  losses = np.array([plain(state.params, {"images": real["images"][ids == k],
                                          "labels": real["labels"][ids == k]})
                     for k in range(6)])
  weights = np.bincount(ids) if masses == "size" else np.ones(6)
  step = methods.build_step(config, optimizer, num_classes=3, input_shape=(5,), num_clusters=6)
  _, metrics = step(state, real, jax.random.key(0))
  np.testing.assert_allclose(metrics["loss"], np.sum(weights * losses) / weights.sum(),
                             rtol=1e-4)


@pytest.mark.slow
def test_dc_step_is_the_same_whatever_the_class_batching_and_convolution():
  """The speed defaults chosen by backend (`--class_batch`, `--grad_chunk` unset,
  `--conv_impl=auto`) give the same update, to float tolerance, as all classes in one vmap with
  lax.conv, as one class at a time and as real gradients in one batch or in chunks: a result of
  a fixed seed does not depend on them."""
  x, y, real = _real(n_per_class=4, classes=3, dim=64)
  x = x.reshape(-1, 8, 8, 1)
  real = {**real, "images": jnp.asarray(x)}

  def updated(**overrides):
    config = presets.resolve_config(config_lib.DistillConfig.make(
        method="dc", ipc=1, real_per_class=4, net_width=4, net_depth=2, **overrides), 3)
    optimizer = distill.make_optimizer(learning_rate=config.optim.learning_rate, name="sgd")
    state = distill.init_state(x[[0, 4, 8]], data_lib.one_hot_centered(np.arange(3), 3),
                               optimizer)
    step = methods.build_step(config, optimizer, num_classes=3, input_shape=(8, 8, 1))
    state, metrics = step(state, real, jax.random.key(0))
    return np.asarray(state.params["images"]), float(metrics["loss"])

  images, loss = updated()
  assert not np.allclose(images, x[[0, 4, 8]])  # The step moved the set.
  # (Winograd's loss and image gradient: test_matching's agreement across convolutions.)
  others = [dict(class_batch=0, conv_impl="lax"), dict(class_batch=2, conv_impl="patches"),
             dict(grad_chunk=0), dict(grad_chunk=3)]  # Real gradients in one batch, in chunks.
  if matching.default_class_batch() != 1:  # On CPU the default is one class at a time already.
    others.append(dict(class_batch=1))
  for overrides in others:
    other_images, other_loss = updated(**overrides)
    np.testing.assert_allclose(other_loss, loss, rtol=1e-5)
    np.testing.assert_allclose(other_images, images, rtol=1e-5, atol=1e-6)
