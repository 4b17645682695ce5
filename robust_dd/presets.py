"""The method records applied to a config: their presets, their flags' help and their checks.

`config` is a leaf that knows fields, choices and generic checks; `methods.METHODS` knows each
method. This module joins them: `resolve_config` fills the fields a user left unset with the
method's presets, `validate_config` runs the field checks and then the method's own
(`Method.validate`), and `preset_help` writes the "Default by method" part of a flag's help
(the drivers pass it to `config.flag_specs`).
"""

from __future__ import annotations

from robust_dd import config as config_lib
from robust_dd import methods


def preset_help(name: str) -> str:
  """' Default by method: kip 0.01; dc, dsa, lcmat 0.1.' for fields with per-method presets."""
  by_value: dict[str, list[str]] = {}
  for method in methods.METHODS.values():
    if method.ipc_defaults is not None and name in method.ipc_defaults(1):
      value = "by IPC (" + ", ".join(f"{ipc}: {method.ipc_defaults(ipc)[name]}"
                                     for ipc in (1, 10, 50)) + ")"
    elif name in method.defaults:
      value = repr(method.defaults[name])
    else:
      continue
    by_value.setdefault(value, []).append(method.name)
  if not by_value:
    return ""
  return " Default by method: " + "; ".join(f"{', '.join(m)} {v}"
                                            for v, m in by_value.items()) + "."




def resolve_config(config: config_lib.DistillConfig, num_classes: int) -> config_lib.DistillConfig:
  """Fills the fields left None with the method's presets (`methods.METHODS`), and turns the
  deprecated `target_batch` (a total) into `real_per_class`; what a run saves and reports."""
  method = methods.get(config.method)
  defaults = dict(method.defaults)
  if method.ipc_defaults is not None:
    defaults.update(method.ipc_defaults(config.ipc))
  # Prototype clusters follow the synthetic set, so they are recomputed every step by default.
  defaults["recluster_every"] = int(config.robust.cluster_assignment == "prototype")
  changes = {k: v for k, v in defaults.items() if config.get(k) is None}
  total = config.optim.target_batch
  if total is not None:
    if config.optim.real_per_class is not None:
      raise ValueError("Pass --real_per_class or its deprecated alias --target_batch, not both.")
    if total % num_classes:
      raise ValueError(f"--target_batch={total} must be a multiple of the {num_classes} classes "
                       "(better: pass --real_per_class).")
    changes.update(real_per_class=total // num_classes, target_batch=None)
  return config.replace(**changes)


def validate_config(config: config_lib.DistillConfig) -> None:
  """Raises ValueError, saying what to change, for settings that cannot run (before any data is
  loaded; `experiment.prepare_data` checks what depends on the data): the field checks
  (`config.validate_fields`), then what depends on the method (a network to train or not), then
  the method's own (`Method.validate`)."""
  config_lib.validate_fields(config)
  method = methods.get(config.method)
  trains_network = method.trains_network
  o, r = config.optim, config.robust
  if o.krr_loss != "mse" and trains_network:
    raise ValueError(f"--krr_loss={o.krr_loss} is a KIP loss; --method={config.method} matches "
                     "gradients.")
  outer = config.get("outer_loop")
  if trains_network and outer is not None and outer < 1:  # KIP's presets set it to 0.
    raise ValueError(f"--outer_loop must be >= 1, got {outer}.")
  if r.robust_on != "matching" and not trains_network:
    raise ValueError(
        f"--robust_on={r.robust_on} trains the matching network on real data with the CVaR; "
        f"--method={config.method} has no network (its model is a kernel, with nothing to "
        "train): use --robust_on=matching, the CVaR over its per-cluster KRR losses.")
  method.validate(config)
