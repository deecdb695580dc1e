"""bench-base-train (BENCHMARKS.md): training throughput of a base-stage Video U-Net.

16-frame 64x64 clips, text as 64 precomputed tokens of width 768, bfloat16 compute, AdamW,
the project's own sharded train step. Reports step time (median after warm-up), clips/s,
model FLOPs a step (XLA cost analysis of the same step compiled for the CPU), achieved
TFLOP/s, MFU against a bf16 matmul peak measured in the same process, peak memory, and
the largest batch that fits.
"""

from __future__ import annotations

import concurrent.futures
from typing import Any

import jax
import ml_collections
import numpy as np

from imagen_video_jax.bench import measure
from imagen_video_jax.config import load_config
from imagen_video_jax.models import VideoUNet, count_params
from imagen_video_jax.parallel import axis_rules, make_global_batch, make_mesh, mesh_context
from imagen_video_jax.train.loop import example_inputs
from imagen_video_jax.train.optimizer import make_optimizer
from imagen_video_jax.train.state import sharded_state_init
from imagen_video_jax.train.step import jit_train_step, make_train_step

FRAMES, SIDE, TEXT_TOKENS, TEXT_DIM = 16, 64, 64, 768
CONFIG = "configs/bench_base_train.py"


def bench_config(
    batch_per_device: int, *, remat: str = "none", fsdp: bool = False
) -> ml_collections.ConfigDict:
    """configs/bench_base_train.py at one batch size per device."""
    mesh = "fsdp" if fsdp else "data"
    return load_config(f"{CONFIG}:batch={batch_per_device},remat={remat},mesh={mesh}")


def synthetic_batch(batch_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A host batch of the benchmark's shapes (content does not change the cost)."""
    rng = np.random.default_rng(seed)
    return {
        "video": rng.integers(0, 256, (batch_size, FRAMES, SIDE, SIDE, 3), dtype=np.uint8),
        "text": rng.standard_normal((batch_size, TEXT_TOKENS, TEXT_DIM), dtype=np.float32),
        "text_mask": np.ones((batch_size, TEXT_TOKENS), bool),
    }


class TrainBench:
    """One compiled train step of the benchmark at one batch size, ready to time."""

    def __init__(self, config: ml_collections.ConfigDict, devices: list | None = None):
        self.config = config
        self.mesh = make_mesh(config.mesh, devices)
        self.rules = axis_rules(config.mesh)
        model = VideoUNet.from_config(config.model)
        tx = make_optimizer(config.train)
        inputs = example_inputs(config)
        init, shardings, self.abstract = sharded_state_init(
            lambda key: model.init(key, **inputs)["params"], tx, self.mesh, self.rules
        )
        self.step_fn = make_train_step(model.apply, tx, config, self.rules)
        self.jitted = jit_train_step(self.step_fn, shardings, None, self.mesh, self.rules)
        with mesh_context(self.mesh, self.rules):
            self.state = init(jax.random.PRNGKey(0))
            self.batch = make_global_batch(
                synthetic_batch(config.data.batch_size), self.mesh, self.rules
            )

    def step(self) -> Any:
        with mesh_context(self.mesh, self.rules):
            self.state, metrics = self.jitted(self.state, self.batch, None)
        return metrics

    def memory_gib(self) -> float:
        """Arguments + temporaries of the compiled step per device, from XLA's memory analysis."""
        with mesh_context(self.mesh, self.rules):
            compiled = self.jitted.lower(self.state, self.batch, None).compile()
        stats = compiled.memory_analysis()
        total = stats.argument_size_in_bytes + stats.temp_size_in_bytes
        return (total + stats.output_size_in_bytes - stats.alias_size_in_bytes) / 2**30


def step_flops(config: ml_collections.ConfigDict) -> float:
    """Model FLOPs of one train step (per global batch) from the CPU compile's cost analysis."""
    cpu_config = config.copy_and_resolve_references()
    cpu = [jax.devices("cpu")[0]]
    mesh = make_mesh(_single_device_mesh(cpu_config.mesh), cpu)
    rules = axis_rules(cpu_config.mesh)
    model = VideoUNet.from_config(cpu_config.model)
    tx = make_optimizer(cpu_config.train)
    inputs = example_inputs(cpu_config)
    _, _, abstract = sharded_state_init(
        lambda key: model.init(key, **inputs)["params"], tx, mesh, rules
    )
    step = make_train_step(model.apply, tx, cpu_config, rules)
    host = synthetic_batch(cpu_config.data.batch_size)
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in host.items()}
    with mesh_context(mesh, rules):
        return measure.cpu_compiled_flops(lambda s, b: step(s, b, None), abstract, batch)


def _single_device_mesh(mesh_config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    mesh_config = mesh_config.copy_and_resolve_references()
    mesh_config.data, mesh_config.fsdp, mesh_config.tensor = 1, 1, 1
    return mesh_config


def run(
    batch_per_device: int = 8,
    *,
    fit_batches: tuple[int, ...] = (16, 32, 64, 128),
    iters: int = 20,
    remat: str = "none",
    fsdp: bool = False,
    profile_dir: str | None = None,
) -> list[dict[str, Any]]:
    """The whole benchmark; returns the records it printed."""
    info = measure.device_description()
    peak = measure.matmul_peak_tflops()
    records = [measure.emit({"bench": "matmul_peak", "tflops": peak, **info})]
    config = bench_config(batch_per_device, remat=remat, fsdp=fsdp)
    params = count_params(config.model)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        # The CPU compile that counts FLOPs overlaps the accelerator timing.
        flops_future = pool.submit(step_flops, config)
        bench = TrainBench(config)
        seconds = measure.median_step_seconds(bench.step, iters=iters)
        flops = flops_future.result()
    if profile_dir:
        with jax.profiler.trace(profile_dir, create_perfetto_trace=True):
            for _ in range(3):
                measure.block(bench.step())
    achieved = flops / seconds / 1e12
    records.append(
        measure.emit(
            {
                "bench": "base_train",
                "batch": config.data.batch_size,
                "params": params,
                "step_ms": seconds * 1e3,
                "clips_per_s": config.data.batch_size / seconds,
                "step_tflop": flops / 1e12,
                "tflops": achieved,
                "mfu": achieved / (peak * jax.device_count()),
                "peak_gib": measure.peak_memory_gib(),
                "compiled_gib": bench.memory_gib(),
                "remat": config.model.remat,
                "fsdp": fsdp,
                **info,
            }
        )
    )
    del bench
    for batch in fit_batches:
        records.append(measure.emit(_fit_record(batch, remat, fsdp, info)))
    return records


def _fit_record(batch: int, remat: str, fsdp: bool, info: dict) -> dict[str, Any]:
    """Whether one step at ``batch`` per device runs, and how long it takes."""
    record = {"bench": "base_train_fit", "batch_per_device": batch, **info}
    try:
        bench = TrainBench(bench_config(batch, remat=remat, fsdp=fsdp))
        seconds = measure.median_step_seconds(bench.step, warmup=2, iters=5)
        record.update(fits=True, step_ms=seconds * 1e3, clips_per_s=batch / seconds)
        record["compiled_gib"] = bench.memory_gib()
    except Exception as err:  # out of memory shows up as an XLA runtime error
        record.update(fits=False, error=str(err).splitlines()[0][:200])
    return record
