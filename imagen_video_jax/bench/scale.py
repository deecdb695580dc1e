"""bench-scale (BENCHMARKS.md): bench-base-train on 1 and N devices of one host.

The same batch per device on one device, then on N (default: every visible device) data
parallel (mesh data=N: parameters replicated, the batch split) and fully sharded (mesh fsdp=N:
parameters, optimizer state and the batch split N ways). Reports step time, clips/s, the
throughput ratio against one device (target >= 1.9 on 2 GPUs), and the parameter bytes each
device holds.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections

from imagen_video_jax.bench import measure
from imagen_video_jax.bench.base_train import TrainBench, bench_config
from imagen_video_jax.models.validation import REMAT_POLICIES

MODES = ("data", "fsdp")
TARGET_RATIO_2 = 1.9  # 2 devices give at least 1.9x the throughput of 1


def scale_config(
    config: ml_collections.ConfigDict, batch_per_device: int, num_devices: int, mode: str
) -> ml_collections.ConfigDict:
    """``config`` over ``num_devices`` devices in ``mode`` ('data' or 'fsdp'), with
    ``batch_per_device`` clips on each."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    config = config.copy_and_resolve_references()
    config.data.batch_size = batch_per_device * num_devices
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 1, 1, 1
    setattr(config.mesh, mode, num_devices)
    return config


def measure_mesh(
    config: ml_collections.ConfigDict, devices: Sequence[jax.Device], mode: str, **timing: int
) -> dict[str, Any]:
    """One record: the train step of ``config`` over ``devices``, timed."""
    bench = TrainBench(config, list(devices))
    seconds = measure.median_pipelined_step_seconds(bench.step, **timing)
    params, video = bench.state.params, bench.batch["video"]
    record = {
        "bench": "scale",
        "mode": mode if len(devices) > 1 else "single",
        "devices": len(devices),
        "mesh": dict(bench.mesh.shape),
        "batch": config.data.batch_size,
        "batch_per_device": video.sharding.shard_shape(video.shape)[0],
        "step_ms": seconds * 1e3,
        "clips_per_s": config.data.batch_size / seconds,
        "param_bytes": sum(x.nbytes for x in jax.tree.leaves(params)),
        "param_bytes_per_device": measure.bytes_per_device(params),
    }
    del bench
    return record


def run(
    config: ml_collections.ConfigDict | None = None,
    *,
    batch_per_device: int = 8,
    num_devices: int | None = None,
    modes: Sequence[str] = MODES,
    warmup: int = 3,
    iters: int = 20,
) -> list[dict[str, Any]]:
    """The whole benchmark on ``config`` (default: bench-base-train's); returns its records."""
    config = bench_config(batch_per_device) if config is None else config
    devices = jax.devices()[: num_devices or jax.device_count()]
    info = measure.device_description()
    timing = {"warmup": warmup, "iters": iters}
    single = measure_mesh(
        scale_config(config, batch_per_device, 1, "data"), devices[:1], "data", **timing
    )
    single.update(ratio=1.0, efficiency=1.0)
    records = [measure.emit({**single, **info})]
    if len(devices) == 1:
        return records
    for mode in modes:
        config_n = scale_config(config, batch_per_device, len(devices), mode)
        record = measure_mesh(config_n, devices, mode, **timing)
        ratio = record["clips_per_s"] / single["clips_per_s"]
        record.update(ratio=ratio, efficiency=ratio / len(devices))
        records.append(measure.emit({**record, **info}))
    return records


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch", type=int, default=8, help="clips per device")
    parser.add_argument("--remat", default="none", choices=REMAT_POLICIES)
    parser.add_argument(
        "--devices", type=int, default=None, help="devices of the N-device runs (default: all)"
    )
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated: data, fsdp")
    parser.add_argument("--iters", type=int, default=20, help="timed steps after warm-up")


def main(args: argparse.Namespace) -> int:
    records = run(
        bench_config(args.batch, remat=args.remat),
        batch_per_device=args.batch,
        num_devices=args.devices,
        modes=tuple(m for m in args.modes.split(",") if m),
        iters=args.iters,
    )
    columns = ("bench", "mode", "devices", "batch", "step_ms", "clips_per_s", "ratio")
    measure.print_table(records, columns + ("efficiency", "param_bytes_per_device"))
    return 0
