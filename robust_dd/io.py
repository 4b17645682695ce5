"""Files that survive a crash: atomic writes of arrays, JSON, PNG grids; Orbax checkpoints.

Every writer writes to a temporary file in the target directory, flushes and fsyncs it, then
renames it over the target (`os.replace` is atomic on POSIX), so a killed run never leaves a
half-written file behind. A run holds its directory with `WorkdirLock`, so two runs never
write one workdir at once.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
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


class WorkdirError(ValueError):
  """A workdir that cannot be used: not creatable or writable, or held by another run."""


def _unusable(path: str, e: OSError) -> WorkdirError:
  return WorkdirError(f"cannot use {e.filename or path}: {e.strerror or e}. Choose another "
                      "--workdir.")


def make_dirs(*directories: str) -> list[str]:
  """Creates the directories and removes the temporary files (`.tmp-*`) a killed run left in
  them: a write interrupted by a crash never finished, so nothing reads them. Returns the paths
  removed. Raises WorkdirError if a directory cannot be created or listed."""
  removed = []
  for directory in directories:
    try:
      os.makedirs(directory, exist_ok=True)
      if not os.access(directory, os.W_OK | os.X_OK):
        raise PermissionError(13, "Permission denied", directory)
    except OSError as e:
      raise _unusable(directory, e) from e
    for name in os.listdir(directory):
      path = os.path.join(directory, name)
      if name.startswith(_TMP_PREFIX) and os.path.isfile(path):
        os.remove(path)
        removed.append(path)
  return removed


LOCK_FILE = ".lock"


class WorkdirLock:
  """An exclusive lock on a workdir (`flock` on `<workdir>/.lock`, which holds the owner's pid).

  A second process that tries to take it gets a WorkdirError naming the owner and writes
  nothing. The kernel drops the lock when its process dies however it dies, so a lock left by a
  killed run is simply taken over. Local filesystems only (flock on NFS is not reliable).
  """

  def __init__(self, workdir: str):
    self.workdir, self.path, self._fd = workdir, os.path.join(workdir, LOCK_FILE), None

  def __enter__(self) -> "WorkdirLock":
    self.acquire()
    return self

  def __exit__(self, *exc) -> None:
    self.release()

  def acquire(self) -> None:
    make_dirs(self.workdir)
    try:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
      raise _unusable(self.path, e) from e
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      pid = os.read(fd, 64).decode("ascii", "replace").strip()
      os.close(fd)
      who = f"a running process (pid {pid})" if pid.isdigit() else "another process"
      raise WorkdirError(f"--workdir={self.workdir} is in use by {who}; wait for it to finish, "
                         "or choose another --workdir.") from e
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    self._fd = fd

  def release(self) -> None:
    if self._fd is not None:
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None


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


def save_csv(path: str, header: list[str], rows: list[list[Any]]) -> None:
  """A CSV file (comma-separated, one header line) written atomically."""
  buf = _io.StringIO()
  writer = csv.writer(buf, lineterminator="\n")
  writer.writerow(header)
  writer.writerows(rows)
  atomic_write_bytes(path, buf.getvalue().encode())


def save_image_folder(directory: str, images: np.ndarray, labels: np.ndarray, *,
                      split: str = "train", num_classes: int) -> list[str]:
  """Saves uint8 images (n, H, W, 1 or 3) as `directory/split/<label>/<label>_<i>.png`: the layout
  `tfds.ImageFolder(directory)` reads as a dataset (and torchvision's `ImageFolder` reads from
  `directory/split`). Label folders are zero-padded class indices, so their sorted order is the
  class order. Returns the files' paths relative to `directory`, in image order."""
  from PIL import Image
  images = np.asarray(images)
  if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f"save_image_folder needs uint8 images (n, H, W, 1 or 3), got "
                     f"{images.dtype} {images.shape}.")
  width = len(str(num_classes - 1))
  paths = []
  for i, (image, label) in enumerate(zip(images, np.asarray(labels))):
    name = f"{int(label):0{width}d}"
    rel = os.path.join(split, name, f"{name}_{i:05d}.png")
    os.makedirs(os.path.join(directory, split, name), exist_ok=True)
    buf = _io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buf, format="PNG")
    atomic_write_bytes(os.path.join(directory, rel), buf.getvalue())
    paths.append(rel)
  return paths


# --------------------------------------------------------------------------------- checkpoints
#
# Orbax (`orbax.checkpoint.CheckpointManager`, the checkpointing library Flax recommends): each
# checkpoint is a directory `<step>/` written as `<step>.orbax-checkpoint-tmp*` and renamed when
# complete, so a run killed during a save leaves only a temporary directory, which the next run's
# manager deletes; the newest `keep` are kept; saves run in the background while the loop goes on.
# Arrays restore onto the template's shardings, so a run saved on 8 devices resumes on 1.

_NPZ_CKPT = re.compile(r"^ckpt_(\d+)\.npz$")  # Checkpoints of robust_dd before Orbax.


class Checkpoints:
  """The checkpoints of one run in `directory`, through an Orbax `CheckpointManager`.

  Use as a context manager (or call `close`): saves are asynchronous and `close` waits for the
  last one. `restore` also reads the npz checkpoints (`ckpt_<step>.npz`) older versions wrote.
  """

  def __init__(self, directory: str, *, keep: int = 2, asynchronous: bool = True):
    import orbax.checkpoint as ocp  # Imported here: only runs that checkpoint pay for it.
    self._ocp = ocp
    self.directory = os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, cleanup_tmp_directories=True,
            enable_async_checkpointing=asynchronous))

  def __enter__(self) -> "Checkpoints":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def close(self) -> None:
    """Waits for a save in progress and for the deletion of a killed run's temporary directories
    to finish, and releases the manager."""
    # Orbax deletes those directories in a background thread that only its `save` waits for; a
    # manager closed without saving (a restore) would shut that thread's executor down under it
    # and leave the directory behind. (Private in orbax-checkpoint 0.12; absent, nothing waits.)
    getattr(self._manager, "_maybe_await_cleanup_tmp_directory", lambda: None)()
    self._manager.wait_until_finished()
    self._manager.close()

  def steps(self) -> list[int]:
    """Steps of the complete Orbax checkpoints, ascending (a save in progress is not one)."""
    self._manager.reload()  # Steps another process wrote since this manager opened.
    return sorted(self._manager.all_steps())

  def save(self, state: Any, *, step: int) -> None:
    """Starts saving the pytree `state` as checkpoint `step` (returns once the arrays are copied
    off the devices; the write finishes in the background). Deletes checkpoints beyond `keep`."""
    self._manager.save(step, args=self._ocp.args.StandardSave(state))

  def restore(self, template: Any) -> tuple[Optional[Any], int]:
    """The newest checkpoint (Orbax, or an older version's npz) in the structure of `template`,
    its arrays placed as the template's are (its shardings: any device count); (None, 0) when
    there is none. Raises ValueError when it does not fit the template."""
    steps, old = self.steps(), npz_checkpoint_steps(self.directory)
    if old and (not steps or old[-1] > steps[-1]):
      path = os.path.join(self.directory, f"ckpt_{old[-1]:08d}.npz")
      return _restore_npz(path, template), old[-1]
    if not steps:
      return None, 0
    abstract = jax.tree_util.tree_map(_abstract_leaf, template)
    try:
      state = self._manager.restore(steps[-1], args=self._ocp.args.StandardRestore(abstract))
    except (ValueError, KeyError, TypeError) as e:
      raise ValueError(f"Checkpoint {self.directory}/{steps[-1]} does not fit this run's state "
                       f"({type(e).__name__}: {str(e)[:200]}). Use a new --workdir.") from e
    _check_leaves(state, template, f"{self.directory}/{steps[-1]}")
    return state, steps[-1]


def _abstract_leaf(leaf):
  leaf = jax.numpy.asarray(leaf)
  return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf.sharding)


def _check_leaves(restored, template, where: str) -> None:
  got, want = jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(template)
  if len(got) != len(want):
    raise ValueError(f"Checkpoint {where} holds {len(got)} arrays; this run's state has "
                     f"{len(want)}. Use a new --workdir.")
  for i, (a, b) in enumerate(zip(got, want)):
    if np.shape(a) != np.shape(b) or np.asarray(a).dtype != np.asarray(b).dtype:
      raise ValueError(f"Checkpoint leaf {i} has shape {np.shape(a)} {np.asarray(a).dtype}, "
                       f"expected {np.shape(b)} {np.asarray(b).dtype}. Use a new --workdir.")


def npz_checkpoint_steps(directory: str) -> list[int]:
  """Steps of the npz checkpoints (`ckpt_<step>.npz`) robust_dd wrote before Orbax, ascending."""
  if not os.path.isdir(directory):
    return []
  return sorted(int(m.group(1)) for m in map(_NPZ_CKPT.match, os.listdir(directory)) if m)


def _restore_npz(path: str, template: Any) -> Any:
  arrays = load_npz(path)
  leaves, treedef = jax.tree_util.tree_flatten(template)
  restored = [arrays.get(f"leaf_{i:04d}") for i in range(len(arrays))]
  _check_leaves(restored, leaves, path)
  return jax.tree_util.tree_unflatten(treedef, restored)


def save_checkpoint(directory: str, state: Any, *, step: int, keep: int = 2) -> None:
  """Saves `state` as checkpoint `step` in `directory` and waits for it (`Checkpoints`, once)."""
  with Checkpoints(directory, keep=keep, asynchronous=False) as checkpoints:
    checkpoints.save(state, step=step)


def checkpoint_steps(directory: str) -> list[int]:
  """Steps of the complete checkpoints in `directory`, ascending."""
  if not os.path.isdir(directory):
    return []
  with Checkpoints(directory) as checkpoints:
    return checkpoints.steps()


def restore_checkpoint(directory: str, template: Any) -> tuple[Optional[Any], int]:
  """`Checkpoints(directory).restore(template)`: the newest checkpoint, or (None, 0)."""
  if not os.path.isdir(directory):
    return None, 0
  with Checkpoints(directory) as checkpoints:
    return checkpoints.restore(template)


# ------------------------------------------------------------------------------ metric writers


class MetricWriter:
  """Scalars and images as TensorBoard event files in `logdir` (`tensorboard --logdir DIR`).

  Written with tensorboardX, which needs no TensorFlow. `purge_step` (a resumed run's step)
  tells TensorBoard to drop what an earlier run of this logdir wrote from that step on, so a run
  killed after its last checkpoint shows one curve. Use as a context manager (or call `close`).
  """

  def __init__(self, logdir: str, *, purge_step: Optional[int] = None):
    from tensorboardX import SummaryWriter  # Imported here: only writers pay for it.
    os.makedirs(logdir, exist_ok=True)
    self.logdir = logdir
    self._writer = SummaryWriter(logdir, purge_step=purge_step or None, flush_secs=10)

  def __enter__(self) -> "MetricWriter":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def scalars(self, step: int, values: dict[str, float]) -> None:
    """One scalar per name (finite numbers only; other values are skipped)."""
    for name, value in values.items():
      if isinstance(value, (int, float, np.floating, np.integer)) and np.isfinite(value):
        self._writer.add_scalar(name, float(value), global_step=int(step))

  def image(self, step: int, name: str, image: np.ndarray) -> None:
    """A uint8 image (H, W) or (H, W, C), e.g. `image_grid(...)`."""
    image = np.asarray(image)
    if image.ndim == 2:
      image = image[..., None]
    self._writer.add_image(name, image, global_step=int(step), dataformats="HWC")

  def flush(self) -> None:
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()


def read_events(logdir: str) -> dict[str, list[tuple[int, Any]]]:
  """What the event files in `logdir` hold: {tag: [(step, value), ...]} in writing order, value a
  float for scalars and the PNG bytes for images. A reader for tests and scripts that needs
  neither TensorFlow nor TensorBoard (event files are TFRecords of `Event` protos)."""
  from tensorboardX.proto import event_pb2
  out: dict[str, list[tuple[int, Any]]] = {}
  for name in sorted(os.listdir(logdir)):
    if "tfevents" not in name:
      continue
    with open(os.path.join(logdir, name), "rb") as f:
      data = f.read()
    pos = 0
    while pos + 12 <= len(data):  # Record: length (8), its CRC (4), payload, payload CRC (4).
      length = int.from_bytes(data[pos:pos + 8], "little")
      payload = data[pos + 12:pos + 12 + length]
      pos += 12 + length + 4
      event = event_pb2.Event.FromString(payload)
      for value in event.summary.value:
        item = value.image.encoded_image_string if value.HasField("image") else value.simple_value
        out.setdefault(value.tag, []).append((int(event.step), item))
  return out
