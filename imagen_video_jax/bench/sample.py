"""bench-sample (BENCHMARKS.md): sampling time of the seven-stage mini cascade.

Random weights (``Cascade.from_random_init``; timing does not depend on them) and random text
embeddings of the stages' length and width stand in for trained stages and their text encoder.
Two variants, each at batch 1 and 8:
  undistilled  every stage as its config says (sampler, step count, classifier-free guidance as
               one batched call of the text and null-text branches);
  distilled    students that take w as a model input (``model.guidance_input``), the stochastic
               N-step sampler, 8 steps a stage: one model call a step.
Per stage: wall time, time a step, and the step's compute floor: FLOPs of its model calls
(XLA cost analysis of the same call compiled for the CPU: a GPU compile's analysis leaves out
cuDNN convolutions) over a bf16 matmul peak measured in the same process. In all: the sum of
the stages, each run alone on the previous stage's output (the compiled loops ``Cascade.sample``
runs in turn; intermediate videos make a host round trip of a few milliseconds). A first,
untimed ``Cascade.sample`` pass compiles every loop once; the timed pass, on new prompts and
seeds, must trace and compile nothing (the cascade's trace counts and JAX's compile events).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import inspect
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from imagen_video_jax.bench import measure
from imagen_video_jax.cascade import Cascade, CascadeStage, SamplingSettings
from imagen_video_jax.cascade.sampler import guidance_mode
from imagen_video_jax.cascade.specs import apply_overrides
from imagen_video_jax.diffusion.samplers import SAMPLERS
from imagen_video_jax.models import example_inputs

PAPER_SPEEDUP = 17.7  # Imagen Video, Table 1: 618 s undistilled vs 35 s distilled per sample
FLOOR_TARGET = 1.5  # each denoising step within 1.5x of its compute floor


@dataclasses.dataclass(frozen=True)
class Variant:
    """How a cascade variant samples: distilled students (w a model input) or not, and
    sampler and step count overrides (None keeps each stage's own)."""

    distilled: bool = False
    sampler: str | None = None
    num_steps: int | None = None

    @property
    def overrides(self) -> tuple[str, ...]:
        return ("model.guidance_input=True",) if self.distilled else ()

    def sample_options(self) -> dict[str, Any]:
        return {"sampler": self.sampler, "num_steps": self.num_steps}

    def settings(self, stage: CascadeStage) -> SamplingSettings:
        """How ``stage`` samples in this variant."""
        return apply_overrides(stage.settings, **self.sample_options())


VARIANTS = {
    "undistilled": Variant(),
    "distilled": Variant(distilled=True, sampler="stochastic", num_steps=8),
}


class RandomText:
    """A stand-in text encoder: random token embeddings [B, length, dim], the first half of
    the tokens valid (sampling cost does not depend on the text)."""

    name = "random-text"

    def __init__(self, length: int, dim: int, seed: int = 0):
        self.length, self.dim = length, dim
        self._rng = np.random.default_rng(seed)

    def tokenize(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        mask = np.zeros((len(prompts), self.length), bool)
        mask[:, : max(1, self.length // 2)] = True
        return np.zeros(mask.shape, np.int32), mask

    def encode(self, prompts: Sequence[str]) -> tuple[jax.Array, jax.Array]:
        _, mask = self.tokenize(prompts)
        text = self._rng.standard_normal((*mask.shape, self.dim), dtype=np.float32)
        return jnp.asarray(text * mask[..., None]), jnp.asarray(mask)


def random_cascade(
    variant: Variant, size: str = "mini", stop_after: str | None = None, overrides=()
) -> Cascade:
    """The random-weight cascade of ``size`` for one variant, with :class:`RandomText`."""
    cascade = Cascade.from_random_init(
        size, stop_after=stop_after, overrides=[*overrides, *variant.overrides]
    )
    first = cascade.stages_until()[0].config
    cascade = Cascade(
        cascade.stages_until(),
        RandomText(first["text_encoder"]["max_length"], first["model"]["text_dim"]),
    )
    wrong = [s.name for s in cascade.stages.values() if s.distilled != variant.distilled]
    if wrong:
        kind = "distilled" if variant.distilled else "undistilled"
        raise ValueError(f"stages {wrong} of the {kind} cascade are not {kind}")
    return cascade


def model_evaluations(sampler: str, num_steps: int) -> int:
    """Model evaluations of one sampling loop: one a step, plus the predictor-corrector's
    Langevin corrections (its default count) after every step but the last."""
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {sorted(SAMPLERS)}, got {sampler!r}")
    corrections = inspect.signature(SAMPLERS[sampler]).parameters.get("num_corrector")
    per_update = 1 + (corrections.default if corrections is not None else 0)
    return per_update * (num_steps - 1) + 1


def guidance_branches(stage: CascadeStage, settings: SamplingSettings) -> int:
    """Examples each model call evaluates per sample: 2 with classifier-free guidance (text and
    null text, one batched call), else 1 (distilled students take w as an input)."""
    return 2 if guidance_mode(stage.config, settings.guidance_weights()) == "cfg" else 1


def model_call_cost(config: Any, spec: Any, model: Any, params: Any) -> dict[str, float]:
    """``{"flops", "bytes"}`` of one model call on one example at the stage's sampling shapes
    (``params`` may be abstract), from the cost analysis of the call compiled for the CPU
    (model FLOPs are linear in the batch)."""
    length = int(config["text_encoder"]["max_length"])

    def inputs() -> dict[str, jax.Array]:
        made = example_inputs(
            config["model"],
            frames=spec.frames,
            height=spec.height,
            width=spec.width,
            text_length=length,
        )
        if spec.input_shape is not None:
            made["cond"] = jnp.zeros((1, *spec.input_shape, made["cond"].shape[-1]))
        return made

    abstract_inputs = jax.eval_shape(inputs)
    abstract_params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    return measure.cpu_cost_analysis(
        lambda params, kw: model.apply({"params": params}, **kw), abstract_params, abstract_inputs
    )


def model_call_flops(stage: CascadeStage) -> float:
    """FLOPs of one model call of a loaded cascade stage on one example."""
    return model_call_cost(stage.config, stage.spec, stage.sampler.model, stage.params)["flops"]


def stage_floor_seconds(
    call_flops: float, batch: int, branches: int, evaluations: int, peak_tflops: float
) -> float:
    """Compute floor of a stage's sampling loop: every model call's FLOPs at the matmul peak."""
    return measure.floor_seconds(call_flops * batch * branches * evaluations, peak_tflops)


def _prompts(batch: int, offset: int) -> list[str]:
    return [f"benchmark prompt {offset + i}" for i in range(batch)]


def time_stages(cascade: Cascade, prompts: list[str], seed: int, variant: Variant) -> dict:
    """Wall seconds of each stage run alone (``sample_stage``) on the previous stage's output,
    which goes back to the device as ``Cascade.sample`` hands it over (the same compiled loop
    serves both), and comes to the host as uint8."""
    seconds, video = {}, None
    device = jax.devices()[0]
    options = variant.sample_options()
    for name in cascade.stage_names:
        start = time.perf_counter()
        cond = None if video is None else jax.device_put(video, device)
        video = cascade.sample_stage(name, prompts, cond=cond, seed=seed, **options)
        seconds[name] = time.perf_counter() - start
    return seconds


def first_pass_seconds(cascade: Cascade, prompts: list[str], variant: Variant) -> float:
    """Wall seconds of one ``Cascade.sample`` call that compiles every stage's loop (each
    stage compiles while the accelerator still runs the stage before)."""
    start = time.perf_counter()
    cascade.sample(prompts, seed=0, progress=False, **variant.sample_options())
    return time.perf_counter() - start


def _check_no_recompile(cascade: Cascade, traces: dict[str, int], compiled: list[str]) -> None:
    if cascade.trace_counts != traces or compiled:
        raise RuntimeError(
            "new prompts and seeds compiled again: sampling-loop trace counts "
            f"{traces} after the first pass, {cascade.trace_counts} after the timed passes; "
            f"programs compiled in the timed passes: {compiled}"
        )


def bench_variant(
    name: str,
    cascade: Cascade,
    batch: int,
    flops: dict[str, concurrent.futures.Future],
    peak: float,
    info: dict,
) -> list[dict[str, Any]]:
    """Records of one variant at one batch: per stage, then in all. A first pass compiles;
    the timed pass, on new prompts and seeds, must compile nothing."""
    variant = VARIANTS[name]
    first = first_pass_seconds(cascade, _prompts(batch, 0), variant)
    traces = cascade.trace_counts
    with measure.CompileCounter() as compiles:
        seconds = time_stages(cascade, _prompts(batch, batch), 1000, variant)
    _check_no_recompile(cascade, traces, compiles.names)
    records = []
    for stage in cascade.stages.values():
        settings = variant.settings(stage)
        evaluations = model_evaluations(settings.sampler, settings.num_steps)
        branches = guidance_branches(stage, settings)
        call_flops = flops[stage.name].result()
        floor = stage_floor_seconds(call_flops, batch, branches, evaluations, peak)
        spec = stage.spec
        record = {
            "bench": "sample_stage",
            "variant": name,
            "batch": batch,
            "stage": stage.name,
            "shape": f"{spec.frames}x{spec.height}x{spec.width}",
            "sampler": settings.sampler,
            "num_steps": settings.num_steps,
            "guidance": "cfg" if branches == 2 else ("input" if stage.distilled else "none"),
            "model_calls_per_step": evaluations * branches / settings.num_steps,
            "call_gflop": call_flops / 1e9,
            "stage_s": seconds[stage.name],
            "step_ms": seconds[stage.name] / settings.num_steps * 1e3,
            "floor_ms": floor / settings.num_steps * 1e3,
            "floor_ratio": seconds[stage.name] / floor,
            "within_target": seconds[stage.name] / floor <= FLOOR_TARGET,
            **info,
        }
        records.append(measure.emit(record))
    summary = {
        "bench": "sample",
        "variant": name,
        "batch": batch,
        "total_s": sum(seconds.values()),
        "first_pass_s": first,
        "trace_counts": traces,
        "peak_gib": measure.max_peak_memory_gib(),
        **info,
    }
    records.append(measure.emit(summary))
    return records


def run(
    *,
    size: str = "mini",
    batches: Sequence[int] = (1, 8),
    variants: Sequence[str] = tuple(VARIANTS),
    stop_after: str | None = None,
    overrides: Sequence[str] = (),
    peak_tflops: float | None = None,
) -> list[dict[str, Any]]:
    """The whole benchmark; returns the records it printed. ``peak_tflops``: the floor's
    denominator (default: a bf16 matmul peak measured here)."""
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise ValueError(f"unknown variants {unknown}; expected some of {list(VARIANTS)}")
    info = measure.device_description()
    peak = peak_tflops or measure.matmul_peak_tflops()
    records = [measure.emit({"bench": "matmul_peak", "tflops": peak, **info})]
    cascades = {
        name: random_cascade(VARIANTS[name], size, stop_after, overrides) for name in variants
    }
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        # The CPU compiles that count FLOPs overlap the accelerator timing.
        flops = {
            name: {s.name: pool.submit(model_call_flops, s) for s in cascade.stages.values()}
            for name, cascade in cascades.items()
        }
        for batch in batches:
            totals = {}
            for name, cascade in cascades.items():
                try:
                    variant_records = bench_variant(name, cascade, batch, flops[name], peak, info)
                except Exception as err:
                    if not measure.out_of_memory(err):
                        raise
                    # Recorded, and the other variants and batches still run.
                    records.append(measure.emit(_out_of_memory_record(name, batch, err, info)))
                    continue
                records += variant_records
                totals[name] = variant_records[-1]["total_s"]
            if set(totals) == set(VARIANTS):
                records.append(measure.emit(speedup_record(batch, totals, info)))
    return records


def _out_of_memory_record(variant: str, batch: int, err: BaseException, info: dict) -> dict:
    return {
        "bench": "sample",
        "variant": variant,
        "batch": batch,
        "fits": False,
        "error": measure.error_line(err),
        **info,
    }


def speedup_record(batch: int, totals: dict[str, float], info: dict) -> dict[str, Any]:
    slow, fast = totals["undistilled"], totals["distilled"]
    return {
        "bench": "sample_speedup",
        "batch": batch,
        "undistilled_s": slow,
        "distilled_s": fast,
        "speedup": slow / fast,
        "target": PAPER_SPEEDUP,
        **info,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", default="mini", help="cascade size of configs/imagen_video.py")
    parser.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help="comma-separated: undistilled, distilled"
    )
    parser.add_argument("--stop-after", default=None, help="last stage to run (default: all)")
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        help="config override for every stage, e.g. model.attention_impl=cudnn (repeatable)",
    )


def main(args: argparse.Namespace) -> int:
    records = run(
        size=args.size,
        batches=tuple(int(b) for b in args.batches.split(",") if b),
        variants=tuple(v for v in args.variants.split(",") if v),
        stop_after=args.stop_after,
        overrides=args.override,
    )
    columns = ("bench", "variant", "batch", "stage", "sampler", "num_steps", "stage_s")
    columns += ("step_ms", "floor_ms", "floor_ratio", "total_s", "speedup")
    measure.print_table(records, columns)
    return 0
