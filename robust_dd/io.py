"""Files that survive a crash: atomic writes of arrays, JSON, PNG grids and checkpoints.

Every writer writes to a temporary file in the target directory, flushes and fsyncs it, then
renames it over the target (`os.replace` is atomic on POSIX), so a killed run never leaves a
half-written file behind.
"""

from __future__ import annotations

import contextlib
import io as _io
import json
import os
import re
import tempfile
from typing import Any, Optional

import jax
import numpy as np

_TMP_PREFIX = ".tmp-"  # Temporary files of atomic writes.


@contextlib.contextmanager
def _atomic_open(path: str):
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=_TMP_PREFIX, suffix=os.path.basename(path))
  try:
    with os.fdopen(fd, "wb") as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file ordinary permissions.
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def make_dirs(*directories: str) -> list[str]:
  """Creates the directories and removes the temporary files (`.tmp-*`) a killed run left in
  them: a write interrupted by a crash never finished, so nothing reads them. Returns the paths
  removed."""
  removed = []
  for directory in directories:
    os.makedirs(directory, exist_ok=True)
    for name in os.listdir(directory):
      path = os.path.join(directory, name)
      if name.startswith(_TMP_PREFIX) and os.path.isfile(path):
        os.remove(path)
        removed.append(path)
  return removed


def atomic_write_bytes(path: str, data: bytes) -> None:
  """Writes `data` to `path` atomically."""
  with _atomic_open(path) as f:
    f.write(data)


def save_npz(path: str, **arrays) -> None:
  """Saves arrays to an uncompressed `.npz` atomically."""
  buf = _io.BytesIO()
  np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
  atomic_write_bytes(path, buf.getvalue())


def load_npz(path: str) -> dict[str, np.ndarray]:
  """Loads every array of a `.npz` (no pickles)."""
  with np.load(path, allow_pickle=False) as f:
    return {k: f[k] for k in f.files}


def _to_json(value):
  if isinstance(value, (np.floating, np.integer, np.bool_)):
    return value.item()
  if isinstance(value, (np.ndarray, jax.Array)):
    return np.asarray(value).tolist()
  raise TypeError(f"Cannot write {type(value)} to JSON.")


def save_json(path: str, obj: Any) -> None:
  """Writes `obj` as indented JSON atomically (NumPy scalars and arrays allowed)."""
  atomic_write_bytes(path, json.dumps(obj, indent=2, sort_keys=True, default=_to_json).encode())


def load_json(path: str) -> Any:
  with open(path) as f:
    return json.load(f)


def image_grid(images: np.ndarray, *, rows: int, pad: int = 1) -> np.ndarray:
  """Tiles images (n, H, W, C) or flat signals (n, d) into a uint8 grid with `rows` rows.

  Each image is min-max scaled on its own, so whitened or standardised images stay visible.
  Flat signals are drawn as 1×d strips, 8 pixels tall.
  """
  x = np.asarray(images, np.float32)
  if x.ndim == 2:
    x = np.repeat(x[:, None, :, None], 8, axis=1)
  if x.ndim != 4:
    raise ValueError(f"image_grid needs (n, H, W, C) or (n, d) arrays, got shape {x.shape}.")
  lo = x.min(axis=(1, 2, 3), keepdims=True)
  hi = x.max(axis=(1, 2, 3), keepdims=True)
  x = (x - lo) / np.maximum(hi - lo, 1e-12)
  n, h, w, c = x.shape
  if c not in (1, 3):
    x, c = x.mean(axis=-1, keepdims=True), 1
  cols = -(-n // rows)
  grid = np.ones((rows * (h + pad) + pad, cols * (w + pad) + pad, c), np.float32)
  for i in range(n):
    r, col = divmod(i, cols)
    grid[pad + r * (h + pad):pad + r * (h + pad) + h,
         pad + col * (w + pad):pad + col * (w + pad) + w] = x[i]
  grid = (grid * 255).round().astype(np.uint8)
  return grid[..., 0] if c == 1 else grid


def save_image_grid(path: str, images: np.ndarray, *, rows: int, scale: int = 4) -> None:
  """Saves `image_grid(images, rows=rows)` as a PNG, upscaled `scale` times, atomically."""
  from PIL import Image
  grid = image_grid(images, rows=rows)
  grid = np.repeat(np.repeat(grid, scale, axis=0), scale, axis=1)
  buf = _io.BytesIO()
  Image.fromarray(grid).save(buf, format="PNG")
  atomic_write_bytes(path, buf.getvalue())


# --------------------------------------------------------------------------------- checkpoints

_CKPT = re.compile(r"^ckpt_(\d+)\.npz$")


def save_checkpoint(directory: str, state: Any, *, step: int, keep: int = 2) -> str:
  """Saves a pytree's leaves as `ckpt_{step}.npz` atomically; keeps the newest `keep` files."""
  leaves = jax.tree_util.tree_leaves(state)
  path = os.path.join(directory, f"ckpt_{step:08d}.npz")
  save_npz(path, **{f"leaf_{i:04d}": np.asarray(leaf) for i, leaf in enumerate(leaves)})
  for old in checkpoint_steps(directory)[:-keep]:
    os.remove(os.path.join(directory, f"ckpt_{old:08d}.npz"))
  return path


def checkpoint_steps(directory: str) -> list[int]:
  """Steps of the complete checkpoints in `directory`, ascending."""
  if not os.path.isdir(directory):
    return []
  return sorted(int(m.group(1)) for m in map(_CKPT.match, os.listdir(directory)) if m)


def restore_checkpoint(directory: str, template: Any) -> tuple[Optional[Any], int]:
  """Restores the newest checkpoint into the structure of `template`.

  Returns (state, step), or (None, 0) when there is no checkpoint. Leaf shapes and dtypes must
  match the template's; a mismatch raises ValueError.
  """
  steps = checkpoint_steps(directory)
  if not steps:
    return None, 0
  step = steps[-1]
  arrays = load_npz(os.path.join(directory, f"ckpt_{step:08d}.npz"))
  leaves, treedef = jax.tree_util.tree_flatten(template)
  if len(arrays) != len(leaves):
    raise ValueError(f"Checkpoint {directory}/ckpt_{step:08d}.npz holds {len(arrays)} arrays; "
                     f"this run's state has {len(leaves)}. Use a new --workdir.")
  restored = []
  for i, leaf in enumerate(leaves):
    value = arrays[f"leaf_{i:04d}"]
    if value.shape != np.shape(leaf) or value.dtype != np.asarray(leaf).dtype:
      raise ValueError(f"Checkpoint leaf {i} has shape {value.shape} {value.dtype}, expected "
                       f"{np.shape(leaf)} {np.asarray(leaf).dtype}. Use a new --workdir.")
    restored.append(value)
  return jax.tree_util.tree_unflatten(treedef, restored), step
