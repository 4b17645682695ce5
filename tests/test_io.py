"""robust_dd.io: atomic writes, checkpoints, image grids."""

import os

import jax.numpy as jnp
import numpy as np
import pytest

from robust_dd import io


def test_atomic_write_leaves_old_file_when_writer_fails(tmp_path):
  path = str(tmp_path / "a.json")
  io.save_json(path, {"x": 1})

  class Boom:
    pass

  with pytest.raises(TypeError):
    io.save_json(path, {"x": Boom()})
  assert io.load_json(path) == {"x": 1}
  assert os.listdir(tmp_path) == ["a.json"]  # No temporary file left behind.


def test_checkpoint_round_trip_and_retention(tmp_path):
  state = {"a": jnp.arange(3.0), "b": (jnp.ones((2, 2), jnp.int32), jnp.zeros(()))}
  for step in (10, 20, 30):
    io.save_checkpoint(str(tmp_path), jax_tree_scale(state, step), step=step, keep=2)
  assert io.checkpoint_steps(str(tmp_path)) == [20, 30]
  restored, step = io.restore_checkpoint(str(tmp_path), state)
  assert step == 30
  np.testing.assert_array_equal(restored["a"], np.arange(3.0) * 30)
  assert restored["b"][0].dtype == np.int32


def jax_tree_scale(tree, factor):
  import jax
  return jax.tree_util.tree_map(lambda x: x * factor, tree)


def test_restore_rejects_mismatched_shapes(tmp_path):
  io.save_checkpoint(str(tmp_path), {"a": jnp.zeros(3)}, step=1)
  with pytest.raises(ValueError, match="new --workdir"):
    io.restore_checkpoint(str(tmp_path), {"a": jnp.zeros(4)})
  assert io.restore_checkpoint(str(tmp_path / "none"), {"a": jnp.zeros(3)}) == (None, 0)


def test_image_grid_layout_and_scaling():
  images = np.stack([np.full((2, 3, 1), i, np.float32) for i in range(4)])
  images[:, 0, 0, 0] = -1.0  # One dark pixel per image: each image scaled to its own range.
  grid = io.image_grid(images, rows=2, pad=1)
  assert grid.shape == (2 * 3 + 1, 2 * 4 + 1)
  assert grid[1, 1] == 0 and grid[1, 2] == 255
  assert io.image_grid(np.zeros((3, 5)), rows=1).shape == (8 + 2, 3 * 6 + 1)
