"""Device mesh, logical-axis rules, shardings of boxed trees, global batches, cluster detection."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from imagen_video_jax.parallel import (
    DEFAULT_RULES,
    axis_rules,
    batch_shards,
    check_global_batch,
    detect_cluster,
    initialize_distributed,
    logical_shardings,
    logical_spec,
    make_global_batch,
    make_mesh,
    mesh_shape,
)


def test_mesh_shape_fills_the_minus_one_axis():
    assert mesh_shape({"data": -1, "fsdp": 2, "tensor": 1}, 8) == {
        "data": 4,
        "fsdp": 2,
        "tensor": 1,
    }
    assert mesh_shape({"data": 1, "fsdp": -1, "tensor": 2}, 8) == {
        "data": 1,
        "fsdp": 4,
        "tensor": 2,
    }
    assert mesh_shape({"data": 2, "fsdp": 2, "tensor": 2}, 8) == {"data": 2, "fsdp": 2, "tensor": 2}


@pytest.mark.parametrize(
    "config, match",
    [
        ({"data": 4, "fsdp": 4, "tensor": 1}, "needs 16 devices but 8 are in use"),
        ({"data": -1, "fsdp": 3, "tensor": 1}, "8 is not a multiple of 3"),
        ({"data": -1, "fsdp": -1, "tensor": 1}, "at most one -1"),
        ({"data": 0, "fsdp": 1, "tensor": 1}, "positive integer"),
    ],
)
def test_mesh_that_does_not_fit_the_devices_is_a_clear_error(config, match):
    with pytest.raises(ValueError, match=match):
        mesh_shape(config, 8)


def test_make_mesh_over_all_or_some_devices():
    mesh = make_mesh({"data": -1, "fsdp": 2, "tensor": 2})
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert sorted(d.id for d in mesh.devices.flat) == list(range(8))
    small = make_mesh({"data": -1, "fsdp": 1, "tensor": 1}, jax.devices()[:2])
    assert dict(small.shape) == {"data": 2, "fsdp": 1, "tensor": 1}


def test_axis_rules_normalizes_lists_and_rejects_unknown_mesh_axes():
    assert axis_rules({}) == DEFAULT_RULES
    assert axis_rules({"rules": [["batch", ["data", "fsdp"]], ["mlp", None]]}) == (
        ("batch", ("data", "fsdp")),
        ("mlp", None),
    )
    with pytest.raises(ValueError, match="unknown mesh axes \\['model'\\]"):
        axis_rules({"rules": [("mlp", "model")]})


def test_logical_spec_follows_the_rules_and_drops_axes_that_do_not_divide():
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    rules = DEFAULT_RULES
    assert logical_spec(("embed", "mlp"), (16, 32), mesh, rules) == P("fsdp", "tensor")
    assert logical_spec(("embed", "heads", "kv"), (16, 4, 8), mesh, rules) == P(
        "fsdp", "tensor", None
    )
    # 3 input channels cannot be split 2 ways: replicated along that dimension.
    assert logical_spec(("embed", "mlp"), (3, 32), mesh, rules) == P(None, "tensor")
    # batch over (data, fsdp) = 4 ways; a batch of 2 keeps only the 'data' split.
    assert logical_spec(("batch", None), (8, 5), mesh, rules) == P(("data", "fsdp"), None)
    assert logical_spec(("batch", None), (2, 5), mesh, rules) == P("data", None)
    with pytest.raises(ValueError, match="do not match"):
        logical_spec(("embed",), (3, 4), mesh, rules)


def test_logical_shardings_of_a_boxed_flax_tree():
    class Layer(nn.Module):
        @nn.compact
        def __call__(self, x):
            kernel_init = nn.with_logical_partitioning(nn.initializers.ones, ("embed", "mlp"))
            bias_init = nn.with_logical_partitioning(nn.initializers.zeros, ("mlp",))
            x = nn.Dense(8, kernel_init=kernel_init, bias_init=bias_init)(x)
            return x + self.param("plain", nn.initializers.zeros, (8,))

    boxed = jax.eval_shape(Layer().init, jax.random.PRNGKey(0), jnp.zeros((1, 4)))
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    shardings = logical_shardings(boxed, mesh, DEFAULT_RULES)["params"]
    assert shardings["Dense_0"]["kernel"].spec == P("fsdp", "tensor")
    assert shardings["Dense_0"]["bias"].spec == P("tensor")
    assert shardings["plain"].spec == P()


def test_global_batch_is_split_over_the_batch_axes():
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    local = {"video": np.arange(8 * 3, dtype=np.float32).reshape(8, 3), "mask": np.ones((8,), bool)}
    batch = make_global_batch(local, mesh, DEFAULT_RULES)
    assert batch["video"].shape == (8, 3) and batch["mask"].dtype == bool
    assert batch["video"].sharding.spec == P(("data", "fsdp"))
    np.testing.assert_array_equal(np.asarray(batch["video"]), local["video"])
    # each device holds 2 rows; the two tensor replicas hold the same rows
    shard_rows = {
        s.device.id: tuple(np.asarray(s.data)[:, 0]) for s in batch["video"].addressable_shards
    }
    assert all(len(rows) == 2 for rows in shard_rows.values())
    assert len(set(shard_rows.values())) == 4
    assert batch_shards(mesh, DEFAULT_RULES) == 4
    with pytest.raises(ValueError, match="global batch size 6 must be a multiple of 4"):
        check_global_batch(6, mesh, DEFAULT_RULES)


def test_detect_cluster_from_the_environment():
    assert detect_cluster({}) is None
    assert detect_cluster({"JAX_COORDINATOR_ADDRESS": "h:1234"}) == "explicit"
    slurm = {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n[1-2]", "SLURM_PROCID": "0"}
    assert detect_cluster({**slurm, "SLURM_NTASKS": "4"}) == "slurm"
    assert detect_cluster({**slurm, "SLURM_NTASKS": "1"}) is None
    assert detect_cluster({"TPU_WORKER_HOSTNAMES": "t0,t1,t2,t3"}) == "tpu"
    assert detect_cluster({"TPU_WORKER_HOSTNAMES": "t0"}) is None


def test_initialize_distributed_single_process_and_errors():
    assert initialize_distributed("auto", env={}) is False
    assert initialize_distributed("off", env={"SLURM_NTASKS": "4"}) is False
    with pytest.raises(ValueError, match="needs --num-processes and --process-id"):
        initialize_distributed(coordinator_address="localhost:1234")
    with pytest.raises(ValueError, match="not one of"):
        initialize_distributed("maybe")


def test_the_video_unet_is_sharded_as_the_rules_say():
    """Every VideoUNet (mini base) parameter: embed -> fsdp, mlp/heads -> tensor, a dimension
    that does not divide stays whole; nearly all parameter bytes end up split 8 ways."""
    from imagen_video_jax.config import load_config
    from imagen_video_jax.models import abstract_params

    config = load_config("configs/imagen_video.py:stage=base,size=mini")
    boxed = abstract_params(config.model)
    mesh = make_mesh({"data": 1, "fsdp": 4, "tensor": 2})
    shardings = logical_shardings(boxed, mesh, DEFAULT_RULES)
    is_box = lambda x: isinstance(x, nn.Partitioned)
    boxes = jax.tree.leaves(boxed, is_leaf=is_box)
    assert all(is_box(b) for b in boxes)
    rule_axis = {"embed": "fsdp", "mlp": "tensor", "heads": "tensor"}
    split_bytes = total_bytes = 0
    for box, sharding in zip(boxes, jax.tree.leaves(shardings)):
        shape = box.value.shape
        expected = [
            rule_axis.get(name) if shape[i] % mesh.shape.get(rule_axis.get(name), 1) == 0 else None
            for i, name in enumerate(box.names)
        ]
        assert tuple(sharding.spec) == tuple(expected), (box.names, shape, sharding.spec)
        size = int(np.prod(shape))
        total_bytes += size
        split_bytes += size * (sharding.shard_shape(shape) != shape)
        if len([e for e in expected if e]) == 2:
            assert np.prod(sharding.shard_shape(shape)) * 8 == size
    assert split_bytes > 0.95 * total_bytes
