"""robust_dd.io: atomic writes, Orbax checkpoints (retention, a killed save, old npz ones),
image grids."""

import asyncio
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from robust_dd import distill
from robust_dd import io

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_atomic_write_leaves_old_file_when_writer_fails(tmp_path):
  path = str(tmp_path / "a.json")
  io.save_json(path, {"x": 1})

  class Boom:
    pass

  with pytest.raises(TypeError):
    io.save_json(path, {"x": Boom()})
  assert io.load_json(path) == {"x": 1}
  assert os.listdir(tmp_path) == ["a.json"]  # No temporary file left behind.


def _state(step):
  """A DistillState-like pytree: arrays of several dtypes, a NamedTuple, an empty node, None."""
  return distill.DistillState(
      params={"images": jnp.arange(6.0).reshape(2, 3) * step, "labels": jnp.ones((2, 2))},
      opt_state=(optax.EmptyState(), {"count": jnp.int32(step)}), step=jnp.int32(step))


def test_orbax_checkpoint_round_trip_and_retention(tmp_path):
  with io.Checkpoints(str(tmp_path), keep=2) as checkpoints:
    for step in (10, 20, 30):
      checkpoints.save(_state(step), step=step)
  assert io.checkpoint_steps(str(tmp_path)) == [20, 30]
  assert sorted(os.listdir(tmp_path)) == ["20", "30"]  # Orbax step directories, nothing else.
  restored, step = io.restore_checkpoint(str(tmp_path), _state(0))
  assert step == 30 and isinstance(restored, distill.DistillState)
  for got, want in zip(jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(_state(30))):
    np.testing.assert_array_equal(got, want)
    assert got.dtype == want.dtype
  assert restored.sampler is None and isinstance(restored.opt_state[0], optax.EmptyState)


def test_restore_rejects_mismatched_shapes(tmp_path):
  io.save_checkpoint(str(tmp_path), {"a": jnp.zeros(3)}, step=1)
  with pytest.raises(ValueError, match="new --workdir"):
    io.restore_checkpoint(str(tmp_path), {"a": jnp.zeros(4)})
  with pytest.raises(ValueError, match="new --workdir"):
    io.restore_checkpoint(str(tmp_path), {"a": jnp.zeros(3), "b": jnp.zeros(2)})
  assert io.restore_checkpoint(str(tmp_path / "none"), {"a": jnp.zeros(3)}) == (None, 0)


_KILLED_DURING_SAVE = """
import os, sys
sys.path[:0] = [{repo!r}, os.path.join({repo!r}, "tests")]
from robust_dd import io
import test_io as t
rename = os.rename
def rename_or_die(src, dst, *a, **k):  # Killed when Orbax finalises step 3: its files are written.
  if str(dst).endswith(os.sep + "3"):
    os._exit(9)
  return rename(src, dst, *a, **k)
os.rename = rename_or_die
with io.Checkpoints({directory!r}) as checkpoints:
  for step in (1, 2, 3):
    checkpoints.save(t._state(step), step=step)
"""


def _slow_orbax_rmtree(monkeypatch):
  """Delays Orbax's background deletion of temporary directories by 0.5 s, so a manager that
  does not wait for it loses the race every time (it lost it once in CI)."""
  try:
    from orbax.checkpoint._src.path import async_path
  except ImportError:  # Another Orbax layout: the test still runs, without the delay.
    return
  rmtree = async_path.rmtree

  async def slow(*args, **kwargs):
    await asyncio.sleep(0.5)
    return await rmtree(*args, **kwargs)

  monkeypatch.setattr(async_path, "rmtree", slow)


def test_a_run_killed_during_a_save_resumes_from_the_previous_checkpoint(tmp_path, monkeypatch):
  """A process dies (os._exit, no clean-up) while Orbax finalises checkpoint 3: what it leaves
  is a temporary directory, never step 3; the next run restores step 2 exactly and deletes the
  temporary directory before its manager closes."""
  _slow_orbax_rmtree(monkeypatch)
  directory = str(tmp_path / "ckpt")
  code = _KILLED_DURING_SAVE.format(repo=REPO, directory=directory)
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                        timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"), check=False)
  assert proc.returncode == 9, proc.stderr[-2000:]
  left = sorted(os.listdir(directory))
  assert left[:2] == ["1", "2"] and len(left) == 3 and ".orbax-checkpoint-tmp" in left[2], left
  restored, step = io.restore_checkpoint(directory, _state(0))
  assert step == 2
  np.testing.assert_array_equal(restored.params["images"], _state(2).params["images"])
  assert sorted(os.listdir(directory)) == ["1", "2"]  # The half-finished save is gone.


def test_npz_checkpoints_of_older_versions_are_read_then_superseded(tmp_path):
  """A workdir from before Orbax (ckpt_<step>.npz, one array per leaf) resumes; once a newer
  Orbax checkpoint exists, that one is restored."""
  leaves = jax.tree_util.tree_leaves(_state(5))
  io.save_npz(str(tmp_path / "ckpt_00000005.npz"),
              **{f"leaf_{i:04d}": np.asarray(leaf) for i, leaf in enumerate(leaves)})
  assert io.npz_checkpoint_steps(str(tmp_path)) == [5]
  restored, step = io.restore_checkpoint(str(tmp_path), _state(0))
  assert step == 5
  np.testing.assert_array_equal(restored.params["images"], _state(5).params["images"])
  io.save_checkpoint(str(tmp_path), _state(6), step=6)
  restored, step = io.restore_checkpoint(str(tmp_path), _state(0))
  assert step == 6 and int(restored.step) == 6


def test_image_grid_layout_and_scaling():
  images = np.stack([np.full((2, 3, 1), i, np.float32) for i in range(4)])
  images[:, 0, 0, 0] = -1.0  # One dark pixel per image: each image scaled to its own range.
  grid = io.image_grid(images, rows=2, pad=1)
  assert grid.shape == (2 * 3 + 1, 2 * 4 + 1)
  assert grid[1, 1] == 0 and grid[1, 2] == 255
  assert io.image_grid(np.zeros((3, 5)), rows=1).shape == (8 + 2, 3 * 6 + 1)
