"""bench-paper-memory (BENCHMARKS.md): the paper's seven stages at full size.

For each stage of ``configs/imagen_video.py:size=paper``: its parameter count (abstract) against
the paper's, and one real train step at the stage's resolution (fully convolutional stages on
the crop their config or ``--crop`` gives), batch 1 per device, rematerialisation on, FSDP over
the devices at hand, with the peak memory of each device. A stage that does not fit records the
error, what its step asked for (the allocation that failed, beside the memory held), and an
estimate of what would fit: 20 bytes a parameter (float32 params, EMA, Adam's two
moments, gradients) split over the devices, plus the activations one example keeps for the
backward pass (traced: the residuals of the loss's gradient at two batch sizes, differenced).

Each stage runs in a fresh process (an out-of-memory stage leaves nothing behind for the next).
``--dry-run`` compiles each step for the CPU devices instead, from shapes alone, and reports
XLA's per-device memory and FLOP analysis beside the same estimate.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections

from imagen_video_jax.bench import measure
from imagen_video_jax.bench.base_train import TrainBench
from imagen_video_jax.cascade.cascade import default_config_file
from imagen_video_jax.config import load_config
from imagen_video_jax.models import VideoUNet, count_params
from imagen_video_jax.models.validation import REMAT_POLICIES
from imagen_video_jax.parallel import make_mesh, mesh_context
from imagen_video_jax.stages import PAPER_PARAMS, STAGE_ORDER
from imagen_video_jax.train.objective import StageObjective, stage_loss

STATE_BYTES_PER_PARAM = 16  # float32 params, EMA, Adam's first and second moments
GRAD_BYTES_PER_PARAM = 4
DEFAULT_DEVICE_BYTES = 141e9  # one H200, where the device reports no limit (dry runs)
MEM_FRACTION_ENV = "XLA_PYTHON_CLIENT_MEM_FRACTION"
GIB = 2**30
# XLA's out-of-memory message names the allocation that failed: "trying to allocate 96.54GiB".
FAILED_ALLOCATION = re.compile(r"trying to allocate ([0-9.]+)\s*([KMGT]i?B|B|bytes)\b")
UNIT_BYTES = {"B": 1, "bytes": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}
UNIT_BYTES |= {"KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12}
# Marks a stage process's progress lines on stderr; a stage that runs out of time is
# recorded with the last of them, so the record says which phase was too slow.
PROGRESS_PREFIX = "[paper-memory]"


def progress(stage: str, message: str) -> None:
    """One progress line of ``stage`` on stderr (the JSON records go to stdout)."""
    print(f"{PROGRESS_PREFIX} {stage}: {message}", file=sys.stderr, flush=True)


def last_progress(stderr: str) -> str | None:
    """The last progress line in a stage process's ``stderr``, without its prefix."""
    lines = [line for line in stderr.splitlines() if line.startswith(PROGRESS_PREFIX)]
    return lines[-1][len(PROGRESS_PREFIX) :].strip() if lines else None


def parse_crop(text: str | None) -> tuple[int, int] | None:
    """'HxW' -> (H, W); None or '' -> None."""
    if not text:
        return None
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"crop must look like HEIGHTxWIDTH (e.g. 192x320); got {text!r}") from None
    return height, width


def stage_config(
    name: str,
    *,
    size: str = "paper",
    num_devices: int = 1,
    remat: str = "block",
    crop: tuple[int, int] | None = None,
    overrides: Sequence[str] = (),
) -> ml_collections.ConfigDict:
    """The stage's config for one train step at batch 1 per device, FSDP over ``num_devices``;
    ``crop`` (height, width) replaces the config's crop of a fully convolutional stage;
    ``overrides`` ('model.dtype=float32', ...) apply first."""
    if name not in STAGE_ORDER:
        raise ValueError(f"unknown stage {name!r}; expected one of {list(STAGE_ORDER)}")
    config = load_config(f"{default_config_file()}:stage={name},size={size}", overrides)
    config.model.remat = remat
    config.data.batch_size = num_devices
    config.train.grad_accum_steps = 1
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 1, num_devices, 1
    if crop and config.stage.fully_convolutional:
        height, width = crop
        stage, factor = config.stage, config.stage.spatial_factor
        if height > stage.height or width > stage.width or height % factor or width % factor:
            raise ValueError(
                f"crop {height}x{width} must fit in stage {name}'s {stage.height}x{stage.width} "
                f"and be a multiple of its spatial factor {factor}"
            )
        config.data.crop_height, config.data.crop_width = height, width
    return config


def param_fields(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The stage's parameter count (abstract) against the paper's."""
    params = count_params(config.model)
    paper = PAPER_PARAMS[config.stage.name]
    return {"params": params, "paper_params": paper, "params_ratio": params / paper}


def shape_fields(config: ml_collections.ConfigDict) -> dict[str, Any]:
    frames, height, width = measure.example_shape(config)
    stage = config.stage
    return {
        "stage": stage.name,
        "resolution": f"{stage.frames}x{stage.height}x{stage.width}",
        "trained_on": f"{frames}x{height}x{width}",
        "cropped": (height, width) != (stage.height, stage.width),
        "remat": config.model.remat,
    }


def activation_bytes_per_example(
    config: ml_collections.ConfigDict, train_step: measure.TrainStep
) -> int:
    """Bytes of the activations one example keeps for the backward pass of the loss (under the
    config's rematerialisation): the gradient's residuals traced at two global batch sizes,
    differenced (parameters saved for the backward pass do not grow with the batch)."""
    model = VideoUNet.from_config(config.model)
    objective = StageObjective.from_config(config)
    shards = math.prod(train_step.mesh.shape.values())

    def residuals(params: Any, batch: dict, key: jax.Array) -> Any:
        return jax.vjp(lambda p: stage_loss(model.apply, p, batch, key, objective), params)[1]

    def residual_bytes(batch_size: int) -> int:
        host = measure.synthetic_train_batch(config, batch_size)
        with mesh_context(train_step.mesh, train_step.rules):
            shapes = jax.eval_shape(
                residuals,
                train_step.abstract.params,
                measure.abstract_batch(host, train_step.batch_sharding),
                jax.random.PRNGKey(0),
            )
        return sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(shapes))

    return (residual_bytes(2 * shards) - residual_bytes(shards)) // shards


def device_bytes(device: jax.Device) -> float:
    """Memory an array may take on ``device`` (its allocator's limit; an H200's without one)."""
    stats = device.memory_stats() or {}
    return float(stats.get("bytes_limit", DEFAULT_DEVICE_BYTES))


def memory_estimate(
    config: ml_collections.ConfigDict, train_step: measure.TrainStep, limit_bytes: float
) -> dict[str, Any]:
    """Per-device estimate of one train step: train state and gradients as sharded, plus the
    saved activations of the device's one example; and what would fit a device of
    ``limit_bytes``."""
    devices = math.prod(train_step.mesh.shape.values())
    state = measure.bytes_per_device(train_step.abstract)
    grads = measure.bytes_per_device(train_step.abstract.params)
    activations = activation_bytes_per_example(config, train_step)
    params = count_params(config.model)
    sharded = (STATE_BYTES_PER_PARAM + GRAD_BYTES_PER_PARAM) * params
    fields = {
        "state_gib_per_device": state / GIB,
        "grads_gib_per_device": grads / GIB,
        "activations_gib": activations / GIB,
        "estimate_gib": (state + grads + activations) / GIB,
        "device_gib": limit_bytes / GIB,
    }
    frames, height, width = measure.example_shape(config)
    full_pixels = config.stage.height * config.stage.width
    if full_pixels != height * width:
        # Fully convolutional: activations grow with the pixels of a frame.
        fields["full_resolution_activations_gib"] = activations * full_pixels / (height * width)
        fields["full_resolution_activations_gib"] /= GIB
    fields["needs"] = what_fits(sharded, activations, limit_bytes, devices, config.model.remat)
    return fields


def what_fits(
    sharded_bytes: float, activation_bytes: float, limit_bytes: float, devices: int, remat: str
) -> str:
    """One line on the devices a step needs: ``sharded_bytes`` split over them by FSDP, plus
    ``activation_bytes`` on each (one example per device)."""
    free = limit_bytes - activation_bytes
    if free <= 0:
        return (
            f"one example's activations ({activation_bytes / GIB:.1f} GiB with remat={remat}) "
            f"exceed a device's {limit_bytes / GIB:.1f} GiB: train on spatial crops (fully "
            "convolutional stages) or split frames over devices"
        )
    need = max(1, math.ceil(sharded_bytes / free))
    where = "as many as here" if need <= devices else f"more than the {devices} here"
    return (
        f"{need} device(s) of {limit_bytes / GIB:.1f} GiB with FSDP and remat={remat} "
        f"({where}): {sharded_bytes / GIB:.1f} GiB of state and gradients split over them, "
        f"{activation_bytes / GIB:.2f} GiB of activations on each"
    )


def failed_allocation_bytes(error: str) -> float | None:
    """The size of the allocation an out-of-memory error says failed, or None."""
    match = FAILED_ALLOCATION.search(error)
    return float(match.group(1)) * UNIT_BYTES[match.group(2)] if match else None


def measured_needs(
    failed_bytes: float, held_bytes: float, limit_bytes: float, fully_convolutional: bool
) -> str:
    """One line on what a step that ran out of memory asked for: the allocation that failed
    on top of what the device held (the train state and the batch), against its limit."""
    total = failed_bytes + held_bytes
    smaller = "train on smaller crops" if fully_convolutional else "split frames over devices"
    within = (
        " (within it: the allocator found no free block that large)" if total <= limit_bytes else ""
    )
    return (
        f"{total / GIB:.1f} GiB a device, measured: the step asked for {failed_bytes / GIB:.2f} "
        f"GiB beside the {held_bytes / GIB:.2f} GiB held, against a limit of "
        f"{limit_bytes / GIB:.1f} GiB{within}; to fit: {smaller}"
    )


def step_record(name: str, **options: Any) -> dict:
    """One real train step of the stage on every device here (FSDP, batch 1 per device): its
    time and the largest per-device peak memory, or the error and an estimate of what fits.
    ``options``: those of :func:`stage_config` but ``num_devices``."""
    devices = jax.devices()
    config = stage_config(name, num_devices=len(devices), **options)
    record = {"bench": "paper_memory", **shape_fields(config), **param_fields(config)}
    record.update(devices=len(devices), batch_per_device=1, **measure.device_description())
    try:
        start = time.perf_counter()
        progress(name, f"{record['params']:,} parameters: initialising the state")
        bench = TrainBench(config, devices)
        progress(name, f"state ready at {time.perf_counter() - start:.0f} s: first step")
        measure.block(bench.step())
        first = time.perf_counter() - start
        progress(name, f"first step done at {first:.0f} s: timing one more")
        seconds = measure.median_step_seconds(bench.step, warmup=0, iters=1)
        record.update(fits=True, first_step_s=first, step_s=seconds)
        record["peak_gib"] = measure.max_peak_memory_gib()
        del bench
    except Exception as err:  # out of memory shows up as an XLA runtime error
        record.update(fits=False, error=measure.error_line(err))
        record["peak_gib"] = measure.max_peak_memory_gib()
        failed, held = failed_allocation_bytes(str(err)), (measure.max_in_use_gib() or 0.0) * GIB
        train_step = measure.TrainStep.build(config, make_mesh(config.mesh, devices))
        limit = device_bytes(devices[0])
        record.update(memory_estimate(config, train_step, limit))
        if failed is not None:
            record.update(failed_allocation_gib=failed / GIB, held_gib=held / GIB)
            record["needs"] = measured_needs(failed, held, limit, config.stage.fully_convolutional)
    return record


def dry_run_record(name: str, *, num_devices: int = 1, **options: Any) -> dict:
    """The stage's train step compiled for ``num_devices`` CPU devices from shapes alone:
    XLA's per-device memory analysis and FLOPs, beside the estimate. ``options``: those of
    :func:`stage_config`."""
    devices = jax.devices("cpu")[:num_devices]
    config = stage_config(name, num_devices=len(devices), **options)
    record = {"bench": "paper_memory_dry_run", **shape_fields(config), **param_fields(config)}
    train_step = measure.TrainStep.build(config, make_mesh(config.mesh, devices))
    host = measure.synthetic_train_batch(config, config.data.batch_size)
    compiled = train_step.compile_abstract(host)
    memory = measure.compiled_memory_bytes(compiled)
    analysis = compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
    record.update(
        devices=len(devices),
        batch_per_device=1,
        compiled_gib=memory["total_bytes"] / GIB,
        compiled_argument_bytes=memory["argument_bytes"],
        compiled_temp_gib=memory["temp_bytes"] / GIB,
        batch_bytes_per_device=measure.bytes_per_device(
            measure.abstract_batch(host, train_step.batch_sharding)
        ),
        state_bytes_per_device=measure.bytes_per_device(train_step.abstract),
        step_tflop=float(analysis["flops"]) / 1e12,
    )
    record.update(memory_estimate(config, train_step, DEFAULT_DEVICE_BYTES))
    return record


def run_isolated(
    stages: Sequence[str], options: list[str], stage_timeout_s: float, budget_s: float = 0.0
) -> list[dict[str, Any]]:
    """Each stage in a fresh ``imagen-video bench paper-memory --in-process`` process; their
    JSON lines are passed through and returned. A stage that dies or runs out of time gets a
    record saying so; with ``budget_s`` > 0, stages that would start after that many seconds
    are skipped."""
    env = dict(os.environ)
    env.setdefault(MEM_FRACTION_ENV, "0.95")  # the step, not a preallocated pool, may use it
    deadline = time.monotonic() + budget_s if budget_s > 0 else math.inf
    records = []
    for name in stages:
        timeout_s = min(stage_timeout_s, deadline - time.monotonic())
        if timeout_s <= 0:
            error = f"skipped: the {budget_s:.0f} s budget was spent"
            records.append(measure.emit(_failure(name, error)))
            continue
        command = [sys.executable, "-m", "imagen_video_jax.cli", "bench", "paper-memory"]
        command += ["--stages", name, "--in-process", *options]
        found = []
        try:
            proc = subprocess.run(
                command, env=env, capture_output=True, text=True, timeout=timeout_s
            )
            failure = f"exit code {proc.returncode}" if proc.returncode else "no record"
            output, errors = proc.stdout, proc.stderr
        except subprocess.TimeoutExpired as err:
            failure = f"timed out after {timeout_s:.0f} s"
            output, errors = (_text(err.stdout), _text(err.stderr))
        sys.stderr.write(errors)
        last = last_progress(errors)
        failure += f" (last: {last})" if last else ""
        for line in output.splitlines():
            if line.startswith("{"):
                found.append(json.loads(line))
                print(line, flush=True)
        records += found or [measure.emit(_failure(name, failure))]
    return records


def _text(stream: bytes | str | None) -> str:
    """A timed-out process's captured output as text."""
    return stream.decode(errors="replace") if isinstance(stream, bytes) else stream or ""


def _failure(stage: str, error: str) -> dict[str, Any]:
    return {"bench": "paper_memory", "stage": stage, "fits": False, "error": error}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--stages", default=",".join(STAGE_ORDER), help="comma-separated stages (default: all)"
    )
    parser.add_argument("--remat", default="block", choices=REMAT_POLICIES)
    parser.add_argument(
        "--crop",
        default="",
        help="HEIGHTxWIDTH crop for fully convolutional stages (default: the config's)",
    )
    parser.add_argument("--size", default="paper", help="cascade size of configs/imagen_video.py")
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        help="config override of every stage, e.g. model.attention_impl=cudnn (repeatable)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="compile for the CPU devices from shapes alone instead of running a step",
    )
    parser.add_argument(
        "--devices", type=int, default=1, help="--dry-run: CPU devices of the FSDP mesh"
    )
    parser.add_argument(
        "--stage-timeout", type=float, default=600, help="seconds each stage's process may take"
    )
    parser.add_argument(
        "--time-budget",
        type=float,
        default=0,
        help="seconds for all stages; later stages are skipped (default 0: no limit)",
    )
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="run the stages in this process (default: one fresh process per stage)",
    )


def main(args: argparse.Namespace) -> int:
    stages = [s for s in args.stages.split(",") if s]
    unknown = sorted(set(stages) - set(STAGE_ORDER))
    if unknown:
        raise ValueError(f"unknown stages {unknown}; expected some of {list(STAGE_ORDER)}")
    options = {"crop": parse_crop(args.crop), "remat": args.remat, "size": args.size}
    options["overrides"] = args.override
    if args.dry_run:
        records = [
            measure.emit(dry_run_record(name, num_devices=args.devices, **options))
            for name in stages
        ]
    elif args.in_process:
        records = [measure.emit(step_record(name, **options)) for name in stages]
    else:
        passed = ["--remat", args.remat, "--size", args.size, "--crop", args.crop]
        passed += [f"--override={override}" for override in args.override]
        records = run_isolated(stages, passed, args.stage_timeout, args.time_budget)
    columns = ("bench", "stage", "params", "params_ratio", "trained_on", "fits", "peak_gib")
    columns += ("compiled_gib", "estimate_gib", "step_s", "needs", "error")
    measure.print_table(records, columns)
    return 0
