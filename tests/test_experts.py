"""robust_dd.experts and MTT through the one loop: the expert buffer, its check against a
distillation's config, MTT's refusals, and resume exactness."""

import json
import os

import numpy as np
import pytest

from robust_dd import config as config_lib
from robust_dd import experiment
from robust_dd import expert_buffer
from robust_dd import experts
from robust_dd import presets

DATA = dict(dataset="digits", net_width=8, net_depth=2)
MTT = dict(DATA, method="mtt", ipc=1, syn_steps=3, expert_epochs=1, max_start_epoch=2,
           learning_rate=1.0, eval_epochs=2, eval_seeds=1, baseline_draws=1, robust_eval=False,
           log_every=2, checkpoint_every=2)


@pytest.fixture(scope="module")
def buffer(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("experts") / "e")
  meta = experts.experts_experiment(config_lib.ExpertsConfig.make(
      **DATA, num_experts=2, epochs=3, expert_batch=128, expert_augment=False), workdir,
      log=lambda s: None)
  return workdir, meta


def _distill(workdir, **fields):
  return experiment.distill_experiment(config_lib.DistillConfig.make(**fields), str(workdir),
                                       log=lambda s: None)


def test_the_buffer_holds_every_epoch_of_every_expert_and_what_it_was_made_for(buffer):
  workdir, meta = buffer
  trajectories = np.load(os.path.join(workdir, expert_buffer.BUFFER))["trajectories"]
  assert trajectories.shape[:2] == (2, 4) and meta["shape"] == list(trajectories.shape)
  assert not np.allclose(trajectories[:, 0], trajectories[:, -1])  # Training moved them.
  assert not np.allclose(trajectories[0], trajectories[1])  # Two different experts.
  saved = json.load(open(os.path.join(workdir, expert_buffer.META)))
  assert saved["fingerprint"]["net_width"] == 8 and saved["fingerprint"]["num_params"] == (
      trajectories.shape[2])
  with pytest.raises(ValueError, match="already holds"):
    experts.experts_experiment(config_lib.ExpertsConfig.make(**DATA), workdir, log=print)


@pytest.mark.parametrize("fields, message", [
    (dict(net_width=16), "--net_width: experts 8 vs now 16"),
    (dict(zca=True), "--zca: experts False vs now True"),
    (dict(max_start_epoch=3), "exceeds the 3 epochs"),
    (dict(expert_dir="/nonexistent"), "has no experts.npz"),
])
def test_a_buffer_made_for_other_settings_is_refused_before_anything_is_written(
    buffer, tmp_path, fields, message):
  workdir, _ = buffer
  config = dict(MTT, expert_dir=workdir, steps=1)
  config.update(fields)
  with pytest.raises(ValueError, match=message):
    _distill(tmp_path / "w", **config)
  assert not os.path.exists(tmp_path / "w")


@pytest.mark.parametrize("fields, message", [
    (dict(robust="cvar"), "no per-cluster loss"),
    (dict(sampler="importance"), "draws expert segments"),
    (dict(learn_labels=True), "hard labels"),
    (dict(expert_dir=None), "--expert_dir is required"),
])
def test_mtt_refuses_what_it_cannot_mean(fields, message):
  config = config_lib.DistillConfig.make(**{**MTT, "expert_dir": "x", **fields})
  with pytest.raises(ValueError, match=message):
    presets.validate_config(config)


@pytest.mark.slow
@pytest.mark.extended
def test_an_mtt_run_learns_its_step_size_and_resumes_exactly(buffer, tmp_path):
  """MTT through distill_experiment: 4 steps straight, and 2 then 2 more from the checkpoint,
  give the same set and step size; the step size (saved as its log) moved from its start."""
  workdir, _ = buffer
  fields = dict(MTT, expert_dir=workdir)
  straight = _distill(tmp_path / "a", **fields, steps=4)
  _distill(tmp_path / "b", **fields, steps=2)
  _distill(tmp_path / "b", **fields, steps=4)
  a, b = (np.load(os.path.join(tmp_path / w, "distilled.npz")) for w in ("a", "b"))
  np.testing.assert_array_equal(a["images"], b["images"])
  np.testing.assert_array_equal(a["log_syn_lr"], b["log_syn_lr"])
  assert a["log_syn_lr"] != np.float32(np.log(0.01))
  assert 0 < straight["final_loss"] and straight["steps"] == 4
