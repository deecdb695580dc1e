"""Logical axis names -> NamedShardings, and global batches assembled from per-process shards."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from imagen_video_jax.parallel.mesh import Rules

MeshAxes = str | tuple[str, ...] | None


def _divisible_axes(axes: MeshAxes, dim: int, mesh: Mesh) -> MeshAxes:
    """The longest prefix of ``axes`` whose total size divides ``dim`` (None if none does).

    A parameter like an RGB input kernel (3 input channels) cannot be split 2 ways; it stays
    replicated along that dimension instead of failing to compile.
    """
    if axes is None:
        return None
    names = (axes,) if isinstance(axes, str) else tuple(axes)
    while names and dim % math.prod(mesh.shape[a] for a in names):
        names = names[:-1]
    if not names:
        return None
    return names[0] if len(names) == 1 else names


def logical_spec(names: tuple, shape: tuple[int, ...], mesh: Mesh, rules: Rules) -> PartitionSpec:
    """PartitionSpec of an array with logical dimension ``names`` under ``rules`` on ``mesh``."""
    if len(names) != len(shape):
        raise ValueError(f"logical names {names} do not match an array of shape {shape}")
    mesh_axes = nn.logical_to_mesh_axes(names, rules)
    return PartitionSpec(*(_divisible_axes(a, d, mesh) for a, d in zip(mesh_axes, shape)))


def logical_shardings(tree: Any, mesh: Mesh, rules: Rules) -> Any:
    """NamedShardings for a tree holding flax logical-partitioning boxes (``nn.Partitioned``).

    Boxed leaves follow their logical names through ``rules``; plain leaves (step counters,
    RNG keys, optimizer counts) are replicated. The result has the structure of the unboxed tree.
    """

    def sharding(leaf: Any) -> NamedSharding:
        if isinstance(leaf, nn.Partitioned):
            spec = logical_spec(tuple(leaf.names), tuple(leaf.value.shape), mesh, rules)
            return NamedSharding(mesh, spec)
        return NamedSharding(mesh, PartitionSpec())

    return jax.tree_util.tree_map(sharding, tree, is_leaf=lambda x: isinstance(x, nn.Partitioned))


def unbox(tree: Any) -> Any:
    """The tree with every ``nn.Partitioned`` box replaced by its value (no constraints applied)."""
    return jax.tree_util.tree_map(
        lambda x: x.value if isinstance(x, nn.Partitioned) else x,
        tree,
        is_leaf=lambda x: isinstance(x, nn.Partitioned),
    )


def batch_axes(mesh: Mesh, rules: Rules) -> tuple[str, ...]:
    """Mesh axes the 'batch' logical axis is split over."""
    axes = nn.logical_to_mesh_axes(("batch",), rules)[0]
    if axes is None:
        return ()
    return (axes,) if isinstance(axes, str) else tuple(axes)


def batch_sharding(mesh: Mesh, rules: Rules) -> NamedSharding:
    """Sharding of a batch-leading array: dimension 0 over the batch mesh axes."""
    axes = batch_axes(mesh, rules)
    return NamedSharding(mesh, PartitionSpec(axes or None))


def batch_shards(mesh: Mesh, rules: Rules) -> int:
    """How many ways a global batch is split (its size must be a multiple of this)."""
    return math.prod(mesh.shape[a] for a in batch_axes(mesh, rules))


def check_global_batch(global_batch: int, mesh: Mesh, rules: Rules) -> None:
    """Raise a clear error when the global batch cannot be split over the mesh and processes."""
    shards = batch_shards(mesh, rules)
    if global_batch % shards:
        raise ValueError(
            f"global batch size {global_batch} must be a multiple of {shards}, the number of "
            f"batch shards of mesh {dict(mesh.shape)}; change data.batch_size or config.mesh"
        )
    if global_batch % jax.process_count():
        raise ValueError(
            f"global batch size {global_batch} must be a multiple of the process count "
            f"{jax.process_count()}"
        )


def make_global_batch(
    local_batch: Mapping[str, np.ndarray], mesh: Mesh, rules: Rules
) -> dict[str, jax.Array]:
    """One global array per field from this process's rows (every process passes its own rows)."""
    sharding = batch_sharding(mesh, rules)
    out = {}
    for key, value in local_batch.items():
        value = np.asarray(value)
        global_shape = (value.shape[0] * jax.process_count(), *value.shape[1:])
        out[key] = jax.make_array_from_process_local_data(sharding, value, global_shape)
    return out


@contextlib.contextmanager
def mesh_context(mesh: Mesh, rules: Rules) -> Iterator[None]:
    """Make ``mesh`` and ``rules`` current, so logical constraints inside models take effect."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield
