"""Padded groups (classes, clusters): one index table and one on-device sampler for both.

Groups of unequal size are stored as a (G, width) table of member indices, padded with 0, and
their counts: `table[g, :counts[g]]` are the members of group g, in ascending order. `sample`
draws a fixed number of distinct members of every group with one Gumbel top-k, uniformly or in
proportion to given probabilities, so the real batches of every method and of every robust variant
are drawn by the same jittable code.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp


def index_table(group_ids, num_groups: int, *, width: Optional[int] = None
                ) -> tuple[jax.Array, jax.Array]:
  """(table (G, width), counts (G,)) of the samples with `group_ids == g`, padded with 0.

  Jittable: `width` (the padded row length) must be static and at least the largest group; None
  takes the number of samples.
  """
  ids = jnp.asarray(group_ids, jnp.int32)
  n = ids.shape[0]
  width = n if width is None else width
  counts = jnp.bincount(ids, length=num_groups).astype(jnp.int32)
  order = jnp.argsort(ids, stable=True)
  starts = jnp.cumsum(counts) - counts
  pos = jnp.arange(width)[None, :]
  flat = jnp.clip(starts[:, None] + pos, 0, max(n - 1, 0))
  table = jnp.where(pos < counts[:, None], order[flat], 0)
  return table.astype(jnp.int32), counts


def sample(key: jax.Array, table: jax.Array, counts: jax.Array, *, per_group: int,
           logits: Optional[jax.Array] = None) -> tuple[jax.Array, jax.Array]:
  """Draws up to `per_group` distinct members of every group (Gumbel top-k), on device:
  uniformly, or ∝ exp(logits) (G, width) when given (successive sampling without replacement).

  Returns (idx, mask), both (G, per_group): a group with fewer members than `per_group` gives all
  of them, the rest of its row masked out (mask False, index 0).
  """
  num, width = table.shape
  if per_group > width:
    raise ValueError(f"per_group={per_group} exceeds the table width {width}.")
  valid = jnp.arange(width)[None, :] < counts[:, None]
  gumbel = jax.random.gumbel(key, (num, width))
  if logits is not None:
    gumbel = gumbel + logits
  scores = jnp.where(valid, gumbel, -jnp.inf)
  _, pos = jax.lax.top_k(scores, per_group)
  mask = jnp.arange(per_group)[None, :] < counts[:, None]
  return jnp.where(mask, jnp.take_along_axis(table, pos, axis=1), 0), mask
