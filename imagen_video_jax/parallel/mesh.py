"""The device mesh ('data', 'fsdp', 'tensor') and the logical-axis rules, built from config.mesh."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import jax
from jax.sharding import Mesh

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis name -> mesh axes (None: replicated). Earlier rules take precedence, and a mesh
# axis is used at most once per array (flax's logical-axis semantics).
DEFAULT_RULES = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("text_embed", None),
    ("frames", None),
    ("height", None),
    ("width", None),
    ("channels", None),
    ("length", None),
)

Rules = tuple[tuple[str, str | tuple[str, ...] | None], ...]


def mesh_shape(mesh_config: Mapping, num_devices: int) -> dict[str, int]:
    """Axis sizes for ``num_devices`` devices: one axis may be -1 and takes what is left."""
    sizes = {axis: int(mesh_config.get(axis, 1)) for axis in MESH_AXES}
    described = " x ".join(f"{a}={s}" for a, s in sizes.items())
    fill = [axis for axis, size in sizes.items() if size == -1]
    if len(fill) > 1 or any(size == 0 or size < -1 for size in sizes.values()):
        raise ValueError(
            f"mesh {described}: each axis size must be a positive integer, and at most one -1"
        )
    fixed = math.prod(size for size in sizes.values() if size != -1)
    if fill:
        if num_devices % fixed:
            raise ValueError(
                f"mesh {described} does not fit {num_devices} devices: "
                f"{num_devices} is not a multiple of {fixed}"
            )
        sizes[fill[0]] = num_devices // fixed
    elif fixed != num_devices:
        raise ValueError(
            f"mesh {described} needs {fixed} devices but {num_devices} are in use; "
            "set config.mesh sizes whose product is the device count, or one axis to -1"
        )
    return sizes


def make_mesh(mesh_config: Mapping, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh over ``devices`` (default: every device of every process)."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = mesh_shape(mesh_config, len(devices))
    shape = tuple(sizes[axis] for axis in MESH_AXES)
    axis_types = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
    return jax.make_mesh(shape, MESH_AXES, axis_types=axis_types, devices=devices)


def axis_rules(mesh_config: Mapping) -> Rules:
    """The config's logical-axis rules as tuples (config.mesh.rules; DEFAULT_RULES if absent)."""
    rules = mesh_config.get("rules", None) or DEFAULT_RULES
    normalized = []
    for rule in rules:
        if len(rule) != 2 or not isinstance(rule[0], str):
            raise ValueError(f"mesh rule {rule!r} must be (logical_name, mesh_axes)")
        name, axes = rule
        if isinstance(axes, (list, tuple)):
            axes = tuple(axes)
            unknown = [a for a in axes if a not in MESH_AXES]
        else:
            unknown = [axes] if axes is not None and axes not in MESH_AXES else []
        if unknown:
            raise ValueError(
                f"mesh rule for {name!r} names unknown mesh axes {unknown}; expected {MESH_AXES}"
            )
        normalized.append((name, axes))
    return tuple(normalized)
