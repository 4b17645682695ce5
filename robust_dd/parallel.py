"""The device mesh and the shardings the loop uses: one device is a mesh of one.

robust_dd uses a one-axis mesh named `data` (`make_mesh`). On it

- the groups of a matching loss (classes, or clusters) are split over devices by `map_groups`: a
  `jax.shard_map` in which each device computes its groups' losses with the same local map
  (`vmap`, or `lax.map` in chunks) as on one device, the group axis padded to a multiple of the
  device count with copies of group 0 whose losses are dropped (their gradients are zero). The
  network parameters and synthetic images are replicated, so the image update is one all-reduced
  gradient (the transpose of the replicated inputs);
- row-parallel arrays (KIP's real target batch, and so the rows of its kernel blocks) are
  constrained to `rows(mesh)`, and XLA partitions the computation around them;
- a step's state ends replicated (`constrain_replicated`), so every call has the same shardings;
- evaluation splits its vmapped networks (`training.train_network`) and its kernel matrices' row
  blocks (`kernels.kernel_matrix`) over the devices; selection (`select.select_indices`) and
  per-class k-means (`cluster.kmeans_per_class`) split their classes (`call_split`).

On a mesh of one device every function here is the identity of the one-device code path.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXIS = "data"


def parse_mesh(spec: Optional[str]) -> Optional[int]:
  """The number of devices of a `--mesh` value: None or '' (all local devices), 'N' or 'data:N'.

  Raises ValueError, with the accepted forms, for anything else or N < 1.
  """
  if spec is None or str(spec).strip() in ("", "auto"):
    return None
  text = str(spec).strip()
  name, _, size = text.rpartition(":")
  if name not in ("", AXIS) or not size.isdigit() or int(size) < 1:
    raise ValueError(f"--mesh={spec!r}: expected N or {AXIS}:N with N >= 1 devices (or empty "
                     "for all local devices).")
  return int(size)


def make_mesh(num_devices: Optional[int] = None, *,
              devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """A one-axis mesh (`data`) of the first `num_devices` of `devices` (default: all local
  devices). Raises ValueError when fewer devices exist."""
  devices = list(jax.local_devices() if devices is None else devices)
  n = len(devices) if num_devices is None else num_devices
  if not 1 <= n <= len(devices):
    raise ValueError(f"A mesh of {n} devices was asked for; this process has {len(devices)} "
                     f"({devices[0].platform}). Use --mesh=N with N <= {len(devices)}.")
  return jax.make_mesh((n,), (AXIS,), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=devices[:n])


def size(mesh: Optional[Mesh]) -> int:
  """Devices on the data axis (1 without a mesh)."""
  return 1 if mesh is None else mesh.shape[AXIS]


def describe(mesh: Optional[Mesh]) -> dict[str, Any]:
  """What `config.json` and `metrics.json` record of a mesh: axes, device kind and platform."""
  devices = [jax.local_devices()[0]] if mesh is None else list(mesh.devices.flat)
  return {"axes": {AXIS: len(devices)}, "device_kind": devices[0].device_kind,
          "platform": devices[0].platform}


def replicated(mesh: Mesh) -> NamedSharding:
  """Every device holds the whole array."""
  return NamedSharding(mesh, P())


def rows(mesh: Mesh) -> NamedSharding:
  """The leading axis split over the data axis."""
  return NamedSharding(mesh, P(AXIS))


def replicate(tree, mesh: Optional[Mesh]):
  """`tree` placed on every device of `mesh` (unchanged on one device)."""
  return tree if size(mesh) == 1 else jax.device_put(tree, replicated(mesh))


def constrain_replicated(tree, mesh: Optional[Mesh]):
  """Inside a jit: every leaf of `tree` whole on every device (no-op on one device). A step's
  state ends so, or XLA may leave it split (e.g. 10 classes' images over 2 devices) and the
  next call's inputs would differ from the compiled ones."""
  if size(mesh) == 1:
    return tree
  return jax.tree_util.tree_map(lambda a: jax.lax.with_sharding_constraint(a, replicated(mesh)),
                                tree)


def constrain_rows(x: jax.Array, mesh: Optional[Mesh]) -> jax.Array:
  """Inside a jit: ask XLA to split `x`'s leading axis over the devices (no-op on one device)."""
  if size(mesh) == 1:
    return x
  return jax.lax.with_sharding_constraint(x, rows(mesh))


def pad_groups(args, multiple: int):
  """`args` (a pytree of arrays with a common leading group axis) padded to a multiple of
  `multiple` groups with copies of group 0."""
  num = jax.tree_util.tree_leaves(args)[0].shape[0]
  pad = -num % multiple
  if not pad:
    return args
  return jax.tree_util.tree_map(
      lambda a: jnp.concatenate([a, jnp.repeat(a[:1], pad, axis=0)]), args)


def call_split(fn: Callable[..., Any], args: tuple, mesh: Optional[Mesh], *,
               shared: tuple = ()):
  """`fn(*args, *shared)` for a jitted `fn` that maps over the leading (group) axis of `args`
  (e.g. `jit(vmap(f))` over classes), with the groups split over the devices of `mesh`: `args`
  padded to a multiple of the device count (copies of group 0, dropped from the output) and
  placed with `rows(mesh)`, `shared` replicated; XLA partitions the vmap. One device: `fn` as is.
  """
  d = size(mesh)
  if d == 1:
    return fn(*args, *shared)
  num = jax.tree_util.tree_leaves(args)[0].shape[0]
  placed = jax.device_put(pad_groups(tuple(args), d), rows(mesh))
  out = fn(*placed, *replicate(tuple(shared), mesh))
  return jax.tree_util.tree_map(lambda o: o[:num], out)


def map_groups(fn: Callable[..., jax.Array], args: tuple, mesh: Optional[Mesh], *,
               batch: Optional[int] = None) -> jax.Array:
  """`fn(*group_args)` for every group along the leading axis of `args`, the groups split over
  the devices of `mesh`.

  Each device maps `fn` over its own groups: one `vmap`, or `lax.map` over `batch` groups at a
  time (bounding memory) when `batch` is smaller than its share (one group, or batch 1: a loop
  calling `fn` on one group, not vmapped). Values `fn` closes over are
  replicated. On a mesh of d > 1 devices the group axis is padded to a multiple of d (copies of
  group 0, dropped from the output; `jax.shard_map`); the result is the same as on one device,
  to float tolerance.
  """

  def local(a):
    n = a[0].shape[0]
    if n == 1 or (batch and batch < n):
      # One group at a time: a plain loop, with no vmap of size 1 around `fn` (`lax.map`'s
      # batch_size=1 would add one, and XLA:CPU runs some batched forms of `fn` slower:
      # robust DC's ghost norms at K = 1000 clusters).
      return jax.lax.map(lambda b: fn(*b), a, batch_size=batch if batch and batch > 1 else None)
    return jax.vmap(fn)(*a)

  args = tuple(args)
  d = size(mesh)
  if d == 1:
    return local(args)
  num = jax.tree_util.tree_leaves(args)[0].shape[0]
  padded = pad_groups(args, d)
  out = jax.shard_map(lambda *a: local(a), mesh=mesh, in_specs=P(AXIS), out_specs=P(AXIS),
                      check_vma=False)(*padded)
  return jax.tree_util.tree_map(lambda o: o[:num], out)


def map_batches(fn: Callable[[jax.Array], jax.Array], x: jax.Array, *, batch_size: int = 500
                ) -> jax.Array:
  """`fn` applied to `batch_size` rows of x at a time (the last block zero-padded), results
  concatenated to (n, ...): one compiled block, bounded memory; jittable (`lax.map`)."""
  n = x.shape[0]
  batch_size = min(batch_size, n)
  pad = -n % batch_size
  xp = jnp.concatenate([x, jnp.zeros((pad, *x.shape[1:]), x.dtype)])
  out = jax.lax.map(fn, xp.reshape(-1, batch_size, *x.shape[1:]))
  return out.reshape(-1, *out.shape[2:])[:n]
