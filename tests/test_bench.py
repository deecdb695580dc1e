"""The benchmarks on CPU with one-level U-Nets: the records' fields and their arithmetic (floor,
speedup, scaling ratio), the meshes' shardings, compile-once sampling, and paper-memory's
parameter count, per-device memory and estimate."""

from __future__ import annotations

import argparse
import importlib
import math
import re
import subprocess

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imagen_video_jax.bench import (
    BENCHMARKS,
    base_train,
    measure,
    paper_memory,
    profile,
    sample,
    scale,
    temporal_attention,
)
from imagen_video_jax.config import load_config
from imagen_video_jax.models import abstract_params
from imagen_video_jax.parallel import make_mesh

GIB = 2**30
PEAK_TFLOPS = 2.0  # a given peak: measuring one on the CPU would take minutes
# One level, no attention: the smallest U-Net that still runs every kind of layer a stage needs.
ONE_LEVEL = [
    "model.channel_mult=(1,)",
    "model.num_res_blocks=(1,)",
    "model.spatial_attention=(False,)",
    "model.cross_attention=(False,)",
    "model.temporal_mixing=('conv',)",
]


def by_bench(records, name):
    return [r for r in records if r["bench"] == name]


# ----------------------------------------------------------------------------- measure / floor


def test_matmul_peak_times_a_chain_of_products_with_one_wait(monkeypatch):
    """The peak's timed unit is ``chain`` products waited for once; its time is shared out."""
    waits = []

    def one_second(step, **kwargs):
        waits.append(step())
        return 1.0

    monkeypatch.setattr(measure, "median_step_seconds", one_second)
    peak = measure.matmul_peak_tflops(n=8, dtype=jnp.float32, chain=4)
    assert peak == pytest.approx(4 * 2 * 8**3 / 1e12)
    assert len(waits) == 1 and waits[0].shape == (8, 8)


def test_pipelined_timing_dispatches_each_step_before_waiting_for_the_previous(monkeypatch):
    """Steps end 2 s apart: the median is that interval, and every wait comes after the next
    step was dispatched (warm-up steps waited for one at a time)."""
    events, clock = [], [0.0]
    dispatched = iter(range(100))

    def step():
        index = next(dispatched)
        events.append(("dispatch", index))
        return index

    def wait(index):
        events.append(("wait", index))
        clock[0] = 2.0 * index
        return index

    monkeypatch.setattr(measure, "block", wait)
    monkeypatch.setattr(measure.time, "perf_counter", lambda: clock[0])
    assert measure.median_pipelined_step_seconds(step, warmup=2, iters=5) == 2.0
    assert events[:4] == [("dispatch", 0), ("wait", 0), ("dispatch", 1), ("wait", 1)]
    timed = events[4:]
    for i, event in enumerate(timed):
        if event[0] == "wait":
            assert ("dispatch", event[1] + 1) in timed[:i] or event[1] == 8
    assert [e for e in timed if e[0] == "wait"] == [("wait", i) for i in range(2, 9)]


def test_floor_of_a_matmul_is_its_hand_counted_flops_over_the_peak():
    m, k, n = 16, 32, 8
    a = jax.ShapeDtypeStruct((m, k), jnp.float32)
    b = jax.ShapeDtypeStruct((k, n), jnp.float32)
    flops = measure.cpu_compiled_flops(lambda x, y: x @ y, a, b)
    assert flops == 2 * m * k * n
    # bytes: both float32 operands read and the product written once
    cost = measure.cpu_cost_analysis(lambda x, y: x @ y, a, b)
    assert cost == {"flops": flops, "bytes": 4 * (m * k + k * n + m * n)}
    # batch 3, two guidance branches, 5 DDIM steps (5 model evaluations), at 2 TFLOP/s
    evaluations = sample.model_evaluations("ddim", 5)
    assert evaluations == 5
    floor = sample.stage_floor_seconds(flops, 3, 2, evaluations, PEAK_TFLOPS)
    assert floor == pytest.approx(2 * m * k * n * 3 * 2 * 5 / 2e12, rel=1e-12)


def test_model_evaluations_of_each_sampler():
    assert sample.model_evaluations("stochastic", 8) == 8
    assert sample.model_evaluations("ancestral", 4) == 4
    assert sample.model_evaluations("pc", 5) == 2 * 4 + 1  # one Langevin correction a step
    with pytest.raises(ValueError, match="sampler must be one of"):
        sample.model_evaluations("euler", 4)


def test_bytes_per_device_counts_shards():
    mesh = jax.make_mesh((8,), ("x",), axis_types=(jax.sharding.AxisType.Auto,))
    split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("x"))
    whole = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    tree = {
        "split": jax.ShapeDtypeStruct((16, 3), jnp.float32, sharding=split),
        "whole": jax.ShapeDtypeStruct((5,), jnp.bfloat16, sharding=whole),
    }
    assert measure.bytes_per_device(tree) == 2 * 3 * 4 + 5 * 2


# ----------------------------------------------------------------------------- bench-sample


@pytest.fixture(scope="module")
def sample_records():
    return sample.run(
        size="tiny",
        batches=(2,),
        stop_after="base",
        overrides=[*ONE_LEVEL, "sample.num_steps=3"],
        peak_tflops=PEAK_TFLOPS,
    )


def test_sample_records_per_stage_and_end_to_end(sample_records):
    stages = {r["variant"]: r for r in by_bench(sample_records, "sample_stage")}
    assert set(stages) == {"undistilled", "distilled"}
    slow, fast = stages["undistilled"], stages["distilled"]
    assert (slow["sampler"], slow["num_steps"], slow["guidance"]) == ("ddim", 3, "cfg")
    assert (fast["sampler"], fast["num_steps"], fast["guidance"]) == ("stochastic", 8, "input")
    assert slow["model_calls_per_step"] == 2 and fast["model_calls_per_step"] == 1
    # The distilled student's call is the same U-Net plus a w embedding.
    assert fast["call_gflop"] == pytest.approx(slow["call_gflop"], rel=0.02)
    for record in (slow, fast):
        assert record["stage"] == "base" and record["shape"] == "2x8x8" and record["batch"] == 2
        floor_s = record["call_gflop"] * 1e9 * 2 * record["model_calls_per_step"] / 2e12
        assert record["floor_ms"] == pytest.approx(floor_s * 1e3, rel=1e-9)
        expected_ratio = record["stage_s"] / (floor_s * record["num_steps"])
        assert record["floor_ratio"] == pytest.approx(expected_ratio, rel=1e-9)
        assert record["step_ms"] == pytest.approx(record["stage_s"] / record["num_steps"] * 1e3)
    totals = {r["variant"]: r for r in by_bench(sample_records, "sample")}
    for name, record in totals.items():
        assert record["trace_counts"] == {"base": 1}  # compiled once, in the first pass
        assert record["total_s"] == stages[name]["stage_s"] > 0
    (speedup,) = by_bench(sample_records, "sample_speedup")
    ratio = totals["undistilled"]["total_s"] / totals["distilled"]["total_s"]
    assert speedup["speedup"] == pytest.approx(ratio) and speedup["target"] == 17.7


def test_sample_records_a_batch_that_runs_out_of_memory_and_goes_on(monkeypatch):
    def bench_variant(name, cascade, batch, *args):
        if batch == 8 and name == "undistilled":
            raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 56.89GiB\ndetails")
        total = {"undistilled": 2.0, "distilled": 0.1}[name] * batch
        return [{"bench": "sample", "variant": name, "batch": batch, "total_s": total}]

    monkeypatch.setattr(sample, "bench_variant", bench_variant)
    records = sample.run(
        size="tiny", batches=(1, 8), stop_after="base", overrides=ONE_LEVEL, peak_tflops=1.0
    )
    (failed,) = [r for r in records if r.get("fits") is False]
    assert (failed["variant"], failed["batch"]) == ("undistilled", 8)
    assert failed["error"] == "RESOURCE_EXHAUSTED: Out of memory allocating 56.89GiB"
    assert [(r["variant"], r["batch"]) for r in by_bench(records, "sample")] == [
        ("undistilled", 1),
        ("distilled", 1),
        ("undistilled", 8),
        ("distilled", 8),
    ]
    (speedup,) = by_bench(records, "sample_speedup")  # only batch 1 has both variants
    assert speedup["batch"] == 1 and speedup["speedup"] == pytest.approx(20.0)


def test_sample_lets_other_errors_through(monkeypatch):
    def bench_variant(*args):
        raise ValueError("a bug, not memory")

    monkeypatch.setattr(sample, "bench_variant", bench_variant)
    with pytest.raises(ValueError, match="a bug"):
        sample.run(
            size="tiny", batches=(1,), stop_after="base", overrides=ONE_LEVEL, peak_tflops=1.0
        )


def test_sample_refuses_a_recompile():
    cascade = type("FakeCascade", (), {"trace_counts": {"base": 2}})()
    with pytest.raises(RuntimeError, match="compiled again"):
        sample._check_no_recompile(cascade, {"base": 1}, [])
    with pytest.raises(RuntimeError, match=r"jit\(loop\)"):
        sample._check_no_recompile(type(cascade)(), {"base": 2}, ["jit(loop)"])


# ----------------------------------------------------------------------------- bench-scale


def _tiny_train_config():
    return load_config("configs/imagen_video.py:stage=base,size=tiny", ONE_LEVEL)


@pytest.fixture(scope="module")
def scale_records():
    # Two train steps compile here (1 device, then FSDP over 8): the slowest part of this file.
    return scale.run(_tiny_train_config(), batch_per_device=1, modes=("fsdp",), warmup=1, iters=1)


def _fsdp_bytes_by_the_rules(model_config, ways):
    """Parameter bytes a device holds when 'embed' dims split ``ways`` ways (if divisible)."""
    boxed = abstract_params(model_config)
    total = 0
    for leaf in jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned)):
        shape = list(leaf.value.shape)
        for i, name in enumerate(leaf.names):
            if name == "embed" and shape[i] % ways == 0:
                shape[i] //= ways
        total += math.prod(shape) * leaf.value.dtype.itemsize
    return total


@pytest.mark.slow
def test_scale_records_and_fsdp_sharding(scale_records):
    single, fsdp = scale_records
    n = jax.device_count()
    assert (single["mode"], single["devices"], single["batch"]) == ("single", 1, 1)
    assert single["param_bytes_per_device"] == single["param_bytes"]
    assert (fsdp["mode"], fsdp["devices"], fsdp["batch"]) == ("fsdp", n, n)
    assert fsdp["mesh"] == {"data": 1, "fsdp": n, "tensor": 1}
    for record in scale_records:
        assert record["batch_per_device"] == 1  # the batch is split over every device
        assert record["ratio"] == pytest.approx(record["clips_per_s"] / single["clips_per_s"])
        assert record["efficiency"] == pytest.approx(record["ratio"] / record["devices"])
    expected = _fsdp_bytes_by_the_rules(_tiny_train_config().model, n)
    assert fsdp["param_bytes_per_device"] == expected < fsdp["param_bytes"]


def test_data_parallel_mesh_replicates_params_and_splits_the_batch():
    n = jax.device_count()
    config = scale.scale_config(_tiny_train_config(), 2, n, "data")
    train_step = measure.TrainStep.build(config, make_mesh(config.mesh))
    assert dict(train_step.mesh.shape) == {"data": n, "fsdp": 1, "tensor": 1}
    for leaf in jax.tree.leaves(train_step.abstract):
        assert leaf.sharding.is_fully_replicated
    batch = measure.abstract_batch(
        measure.synthetic_train_batch(config, config.data.batch_size), train_step.batch_sharding
    )
    for leaf in batch.values():
        assert leaf.sharding.shard_shape(leaf.shape) == (2, *leaf.shape[1:])


def test_scale_config_sets_the_mesh_and_batch():
    config = scale.scale_config(_tiny_train_config(), 3, 4, "fsdp")
    assert config.data.batch_size == 12
    assert (config.mesh.data, config.mesh.fsdp, config.mesh.tensor) == (1, 4, 1)
    with pytest.raises(ValueError, match="mode must be one of"):
        scale.scale_config(_tiny_train_config(), 3, 4, "tensor")


# ----------------------------------------------------------------------------- base-train --compare


@pytest.mark.parametrize(
    "op_name, part",
    [
        ("up_0_0/checkpoint/res/conv_in/conv_general_dilated", "residual blocks' 3x3"),
        ("up_0_0/checkpoint/ResBlock/conv_in/conv_general_dilated", "residual blocks' 3x3"),
        ("down_0_1/ResBlock/norm_out/reduce_sum", "residual blocks' norms"),
        ("down_0_1/ResBlock/film/dot_general", "rest of the residual blocks"),
        ("checkpoint/TemporalAttention/temporal_attention_backward/pallas_call", "temporal"),
        ("down_2_1/CrossAttention/dot_product_attention_bwd", "spatial and cross"),
        ("up_1_resample/conv/conv_general_dilated", "upsampling"),
    ],
)
def test_a_block_module_named_by_attribute_or_class_falls_in_its_part(op_name, part):
    """Op names of a rematerialised block's modules, in both forms seen in GPU profiles."""
    path = f"jit(step)/transpose(jvp(VideoUNet))/{op_name}"
    matched = next(name for name, pattern in base_train.UNET_PARTS if re.search(pattern, path))
    assert matched.startswith(part)


def test_every_part_of_the_profile_names_ops_of_the_bench_step():
    """Each of UNET_PARTS' expressions matches a JAX op of a compiled step with the bench's
    remat and blocks (two levels: upsampling, spatial and temporal attention), as named in
    the optimised HLO that a profile joins its kernels to."""
    config = load_config("configs/imagen_video.py:stage=base,size=tiny")
    assert config.model.channel_mult == (1, 2) and config.model.spatial_attention == (False, True)
    config.model.remat = "dots_attention"
    sources = profile.hlo_op_sources(base_train.TrainBench(config).compiled.as_text())
    unmatched = [
        name
        for name, pattern in base_train.UNET_PARTS
        if not any(re.search(pattern, op) for op in sources.values())
    ]
    assert unmatched == []


def test_compare_times_each_variant_and_remat_leaves_the_first_loss_alone():
    """Variants built in turn in one process; the whole-block remat recomputes the same
    maths, so the first step's loss is the same as without it."""
    variants = []
    for remat in ("none", "block"):
        config = _tiny_train_config()
        config.model.remat = remat
        variants.append((remat, config))
    records = base_train.compare(variants, warmup=1, iters=2)
    assert [r["variant"] for r in records] == ["none", "block"]
    none, block = records
    assert block["first_loss"] == pytest.approx(none["first_loss"], rel=1e-5)
    for record in records:
        assert record["clips_per_s"] == pytest.approx(record["batch"] / record["step_ms"] * 1e3)
        assert record["compiled_gib"] > 0


def test_compare_variants_are_checked_as_they_are_parsed():
    assert base_train.parse_variants("dots_spatial:pallas_cudnn, dots:xla,") == [
        ("dots_spatial", "pallas_cudnn"),
        ("dots", "xla"),
    ]
    with pytest.raises(ValueError, match="'dots:triton': expected REMAT:ATTENTION"):
        base_train.parse_variants("dots:triton")
    parser = argparse.ArgumentParser()
    base_train.add_arguments(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["--compare", "spatial"])


# ----------------------------------------------------------------------------- bench-paper-memory


def test_paper_param_count_is_within_ten_percent_of_the_paper():
    fields = paper_memory.param_fields(paper_memory.stage_config("ssr3"))
    assert fields["paper_params"] == 340e6
    assert abs(fields["params_ratio"] - 1) <= 0.10
    assert fields["params_ratio"] == fields["params"] / 340e6


@pytest.fixture(scope="module")
def dry_run():
    return paper_memory.dry_run_record(
        "ssr3", size="tiny", num_devices=2, crop=(64, 64), remat="none", overrides=ONE_LEVEL
    )


def test_dry_run_compiles_the_step_per_device(dry_run):
    assert dry_run["resolution"] == "16x256x256" and dry_run["trained_on"] == "16x64x64"
    assert dry_run["cropped"] and dry_run["remat"] == "none" and dry_run["devices"] == 2
    # One example a device: a 16x64x64 uint8 clip, its 16x16x16 low-res input, 32 text tokens
    # of width 384 (float32) and their mask.
    batch_bytes = 16 * 64 * 64 * 3 + 16 * 16 * 16 * 3 + 32 * 384 * 4 + 32
    assert dry_run["batch_bytes_per_device"] == batch_bytes
    # XLA's per-device arguments are the sharded train state and the device's batch rows.
    expected = dry_run["state_bytes_per_device"] + batch_bytes
    assert dry_run["compiled_argument_bytes"] == expected
    assert dry_run["step_tflop"] > 0 and dry_run["compiled_gib"] > 0


def test_dry_run_estimate_adds_up(dry_run):
    parts = ("state_gib_per_device", "grads_gib_per_device", "activations_gib")
    assert dry_run["estimate_gib"] == pytest.approx(sum(dry_run[k] for k in parts))
    assert dry_run["state_gib_per_device"] * GIB == dry_run["state_bytes_per_device"]
    # Fully convolutional: activations scale with the pixels of a frame (256^2 / 64^2 = 16).
    full = dry_run["full_resolution_activations_gib"]
    assert full == pytest.approx(16 * dry_run["activations_gib"]) and full > 0
    assert dry_run["needs"].startswith("1 device(s) of 131.3 GiB with FSDP and remat=none")


def test_a_step_that_does_not_fit_records_the_error_and_an_estimate(monkeypatch):
    def out_of_memory(*args, **kwargs):
        raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 9.9GiB\ndetails")

    monkeypatch.setattr(paper_memory, "TrainBench", out_of_memory)
    record = paper_memory.step_record("tsr1", size="tiny", overrides=ONE_LEVEL)
    assert record["fits"] is False and record["stage"] == "tsr1"
    assert record["error"] == "RESOURCE_EXHAUSTED: Out of memory allocating 9.9GiB"
    assert record["devices"] == jax.device_count() and record["activations_gib"] > 0
    assert record["needs"].startswith("1 device(s)")


def test_a_step_out_of_memory_records_what_it_asked_for(monkeypatch):
    """XLA's message names the allocation that failed; beside what the device held, that is
    what the step needs (tsr3 on one H200: 96.54 + 30.88 GiB, inside the limit but one block
    too large for the allocator)."""
    message = (
        "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 96.54GiB with allocator "
        "GPU_0_bfc on device 0. [executable_name='jit_step']"
    )

    def out_of_memory(*args, **kwargs):
        raise RuntimeError(message)

    monkeypatch.setattr(paper_memory, "TrainBench", out_of_memory)
    monkeypatch.setattr(measure, "max_in_use_gib", lambda: 30.88)
    monkeypatch.setattr(paper_memory, "device_bytes", lambda device: 135.6 * GIB)
    record = paper_memory.step_record("tsr3", size="tiny", overrides=ONE_LEVEL)
    assert record["failed_allocation_gib"] == pytest.approx(96.54)
    assert record["held_gib"] == pytest.approx(30.88)
    assert record["needs"].startswith("127.4 GiB a device, measured: the step asked for 96.54")
    assert "within it" in record["needs"] and "smaller crops" in record["needs"]
    # Over the limit, and a stage with attention: no allocator remark, split the frames.
    line = paper_memory.measured_needs(40 * GIB, 10 * GIB, 40 * GIB, False)
    assert line.endswith("limit of 40.0 GiB; to fit: split frames over devices")


def test_failed_allocation_sizes_are_read_in_their_units():
    read = paper_memory.failed_allocation_bytes
    assert read("Out of memory while trying to allocate 512.00MiB.") == 512 * 2**20
    assert read("while trying to allocate 1048576 bytes") == 2**20
    assert read("Out of memory allocating 9.9GiB") is None


def test_a_stage_out_of_time_is_recorded_with_its_last_phase(monkeypatch, capsys):
    """The stage's process is stopped at its timeout; its record names the last progress line
    it printed (here: still in its first step), and the budget skips the stages after it."""
    stderr = (
        "[paper-memory] base: 5.44 B parameters: initialising the state\n"
        "W1122 cuda_timer.cc:88] Delay kernel timed out\n"
        "[paper-memory] base: state ready at 41 s: first step\n"
    )
    clock = iter([0.0, 0.0, 400.0])
    monkeypatch.setattr(paper_memory.time, "monotonic", lambda: next(clock))

    def stopped(command, timeout, **kwargs):
        assert command[-3:] == ["--stages", "base", "--in-process"] and timeout == 300
        raise subprocess.TimeoutExpired(command, timeout, output=b"", stderr=stderr.encode())

    monkeypatch.setattr(paper_memory.subprocess, "run", stopped)
    base, tsr1 = paper_memory.run_isolated(["base", "tsr1"], [], 300, budget_s=350)
    assert base == {
        "bench": "paper_memory",
        "stage": "base",
        "fits": False,
        "error": "timed out after 300 s (last: base: state ready at 41 s: first step)",
    }
    assert tsr1["error"] == "skipped: the 350 s budget was spent"
    assert "Delay kernel" in capsys.readouterr().err  # the stage's stderr is passed on


def test_what_fits_arithmetic():
    line = paper_memory.what_fits(100 * GIB, 10 * GIB, 40 * GIB, 2, "block")
    assert line.startswith("4 device(s) of 40.0 GiB") and "more than the 2 here" in line
    line = paper_memory.what_fits(100 * GIB, 50 * GIB, 40 * GIB, 2, "block")
    assert "exceed a device's 40.0 GiB" in line and "crops" in line


def test_stage_config_checks_the_crop():
    with pytest.raises(ValueError, match="multiple of its spatial factor 4"):
        paper_memory.stage_config("ssr3", size="tiny", crop=(62, 64))
    with pytest.raises(ValueError, match="HEIGHTxWIDTH"):
        paper_memory.parse_crop("192 by 320")
    # A stage that is not fully convolutional keeps its full frame.
    config = paper_memory.stage_config("base", size="tiny", crop=(4, 4))
    assert measure.example_shape(config) == (2, 8, 8)


# ----------------------------------------------------------------------------- temporal attention


def test_temporal_attention_levels_are_those_of_the_bench_unet():
    """Width 128 x (1, 2, 4, 8), head_dim 64, 64x64 frames halved a level; 2 blocks down and 2
    up a level, and the middle block at the lowest level."""
    levels = temporal_attention.bench_levels()
    assert [lvl.shape for lvl in levels] == [
        (8, 16, 64, 64, 128),
        (8, 16, 32, 32, 256),
        (8, 16, 16, 16, 512),
        (8, 16, 8, 8, 1024),
    ]
    assert [lvl.heads for lvl in levels] == [2, 4, 8, 16]
    assert [lvl.blocks for lvl in levels] == [4, 4, 4, 5]
    # 11 bfloat16 activations of 8 x 16 x 64 x 64 x 128 values.
    assert levels[0].bytes_moved() == 11 * 2 * 8 * 16 * 64 * 64 * 128


@pytest.mark.parametrize("implementation", ["xla", "pallas/2"])
def test_temporal_attention_step_is_the_gradient_of_the_einsums(implementation):
    """The timed call returns the value and gradient of sum(attention * g), as autodiff of an
    independent float32 reference gives them (the Pallas kernels interpreted on the CPU)."""
    level = temporal_attention.Level(0, batch=1, frames=3, side=2, channels=8, heads=2, blocks=1)
    (value, (grad_qkv, grad_bias)) = temporal_attention.attention_step(implementation, level)()
    assert grad_qkv.shape == (1, 3, 4, 3, 2, 4) and grad_bias.shape == (2, 3, 3)
    keys = jax.random.split(jax.random.key(0), 3)
    qkv = jax.random.normal(keys[0], grad_qkv.shape, jnp.bfloat16).astype(jnp.float32)
    bias = jax.random.normal(keys[1], (2, 3, 3), jnp.float32)
    g = jax.random.normal(keys[2], (1, 3, 4, 2, 4), jnp.bfloat16).astype(jnp.float32)

    def reference(qkv, bias):
        q, k, v = (qkv[:, :, :, i] for i in range(3))
        logits = jnp.einsum("btpnd,bspnd->bpnts", q, k) / 2.0 + bias
        out = jnp.einsum("bpnts,bspnd->btpnd", jax.nn.softmax(logits, -1), v)
        return jnp.sum(out * g)

    ref_value, (ref_qkv, ref_bias) = jax.value_and_grad(reference, argnums=(0, 1))(qkv, bias)
    np.testing.assert_allclose(value, ref_value, rtol=0.05, atol=0.05)
    np.testing.assert_allclose(grad_bias, ref_bias, rtol=0.05, atol=0.05)
    np.testing.assert_allclose(grad_qkv.astype(jnp.float32), ref_qkv, rtol=0.05, atol=0.05)


def test_temporal_attention_implementations_are_named_with_their_pixel_block(monkeypatch):
    calls = []

    def attend_frames(qkv, bias, mask, implementation, **options):
        calls.append((implementation, options))

    monkeypatch.setattr(temporal_attention, "attend_frames", attend_frames)
    for name in ("pallas/16", "pallas", "xla"):
        temporal_attention.attention_fn(name)(None, None)
    assert calls == [("pallas", {"block_pixels": 16}), ("pallas", {}), ("xla", {})]
    for bad in ("pallas/x", "xla/4", "triton", "pallas_cudnn"):  # its temporal kernel is pallas
        with pytest.raises(ValueError, match="choose from"):
            temporal_attention.attention_fn(bad)


def test_temporal_attention_records_time_traffic_and_a_failed_kernel():
    level = temporal_attention.Level(0, batch=1, frames=2, side=2, channels=4, heads=1, blocks=3)
    done = temporal_attention.measure_level("xla", level, iters=2)
    assert done["ms_per_step"] == pytest.approx(3 * done["ms"])
    assert done["gb_per_s"] == pytest.approx(level.bytes_moved() / (done["ms"] / 1e3) / 1e9)
    failed = temporal_attention.measure_level("cudnn", level, iters=2)  # no cuDNN on the CPU
    assert "error" in failed and "ms" not in failed
    (total,) = temporal_attention.totals([done, failed, {**done, "level": 1}])
    assert total["implementation"] == "xla"
    assert total["ms_per_step"] == pytest.approx(2 * done["ms_per_step"])


# ----------------------------------------------------------------------------- wiring


@pytest.mark.parametrize("name", list(BENCHMARKS))
def test_every_benchmark_parses_its_defaults(name):
    module = importlib.import_module(BENCHMARKS[name][0])
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    assert callable(module.main) and isinstance(parser.parse_args([]), argparse.Namespace)


def test_synthetic_batch_follows_the_config():
    config = load_config("configs/imagen_video.py:stage=tsr1,size=tiny")
    batch = measure.synthetic_train_batch(config, 3)
    shapes = {k: v.shape for k, v in batch.items()}
    assert shapes == {
        "video": (3, 4, 8, 8, 3),
        "cond": (3, 2, 8, 8, 3),
        "text": (3, 32, 384),
        "text_mask": (3, 32),
    }
    assert batch["video"].dtype == np.uint8 and batch["cond"].dtype == np.uint8
