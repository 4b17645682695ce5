"""robust_dd.presets: the method records' presets, help and checks applied to a config."""

import pytest

from robust_dd import config as config_lib
from robust_dd import presets

DistillConfig = config_lib.DistillConfig


def test_presets_fill_only_what_the_user_left_unset():
  kip = presets.resolve_config(DistillConfig.make(), 10)
  assert (kip.get("learning_rate"), kip.get("steps"), kip.get("outer_loop")) == (0.01, 2000, 0)
  dc = presets.resolve_config(DistillConfig.make(method="dc", ipc=10, learning_rate=0.5), 10)
  assert (dc.get("learning_rate"), dc.get("outer_loop"), dc.get("inner_loop")) == (0.5, 10, 50)


def test_the_help_of_a_preset_field_lists_the_methods_values():
  assert presets.preset_help("learning_rate") == (
      " Default by method: kip 0.01; dc, dsa, lcmat 0.1; mtt 100.0.")
  assert presets.preset_help("zca_reg") == ""


@pytest.mark.parametrize("fields, message", [
    (dict(method="dc", krr_loss="platt"), "is a KIP loss"),
    (dict(method="dc", outer_loop=0), "--outer_loop must be >= 1"),
    (dict(method="kip", robust="cvar", robust_on="network"), "has no network"),
    (dict(method="lcmat", hvp="exact", conv_impl="shifted"), "needs forward-mode autodiff"),
])
def test_method_checks_run_after_the_field_checks(fields, message):
  config = DistillConfig.make(**fields)
  config_lib.validate_fields(config)  # Valid fields ...
  with pytest.raises(ValueError, match=message):  # ... that the method refuses.
    presets.validate_config(config)
