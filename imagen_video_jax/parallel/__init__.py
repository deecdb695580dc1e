"""Device mesh, logical-axis rules and multi-host start."""

from imagen_video_jax.parallel.distributed import detect_cluster, initialize_distributed
from imagen_video_jax.parallel.mesh import (
    DEFAULT_RULES,
    MESH_AXES,
    Rules,
    axis_rules,
    make_mesh,
    mesh_shape,
)
from imagen_video_jax.parallel.sharding import (
    batch_axes,
    batch_sharding,
    batch_shards,
    check_global_batch,
    logical_shardings,
    logical_spec,
    make_global_batch,
    mesh_context,
    unbox,
)

__all__ = [
    "DEFAULT_RULES",
    "MESH_AXES",
    "Rules",
    "axis_rules",
    "batch_axes",
    "batch_sharding",
    "batch_shards",
    "check_global_batch",
    "detect_cluster",
    "initialize_distributed",
    "logical_shardings",
    "logical_spec",
    "make_global_batch",
    "make_mesh",
    "mesh_context",
    "mesh_shape",
    "unbox",
]
