"""MTT's expert buffer read back for a distillation, checked against its config.

`experiments.experts` (`experts.experts_experiment`) writes experts.npz (every expert's flat
parameters after each epoch) and experts.json (what the buffer was made for: the MATCHED flags,
the parameter count, a hash of the preprocessed training images). `load_experts` (MTT's
`real_extras` hook in `methods.METHODS`) refuses a buffer made for other data, preprocessing or
network with a message that names the differing flags.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from robust_dd import io

Log = Callable[[str], None]
BUFFER, META = "experts.npz", "experts.json"
# What must match between the buffer and a distillation: the data, split and preprocessing, and
# the network (conv_impl is a speed knob of the same network).
MATCHED = ("dataset", "data_path", "split_seed", "zca", "zca_reg", "subgroup",
           "subgroup_train_fraction", "subgroup_test_fraction", "net", "net_depth",
           "net_width", "net_padding")


def data_fingerprint(x_train: np.ndarray) -> str:
  """A hash of the preprocessed training images (shape, dtype and bytes)."""
  x = np.ascontiguousarray(x_train, np.float32)
  digest = hashlib.sha256(repr(x.shape).encode())
  digest.update(x.tobytes())
  return digest.hexdigest()[:16]


def fingerprint(config, x_train, num_params: int) -> dict[str, Any]:
  """What a buffer was made for: the MATCHED flags, the parameter count, the data hash."""
  return {**{name: config.get(name) for name in MATCHED}, "num_params": int(num_params),
          "data_hash": data_fingerprint(x_train)}


def load_experts(config, x_train, *, log: Log = print) -> jax.Array:
  """The buffer of `config.trajectory.expert_dir` as (E, T + 1, P), after checking that it was
  made for this config's data, preprocessing and network (ValueError naming what differs) and
  that its T covers --max_start_epoch + --expert_epochs."""
  directory = config.trajectory.expert_dir
  paths = [os.path.join(directory, name) for name in (BUFFER, META)]
  for path in paths:
    if not os.path.exists(path):
      raise ValueError(f"--expert_dir={directory} has no {os.path.basename(path)}: train experts "
                       "there with python -m experiments.experts --workdir=" + directory)
  meta = io.load_json(paths[1])
  saved = meta["fingerprint"]
  now = fingerprint(config, x_train, saved["num_params"])
  diffs = [k for k in MATCHED if saved.get(k) != now[k]]
  if diffs:
    raise ValueError(f"--expert_dir={directory} was trained for other settings ("
                     + ", ".join(f"--{k}: experts {saved.get(k)!r} vs now {now[k]!r}"
                                 for k in diffs)
                     + "); pass the experts' flags or train experts with these.")
  if saved["data_hash"] != now["data_hash"]:
    raise ValueError(f"--expert_dir={directory} was trained on other training images (their "
                     "hash differs: another version of the data or of its preprocessing); "
                     "train experts again.")
  trajectories = io.load_npz(paths[0])["trajectories"]
  t = config.trajectory
  epochs = trajectories.shape[1] - 1
  if t.max_start_epoch + t.expert_epochs > epochs:
    raise ValueError(f"--max_start_epoch={t.max_start_epoch} + --expert_epochs="
                     f"{t.expert_epochs} exceeds the {epochs} epochs of the experts in "
                     f"{directory}; lower them or train longer experts.")
  log(f"Experts: {trajectories.shape[0]} trajectories of {epochs} epochs from {directory}.")
  return jnp.asarray(trajectories)
