"""robust_dd.config: flat access to nested configs, flag specs, presets, validation, workdirs."""

import json
import math
import os

import pytest

from robust_dd import config as config_lib
from robust_dd import methods
from robust_dd import presets

DistillConfig = config_lib.DistillConfig


def test_flag_names_are_unique_and_reach_every_leaf():
  for cls in (DistillConfig, config_lib.SelectConfig, config_lib.ExpertsConfig):
    specs = config_lib.flag_specs(cls)
    names = [s.name for s in specs]
    assert len(names) == len(set(names))
    assert set(names) == set(cls().flat())
  c = DistillConfig.make(kernel="nngp", robust="cvar", sampler="importance", arch="conv",
                         net_width=8, real_per_class=3)
  assert (c.kernel.kind, c.robust.objective, c.sampler.kind) == ("nngp", "cvar", "importance")
  assert (c.kernel.arch, c.network.net_width, c.optim.real_per_class) == ("conv", 8, 3)
  assert c.replace(kernel="ntk").kernel.kind == "ntk" and c.kernel.kind == "nngp"  # Frozen.
  assert c.replace(kernel=config_lib.KernelConfig(depth=4)).kernel.depth == 4  # A whole section.
  with pytest.raises(ValueError, match="Unknown config fields"):
    DistillConfig.make(learning_rat=0.1)


def test_dicts_round_trip_and_old_flat_configs_load():
  c = DistillConfig.make(method="dc", ipc=3, zca=True, tail_fraction=0.3)
  assert DistillConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c
  old = dict(DistillConfig().flat(), target_batch=500, robust="cvar", kernel="nngp",
             removed_field=1)  # A v0.1 config.json: flat flag names.
  del old["real_per_class"]
  loaded = DistillConfig.from_dict(old)
  assert loaded.optim.target_batch == 500 and loaded.robust.objective == "cvar"
  assert presets.resolve_config(loaded, 10).optim.real_per_class == 50


def test_specs_carry_types_choices_and_each_methods_preset():
  specs = {s.name: s for s in config_lib.flag_specs(DistillConfig,
                                                    help_suffix=presets.preset_help)}
  assert specs["method"].kind == "enum" and specs["method"].choices == tuple(methods.METHODS)
  assert specs["zca"].kind == "bool" and specs["diag_reg"].kind == "float"
  assert specs["steps"].default is None
  assert "kip 2000; dc, dsa, lcmat, mtt 1000" in specs["steps"].help
  assert "by IPC (1: 1, 10: 10, 50: 50)" in specs["outer_loop"].help
  assert {s.name: s.kind for s in config_lib.flag_specs(config_lib.SelectConfig)}[
      "evaluators"] == "list"


@pytest.mark.parametrize("field", ["learning_rate", "diag_reg", "tail_fraction", "rho", "zca_reg",
                                   "w_std", "sampler_beta"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_every_float_field_must_be_finite(field, value):
  with pytest.raises(ValueError, match=f"--{field}=.* is not a finite number"):
    presets.validate_config(DistillConfig.make(**{field: value}))


def test_validation_messages_name_the_flag():
  for bad, message in ((dict(ipc=0), "--ipc"), (dict(method="mtt"), "--method"),
                       (dict(metric="l2"), "--metric"),
                       (dict(method="dc", outer_loop=0), "outer_loop"),
                       (dict(real_per_class=0), "real_per_class"),
                       (dict(eval_seeds=0), "eval_seeds"), (dict(net_width=0), "net_width"),
                       (dict(eval_seed_batch=-1), "--eval_seed_batch"),
                       (dict(krr_loss="hinge"), "--krr_loss"),
                       (dict(method="dc", krr_loss="platt"), "--krr_loss=platt is a KIP loss"),
                       (dict(method="dc", robust_on="network"), "pass --robust=cvar"),
                       (dict(robust="cvar", robust_on="both"), "--method=kip has no network"),
                       (dict(method="dc", robust="cvar", robust_on="network",
                             robust_net_batch=0), "--robust_net_batch"),
                       (dict(eval_nets=("convnet", "lenet")), "--eval_nets"),
                       (dict(eval_nets=("vit", "vit")), "--eval_nets"),
                       (dict(net_padding="valid"), "--net_padding"),
                       (dict(grad_chunk=-1), "--grad_chunk must be >= 0"),
                       (dict(method="lcmat", conv_impl="shifted"), "--hvp=finite_difference")):
    with pytest.raises(ValueError, match=message):
      presets.validate_config(DistillConfig.make(**bad))
  with pytest.raises(ValueError, match="not both"):
    presets.resolve_config(DistillConfig.make(real_per_class=5, target_batch=50), 10)
  with pytest.raises(ValueError, match="multiple of the 10 classes"):
    presets.resolve_config(DistillConfig.make(target_batch=55), 10)


def test_workdir_checks_create_nothing(tmp_path):
  c = DistillConfig.make(ipc=2)
  config_lib.check_workdir(str(tmp_path / "new" / "deeper"), c)
  assert not os.path.exists(tmp_path / "new")
  (tmp_path / "file").write_text("x")
  with pytest.raises(ValueError, match="is a file"):
    config_lib.check_workdir(str(tmp_path / "file" / "w"), c)
  run = tmp_path / "run"
  run.mkdir()
  (run / "config.json").write_text(json.dumps(c.replace(steps=5).to_dict()))
  config_lib.check_workdir(str(run), c.replace(steps=50, eval_seeds=1))  # Resumable fields.
  with pytest.raises(ValueError, match="different config .*ipc: saved 2 vs now 3"):
    config_lib.check_workdir(str(run), c.replace(ipc=3))


def test_random_feature_settings_resolve_and_bad_ones_are_refused():
  from robust_dd import random_features
  c = DistillConfig.make(arch="conv", pool=True, random_features=64, rf_width=32)
  assert c.kernel.kernel_kind == "nngp" and c.kernel.eval_features == 256
  assert DistillConfig().kernel.kernel_kind == "ntk" and DistillConfig().kernel.eval_features == 0
  train = methods.config_kernel_fn(c)
  assert isinstance(train, random_features.RandomFeatureKernel)
  assert (train.num_features, train.width, train.pool, train.integrate_readout) == (64, 32, True,
                                                                                    True)
  assert not methods.config_kernel_fn(c.replace(rf_integrate_readout=False)).integrate_readout
  assert methods.config_eval_kernel_fn(c) is methods.config_eval_kernel_fn(c)  # One fixed draw.
  assert hasattr(methods.config_eval_kernel_fn(c), "features")
  exact = methods.config_eval_kernel_fn(c.replace(eval_random_features=0))
  assert not hasattr(exact, "features") and exact.__name__ == "conv1_nngp"
  for bad, match in ((dict(random_features=100), "multiple of --rf_width=32"),
                     (dict(random_features=64, eval_random_features=48), "multiple of"),
                     (dict(random_features=64, kernel="ntk"), "estimates the NNGP"),
                     (dict(random_features=-32), ">= 0")):
    with pytest.raises(ValueError, match=match):
      presets.validate_config(DistillConfig.make(**bad))
