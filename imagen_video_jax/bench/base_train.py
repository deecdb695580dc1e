"""bench-base-train (BENCHMARKS.md): training throughput of a base-stage Video U-Net.

16-frame 64x64 clips, text as 64 precomputed tokens of width 768, bfloat16 compute, AdamW,
the project's own sharded train step. Reports step time (median after warm-up, each step
dispatched before the previous one is waited for, as the train loop runs them; and, apart,
the latency of a step run alone), clips/s, model FLOPs a step (XLA cost analysis of the same
step compiled for the CPU), achieved TFLOP/s, MFU against a bf16 matmul peak measured in the
same process, peak memory, and the largest batch that fits.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import sys
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from imagen_video_jax.bench import measure, profile
from imagen_video_jax.config import load_config
from imagen_video_jax.models import count_params
from imagen_video_jax.models.validation import ATTENTION_IMPLS, REMAT_POLICIES
from imagen_video_jax.parallel import make_global_batch, make_mesh, mesh_context

CONFIG = "configs/bench_base_train.py"
PROFILED_STEPS = 3
# JAX ops of a profile reported, the largest first.
PROFILE_ROWS = 25
# The U-Net step's parts for a profile's table by part: (name, expression on the JAX op), the
# first that matches taking a kernel; the optimizer, the loss and unnamed ops are the rest.
# A block's module is named by its attribute name or, in the op names of a rematerialised
# block on some installs, by its class: both are matched.
_RES = "/(res|ResBlock)/"
UNET_PARTS = (
    ("residual blocks' 3x3 convolutions", _RES + r"conv_(in|out)/conv_general_dilated"),
    ("temporal attention", r"/(temporal_attention|TemporalAttention)/"),
    (
        "spatial and cross-attention",
        r"/(spatial_attention|cross_attention|SpatialAttention|CrossAttention)/",
    ),
    ("residual blocks' norms", _RES + r"norm_(in|out)/"),
    ("rest of the residual blocks", _RES),
    ("upsampling", r"/up_\d+_resample/"),
    ("downsampling", r"/down_\d+_resample/"),
    ("rest of the U-Net", r"VideoUNet"),
)


def bench_config(
    batch_per_device: int, *, remat: str = "none", fsdp: bool = False, attention: str = "auto"
) -> ml_collections.ConfigDict:
    """configs/bench_base_train.py at one batch size per device."""
    mesh = "fsdp" if fsdp else "data"
    options = f"batch={batch_per_device},remat={remat},mesh={mesh},attention={attention}"
    return load_config(f"{CONFIG}:{options}")


class TrainBench:
    """One compiled train step of a config at its batch size, ready to time.

    ``devices``: the mesh's devices (default: all); ``host_batch``: the batch to step on
    (default: random content of the config's shapes).
    """

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        devices: list | None = None,
        host_batch: dict[str, np.ndarray] | None = None,
    ):
        self.config = config
        self.train_step = measure.TrainStep.build(config, make_mesh(config.mesh, devices))
        self.mesh, self.rules = self.train_step.mesh, self.train_step.rules
        if host_batch is None:
            host_batch = measure.synthetic_train_batch(config, config.data.batch_size)
        with mesh_context(self.mesh, self.rules):
            self.state = self.train_step.init(jax.random.PRNGKey(0))
            self.batch = make_global_batch(host_batch, self.mesh, self.rules)

    def step(self) -> Any:
        with mesh_context(self.mesh, self.rules):
            self.state, metrics = self.train_step.jitted(self.state, self.batch, None)
        return metrics

    @functools.cached_property
    def compiled(self) -> Any:
        """The timed step compiled ahead of time from the same shapes and shardings (once), for
        XLA's memory analysis and the optimised HLO."""
        with mesh_context(self.mesh, self.rules):
            return self.train_step.jitted.lower(self.state, self.batch, None).compile()

    def memory_gib(self) -> float:
        """Arguments + temporaries of the compiled step per device, from XLA's memory analysis."""
        return measure.compiled_memory_bytes(self.compiled)["total_bytes"] / 2**30

    def profile(self, profile_dir: str, steps: int = PROFILED_STEPS) -> tuple[list, list]:
        """Trace ``steps`` steps into ``profile_dir``, with the step's optimised HLO kept beside
        the trace (``profile.HLO_FILE``); returns the device time a step by JAX op and by
        part of the U-Net (``UNET_PARTS``)."""
        with jax.profiler.trace(profile_dir, create_perfetto_trace=True):
            for _ in range(steps):
                measure.block(self.step())
        profile.save_hlo(profile_dir, self.compiled.as_text())
        kernels, sources = profile.load(profile_dir)
        return (
            profile.time_by_jax_op(kernels, sources, steps),
            profile.time_by_part(kernels, sources, steps, UNET_PARTS),
        )


def step_flops(config: ml_collections.ConfigDict) -> float:
    """Model FLOPs of one train step (per global batch) from the CPU compile's cost analysis."""
    cpu_config = config.copy_and_resolve_references()
    cpu_config.model.attention_impl = "xla"  # the same products; no fused GPU kernels on the CPU
    cpu = [jax.devices("cpu")[0]]
    train_step = measure.TrainStep.build(
        cpu_config, make_mesh(_single_device_mesh(cpu_config.mesh), cpu)
    )
    host = measure.synthetic_train_batch(cpu_config, cpu_config.data.batch_size)
    with mesh_context(train_step.mesh, train_step.rules):
        return measure.cpu_compiled_flops(
            lambda s, b: train_step.step_fn(s, b, None),
            train_step.abstract,
            measure.abstract_batch(host),
        )


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
    attention: str = "auto",
    profile_dir: str | None = None,
) -> list[dict[str, Any]]:
    """The whole benchmark; returns the records it printed."""
    info = measure.device_description()
    peak = measure.matmul_peak_tflops()
    records = [measure.emit({"bench": "matmul_peak", "tflops": peak, **info})]
    config = bench_config(batch_per_device, remat=remat, fsdp=fsdp, attention=attention)
    params = count_params(config.model)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        # The CPU compile that counts FLOPs overlaps the accelerator timing.
        flops_future = pool.submit(step_flops, config)
        bench = TrainBench(config)
        seconds, timing = _time_steps(bench, warmup=3, iters=iters)
        flops = flops_future.result()
    profiled, parts = bench.profile(profile_dir) if profile_dir else ([], [])
    achieved = flops / seconds / 1e12
    records.append(
        measure.emit(
            {
                "bench": "base_train",
                "params": params,
                **timing,
                "step_tflop": flops / 1e12,
                "tflops": achieved,
                "mfu": achieved / (peak * jax.device_count()),
                "peak_gib": measure.peak_memory_gib(),
                "compiled_gib": bench.memory_gib(),
                "remat": config.model.remat,
                "fsdp": fsdp,
                "attention": attention,
                **info,
            }
        )
    )
    del bench
    records += [measure.emit({"bench": "base_train_profile", **r}) for r in profiled[:PROFILE_ROWS]]
    records += [measure.emit({"bench": "base_train_profile_part", **r}) for r in parts]
    if hint := profile.unnamed_kernels_hint(profiled):
        print(hint, file=sys.stderr)
    for batch in fit_batches:
        records.append(
            measure.emit(
                _fit_record(bench_config(batch, remat=remat, fsdp=fsdp, attention=attention), info)
            )
        )
    return records


def compare(
    variants: Sequence[tuple[str, ml_collections.ConfigDict]],
    *,
    warmup: int = 3,
    iters: int = 30,
) -> list[dict[str, Any]]:
    """Each (label, config) variant's step built and timed in turn in this process; returns
    the records it printed.

    Machines of one kind differ by 1-3 % in this step's time, more than most single changes
    gain, so variants compare only within one run. Each record holds the step time (as
    :func:`run` times it), the lone step's, XLA's memory estimate and the loss of the first
    step: variants that leave the model's maths alone have the same first loss.
    """
    info = measure.device_description()
    records = []
    for label, config in variants:
        bench = TrainBench(config)
        first_loss = float(measure.block(bench.step())["loss"])
        _, timing = _time_steps(bench, warmup=warmup, iters=iters)
        record = {
            "bench": "base_train_compare",
            "variant": label,
            **timing,
            "compiled_gib": bench.memory_gib(),
            "first_loss": first_loss,
            **info,
        }
        records.append(measure.emit(record))
        del bench
    return records


def _time_steps(bench: TrainBench, *, warmup: int, iters: int) -> tuple[float, dict[str, Any]]:
    """(seconds a step, its record fields): the step as the train loop runs it (each
    dispatched before the previous one is waited for), clips/s, and a lone step's latency."""
    batch = bench.config.data.batch_size
    seconds = measure.median_pipelined_step_seconds(bench.step, warmup=warmup, iters=iters)
    latency = measure.median_step_seconds(bench.step, warmup=0, iters=iters)
    return seconds, {
        "batch": batch,
        "step_ms": seconds * 1e3,
        "step_latency_ms": latency * 1e3,
        "clips_per_s": batch / seconds,
    }


def parse_variants(text: str) -> list[tuple[str, str]]:
    """``"dots_spatial:pallas_cudnn,dots:pallas"`` -> [(remat, attention), ...], checked."""
    variants = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        remat, _, attention = item.partition(":")
        if remat not in REMAT_POLICIES or attention not in ATTENTION_IMPLS:
            raise ValueError(
                f"variant {item!r}: expected REMAT:ATTENTION, REMAT one of {REMAT_POLICIES} "
                f"and ATTENTION one of {ATTENTION_IMPLS}"
            )
        variants.append((remat, attention))
    return variants


def _variants_argument(text: str) -> list[tuple[str, str]]:
    try:
        return parse_variants(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _fit_record(config: ml_collections.ConfigDict, info: dict) -> dict[str, Any]:
    """Whether one step of ``config`` (a batch per device) runs, and how long it takes."""
    batch = config.data.batch_size // jax.device_count()
    record = {"bench": "base_train_fit", "batch_per_device": batch, **info}
    try:
        bench = TrainBench(config)
        seconds = measure.median_pipelined_step_seconds(bench.step, warmup=2, iters=5)
        record.update(fits=True, step_ms=seconds * 1e3, clips_per_s=batch / seconds)
        record["compiled_gib"] = bench.memory_gib()
    except Exception as err:  # out of memory shows up as an XLA runtime error
        record.update(fits=False, error=measure.error_line(err))
    return record


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch", type=int, default=8, help="clips per device")
    parser.add_argument("--remat", default="none", choices=REMAT_POLICIES)
    parser.add_argument("--mesh", default="data", choices=("data", "fsdp"))
    parser.add_argument(
        "--attention",
        default="auto",
        choices=ATTENTION_IMPLS,
        help="attention kernels (cudnn: cuDNN's fused kernel for all attention; pallas: "
        "temporal attention by the Pallas kernels; pallas_cudnn: those and cuDNN's for spatial "
        "and cross-attention; all for the GPU)",
    )
    parser.add_argument(
        "--fit",
        default="16,32,64",
        help="comma-separated batches per device to try for the largest batch that fits",
    )
    parser.add_argument("--iters", type=int, default=20, help="timed steps after warm-up")
    parser.add_argument(
        "--compare",
        default=None,
        type=_variants_argument,
        metavar="REMAT:ATTENTION,...",
        help="instead of the benchmark, time the step of each variant in turn in this process "
        "(e.g. dots_spatial:pallas_cudnn,dots:pallas_cudnn), for A/B on one machine",
    )
    parser.add_argument(
        "--profile",
        default=None,
        help=f"write a jax.profiler trace of {PROFILED_STEPS} steps here with the step's "
        "optimised HLO, and report their device time by JAX op and by part of the U-Net (on a "
        "GPU, with XLA_FLAGS=--xla_gpu_enable_command_buffer=)",
    )


def main(args: argparse.Namespace) -> int:
    if args.compare:
        fsdp = args.mesh == "fsdp"
        variants = [
            (
                f"{remat}:{attention}",
                bench_config(args.batch, remat=remat, fsdp=fsdp, attention=attention),
            )
            for remat, attention in args.compare
        ]
        records = compare(variants, iters=args.iters)
        measure.print_table(
            records,
            ("variant", "step_ms", "step_latency_ms", "clips_per_s", "compiled_gib", "first_loss"),
        )
        return 0
    fit = tuple(int(b) for b in args.fit.split(",") if b)
    records = run(
        args.batch,
        fit_batches=fit,
        iters=args.iters,
        remat=args.remat,
        fsdp=args.mesh == "fsdp",
        attention=args.attention,
        profile_dir=args.profile,
    )
    columns = ("bench", "batch", "batch_per_device", "step_ms", "step_latency_ms", "clips_per_s")
    measure.print_table(records, columns + ("tflops", "mfu", "compiled_gib", "peak_gib", "fits"))
    for bench, key in (("base_train_profile", "jax_op"), ("base_train_profile_part", "part")):
        if rows := [r for r in records if r["bench"] == bench]:
            measure.print_table(rows, (key, "ms_per_step", "kernels_per_step"))
    return 0
