"""Measuring on an accelerator: wall time of compiled calls, matmul peak, model FLOPs, memory,
and the sharded train step and synthetic batches the training benchmarks share.

Every benchmark prints one JSON line per measurement (:func:`emit`) and a table at the end
(:func:`print_table`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from imagen_video_jax.models import VideoUNet
from imagen_video_jax.parallel import axis_rules, batch_sharding, mesh_context
from imagen_video_jax.parallel.mesh import Rules
from imagen_video_jax.train.loop import example_inputs
from imagen_video_jax.train.optimizer import make_optimizer
from imagen_video_jax.train.state import sharded_state_init
from imagen_video_jax.train.step import StepFn, jit_train_step, make_train_step


def block(tree: Any) -> Any:
    """Wait for every array in ``tree``; returns it."""
    return jax.block_until_ready(tree)


def median_step_seconds(step: Callable[[], Any], *, warmup: int = 3, iters: int = 20) -> float:
    """Median wall time of ``step()`` (which must return its device outputs) after warm-up."""
    for _ in range(warmup):
        block(step())
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        block(step())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def median_pipelined_step_seconds(
    step: Callable[[], Any], *, warmup: int = 3, iters: int = 20
) -> float:
    """Median time between the ends of consecutive ``step()`` calls with the next call always
    dispatched before the previous one is waited for, as the train loop runs its steps.

    A step dispatched alone (:func:`median_step_seconds`) also counts the host's work before
    its first kernel starts: parsing and placing every array of the train state (over a
    thousand for a 250M-parameter U-Net: params, EMA, two Adam moments), which the train
    loop overlaps with the step in flight. This is the throughput figure; that one the
    latency of a lone step.
    """
    for _ in range(warmup):
        block(step())
    in_flight = step()
    times, last = [], None
    for _ in range(iters + 1):
        following = step()
        block(in_flight)
        now = time.perf_counter()
        if last is not None:
            times.append(now - last)
        in_flight, last = following, now
    block(in_flight)
    return statistics.median(times)


BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


class CompileCounter:
    """Names of the programs XLA compiles in this thread while the counter is active (from
    ``jax.monitoring`` events; compiles in other threads are not counted)."""

    def __init__(self):
        self.names: list[str] = []
        self._thread = threading.get_ident()

    def _listen(self, event: str, duration: float, **kwargs: Any) -> None:
        if event == BACKEND_COMPILE_EVENT and threading.get_ident() == self._thread:
            self.names.append(str(kwargs.get("fun_name", "?")))

    def __enter__(self) -> CompileCounter:
        self._thread = threading.get_ident()
        jax.monitoring.register_event_duration_secs_listener(self._listen)
        return self

    def __exit__(self, *exc: Any) -> None:
        jax.monitoring.unregister_event_duration_listener(self._listen)


def matmul_peak_tflops(
    n: int = 8192, dtype: jnp.dtype = jnp.bfloat16, iters: int = 20, chain: int = 10
) -> float:
    """Measured TFLOP/s of a large square matmul on the default device (the MFU denominator).

    The products are dispatched ``chain`` at a time and waited for once: waiting for each one
    would add the host's dispatch and wait (a good part of a millisecond) to a product that an
    H200 does in about 1.4 ms, and read the peak low.
    """
    key_a, key_b = jax.random.split(jax.random.key(0))
    a = jax.random.normal(key_a, (n, n), dtype)
    b = jax.random.normal(key_b, (n, n), dtype)
    matmul = jax.jit(lambda x, y: x @ y)

    def products() -> jax.Array:
        return [matmul(a, b) for _ in range(chain)][-1]  # run in order: the last ends them

    seconds = median_step_seconds(products, iters=iters) / chain
    return 2 * n**3 / seconds / 1e12


def cpu_cost_analysis(fn: Callable, *abstract_args: Any) -> dict[str, float]:
    """``{"flops", "bytes"}`` of ``fn`` from XLA's cost analysis of a compile for the CPU backend.

    A GPU compile's cost analysis leaves out convolutions that run in cuDNN, so the counts
    come from the CPU compile of the same function; nothing is executed. ``bytes`` (operands
    and outputs of every fused op) estimates memory traffic: XLA:GPU fuses more, so it is an
    upper estimate there.
    """
    cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
    args = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=cpu), abstract_args
    )
    analysis = jax.jit(fn).lower(*args).compile().cost_analysis()
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0]
    return {"flops": float(analysis["flops"]), "bytes": float(analysis["bytes accessed"])}


def cpu_compiled_flops(fn: Callable, *abstract_args: Any) -> float:
    """FLOPs of ``fn`` from XLA's cost analysis of a compile for the CPU backend."""
    return cpu_cost_analysis(fn, *abstract_args)["flops"]


def floor_seconds(flops: float, peak_tflops: float) -> float:
    """The compute floor of ``flops``: the time they take at the measured matmul peak."""
    return flops / (peak_tflops * 1e12)


def _memory_stat_gib(device: jax.Device | None, *keys: str) -> float | None:
    """The first of ``keys`` in ``device``'s memory stats, in GiB (None where the backend has
    no stats)."""
    stats = (device or jax.devices()[0]).memory_stats()
    if not stats:
        return None
    return next((stats[key] for key in keys if key in stats), 0) / 2**30


def _largest_over_devices(read: Callable[[jax.Device], float | None]) -> float | None:
    values = [read(device) for device in jax.local_devices()]
    return max((v for v in values if v is not None), default=None)


def peak_memory_gib(device: jax.Device | None = None) -> float | None:
    """Peak bytes in use on ``device`` since start, in GiB (None where the backend has no stats)."""
    return _memory_stat_gib(device, "peak_bytes_in_use", "bytes_in_use")


def in_use_gib(device: jax.Device | None = None) -> float | None:
    """Bytes in use on ``device`` now, in GiB (None where the backend has no stats)."""
    return _memory_stat_gib(device, "bytes_in_use")


def max_in_use_gib() -> float | None:
    """The largest :func:`in_use_gib` over this process's devices."""
    return _largest_over_devices(in_use_gib)


def max_peak_memory_gib() -> float | None:
    """The largest :func:`peak_memory_gib` over this process's devices."""
    return _largest_over_devices(peak_memory_gib)


def bytes_per_device(tree: Any) -> int:
    """Bytes the arrays of ``tree`` (arrays or ShapeDtypeStructs with shardings) hold on each
    device: the shard shape of every leaf under its sharding (the largest shard where uneven)."""

    def shard_bytes(leaf: Any) -> int:
        shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding else leaf.shape
        return math.prod(shape) * jnp.dtype(leaf.dtype).itemsize

    return sum(shard_bytes(leaf) for leaf in jax.tree.leaves(tree))


# ----------------------------------------------------------------------------- train steps


def example_shape(config: Mapping) -> tuple[int, int, int]:
    """(frames, height, width) of one training example: the stage's output, or the crop that
    config.data sets (fully convolutional stages may train on crops)."""
    stage, data = config["stage"], config["data"]
    return (
        int(stage["frames"]),
        int(data.get("crop_height", 0) or stage["height"]),
        int(data.get("crop_width", 0) or stage["width"]),
    )


def synthetic_train_batch(config: Mapping, batch_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A host batch of random content with the shapes ``config``'s train step takes: uint8
    video, the low-res conditioning video of a super-resolution stage, and text embeddings of
    the encoder's length and width (content does not change the cost)."""
    rng = np.random.default_rng(seed)
    frames, height, width = example_shape(config)
    stage, model = config["stage"], config["model"]
    batch = {"video": rng.integers(0, 256, (batch_size, frames, height, width, 3), np.uint8)}
    if model.get("cond_channels", 0):
        tf, sf = int(stage.get("temporal_factor", 1)), int(stage.get("spatial_factor", 1))
        shape = (batch_size, frames // tf, height // sf, width // sf, model["cond_channels"])
        batch["cond"] = rng.integers(0, 256, shape, np.uint8)
    if model.get("use_text", True):
        length = int(config["text_encoder"]["max_length"])
        text_shape = (batch_size, length, int(model["text_dim"]))
        batch["text"] = rng.standard_normal(text_shape, dtype=np.float32)
        batch["text_mask"] = np.ones((batch_size, length), bool)
    return batch


def abstract_batch(host_batch: Mapping[str, np.ndarray], sharding: Any = None) -> dict:
    """ShapeDtypeStructs of a host batch (with ``sharding``), for compiling without data."""
    return {
        key: jax.ShapeDtypeStruct(value.shape, value.dtype, sharding=sharding)
        for key, value in host_batch.items()
    }


@dataclasses.dataclass
class TrainStep:
    """The project's sharded train step of a config over a mesh, not yet run or allocated.

    ``step_fn(state, batch, encoder_params)`` is the raw step, ``jitted`` the compiled one
    (state donated), ``init(key)`` makes the state in its shardings, ``abstract`` describes it.
    """

    mesh: Mesh
    rules: Rules
    init: Callable[[jax.Array], Any]
    abstract: Any
    step_fn: StepFn
    jitted: StepFn

    @classmethod
    def build(cls, config: Any, mesh: Mesh) -> TrainStep:
        rules = axis_rules(config.mesh)
        model = VideoUNet.from_config(config.model)
        tx = make_optimizer(config.train)
        inputs = example_inputs(config)
        init, shardings, abstract = sharded_state_init(
            lambda key: model.init(key, **inputs)["params"], tx, mesh, rules
        )
        step_fn = make_train_step(model.apply, tx, config, rules)
        jitted = jit_train_step(step_fn, shardings, None, mesh, rules)
        return cls(mesh, rules, init, abstract, step_fn, jitted)

    @property
    def batch_sharding(self) -> Any:
        return batch_sharding(self.mesh, self.rules)

    def compile_abstract(self, host_batch: Mapping[str, np.ndarray]) -> Any:
        """The step compiled for this mesh from shapes alone (nothing allocated or run)."""
        with mesh_context(self.mesh, self.rules):
            batch = abstract_batch(host_batch, self.batch_sharding)
            return self.jitted.lower(self.abstract, batch, None).compile()


def compiled_memory_bytes(compiled: Any) -> dict[str, int]:
    """Per-device bytes of a compiled program from XLA's memory analysis: arguments, outputs,
    temporaries, and their total (donated outputs alias their arguments)."""
    stats = compiled.memory_analysis()
    sizes = {
        "argument_bytes": int(stats.argument_size_in_bytes),
        "output_bytes": int(stats.output_size_in_bytes),
        "temp_bytes": int(stats.temp_size_in_bytes),
        "alias_bytes": int(stats.alias_size_in_bytes),
    }
    sizes["total_bytes"] = (
        sizes["argument_bytes"] + sizes["output_bytes"] + sizes["temp_bytes"] - sizes["alias_bytes"]
    )
    return sizes


def device_description() -> dict[str, str]:
    """The device, its count and the JAX version, for every record."""
    device = jax.devices()[0]
    return {
        "device": getattr(device, "device_kind", device.platform),
        "num_devices": str(jax.device_count()),
        "jax": jax.__version__,
    }


def out_of_memory(err: BaseException | str) -> bool:
    """Whether ``err`` (an error, or a process's output) is a device running out of memory
    (an XLA runtime error)."""
    text = str(err)
    return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()


def error_line(err: BaseException, limit: int = 300) -> str:
    """The first line of an error's message, cut to ``limit`` characters, for a record."""
    lines = str(err).strip().splitlines()
    return (lines[0] if lines else type(err).__name__)[:limit]


def emit(record: dict[str, Any]) -> dict[str, Any]:
    """Print one measurement as a JSON line (flushed at once) and return it."""
    print(json.dumps(record, sort_keys=True), flush=True)
    return record


def print_table(records: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    """A plain-text table of ``columns`` over ``records``, printed last."""

    def cell(value: Any) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    rows = [[cell(r.get(c, "")) for c in columns] for r in records]
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)), file=sys.stdout)
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)), file=sys.stdout)
