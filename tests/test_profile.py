"""The profile summary: device time a step by the JAX op each kernel came from."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from imagen_video_jax.bench import profile

GPU = 1
HOST = 2


def _trace(*kernels, starts=None, streams=None):
    """A perfetto trace: a GPU process with ``kernels`` (hlo_op, microseconds), one after
    another unless ``starts`` (microseconds) and ``streams`` (thread ids) say otherwise, and
    a host event that must not count."""
    meta = [
        {"ph": "M", "pid": GPU, "name": "process_name", "args": {"name": "/device:GPU:0"}},
        {"ph": "M", "pid": HOST, "name": "process_name", "args": {"name": "/host:CPU"}},
    ]
    host = [{"ph": "X", "pid": HOST, "ts": 0, "dur": 9e6, "name": "launch", "args": {}}]
    durations = [us for _, us in kernels]
    starts = starts or [sum(durations[:i]) for i in range(len(kernels))]
    streams = streams or [7] * len(kernels)
    events = [
        {
            "ph": "X",
            "pid": GPU,
            "tid": tid,
            "ts": ts,
            "dur": us,
            "name": "k",
            "args": {"hlo_op": op},
        }
        for (op, us), ts, tid in zip(kernels, starts, streams)
    ]
    return {"traceEvents": meta + host + events}


def test_kernels_add_up_by_jax_op_with_layer_indices_dropped():
    trace = _trace(
        ("fusion.1", 200.0), ("fusion.1", 200.0), ("fusion.2", 100.0),  # two steps
        ("command_buffer_3", 50.0), ("custom-call.7", 30.0),
    )  # fmt: skip
    sources = {
        "fusion.1": "jit(step)/jvp(VideoUNet)/down_0_1/res/conv_in/conv_general_dilated",
        "fusion.2": "jit(step)/jvp(VideoUNet)/up_1_0/res/conv_in/conv_general_dilated",
    }
    rows = profile.time_by_jax_op(profile.device_kernel_ms(trace), sources, steps=2)
    assert [r["jax_op"] for r in rows] == [
        "res/conv_in/conv_general_dilated",
        profile.COMMAND_BUFFER,
        profile.UNNAMED,
    ]
    conv, graphs, unnamed = rows
    assert conv["ms_per_step"] == pytest.approx((200 + 200 + 100) / 1e3 / 2)
    assert conv["kernels_per_step"] == 1.5
    assert graphs["ms_per_step"] == pytest.approx(0.025)
    assert unnamed["ms_per_step"] == pytest.approx(0.015)


def test_a_kernel_launched_before_its_predecessor_ends_counts_from_that_end():
    """Programmatic dependent launch: the reduction starts 300 us into a 400 us convolution
    and ends 10 us after it; the next stream's kernel overlaps freely."""
    trace = _trace(
        ("conv", 400.0), ("reduce", 110.0), ("other_stream", 50.0),
        starts=[0.0, 300.0, 100.0], streams=[7, 7, 8],
    )  # fmt: skip
    assert profile.device_kernel_ms(trace) == {
        "conv": pytest.approx((0.4, 1)),
        "reduce": pytest.approx((0.01, 1)),
        "other_stream": pytest.approx((0.05, 1)),
    }


def test_kernels_add_up_by_part_the_first_match_taking_each():
    trace = _trace(
        ("fusion.1", 200.0), ("fusion.2", 100.0), ("fusion.3", 40.0), ("custom-call.7", 30.0)
    )
    sources = {
        "fusion.1": "jit(step)/jvp(VideoUNet)/down_0_1/res/conv_in/conv_general_dilated",
        "fusion.2": "jit(step)/jvp(VideoUNet)/up_1_0/res/norm_in/reduce_sum",
        "fusion.3": "jit(step)/add",
    }
    parts = (("convolutions", r"conv_general"), ("blocks", r"/res/"), ("unused", r"nothing"))
    rows = profile.time_by_part(profile.device_kernel_ms(trace), sources, 1, parts)
    assert [r["part"] for r in rows] == ["convolutions", "blocks", "unused", profile.OTHER]
    assert [r["ms_per_step"] for r in rows] == pytest.approx([0.2, 0.1, 0.0, 0.07])
    assert [r["kernels_per_step"] for r in rows] == [1, 1, 0, 2]


def test_jax_op_key_keeps_the_last_parts_without_indices():
    name = "jit(step)/transpose(jvp(VideoUNet))/down_0_1/temporal_attention/qkv/dot_general"
    assert profile.jax_op_key(name) == "temporal_attention/qkv/dot_general"
    assert profile.jax_op_key(name, depth=4) == "down/temporal_attention/qkv/dot_general"
    assert profile.jax_op_key("blocks_3/w2v_1/add") == "blocks/w2v/add"


def test_a_profile_mostly_in_cuda_graphs_says_how_to_name_its_kernels():
    rows = [
        {"jax_op": profile.COMMAND_BUFFER, "ms_per_step": 3.0},
        {"jax_op": "res/conv_in/conv_general_dilated", "ms_per_step": 1.0},
    ]
    assert "--xla_gpu_enable_command_buffer=" in profile.unnamed_kernels_hint(rows)
    rows[1]["ms_per_step"] = 4.0
    assert profile.unnamed_kernels_hint(rows) is None


def test_a_missing_trace_is_named():
    with pytest.raises(FileNotFoundError, match="no perfetto_trace"):
        profile.latest_trace("/nonexistent/profile")


def test_a_real_cpu_profile_is_attributed_to_the_named_scope(tmp_path):
    @jax.jit
    def f(x):
        with jax.named_scope("block_3"):
            y = jnp.sin(x)
        return jnp.tanh(y @ x.T).sum()

    x = jnp.ones((256, 256))
    f(x).block_until_ready()
    steps = 3
    with jax.profiler.trace(str(tmp_path), create_perfetto_trace=True):
        for _ in range(steps):
            f(x).block_until_ready()
    kernels = profile.device_kernel_ms(profile.read_trace(profile.latest_trace(tmp_path)))
    with pytest.raises(FileNotFoundError, match="no optimized_hlo.txt"):
        profile.summarize(tmp_path, steps=steps)
    rows = profile.summarize(tmp_path, f.lower(x).compile().as_text(), steps)
    # Kept beside the trace, the HLO attributes it again later, to the same rows.
    profile.save_hlo(tmp_path, f.lower(x).compile().as_text())
    assert profile.summarize(tmp_path, steps=steps) == rows
    by_op = {r["jax_op"]: r for r in rows}
    # The sine runs as its own kernel, once a step, under the scope's name without its index;
    # the step's whole traced time is attributed to some JAX op.
    assert by_op["jit(f)/block/sin"]["kernels_per_step"] == 1
    assert profile.UNNAMED not in by_op
    assert sum(r["ms_per_step"] for r in rows) == pytest.approx(
        sum(ms for ms, _ in kernels.values()) / steps
    )
