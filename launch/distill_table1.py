"""Imagen Video's Table 1 on the mini cascade: the cascade as trained vs every stage distilled.

    python launch/distill_table1.py --cascade imagen_video_jax/assets/demo_cascade \\
        --text-cache workdir/mini_cascade/captions.npz --workdir runs/distill_table1

The original cascade samples as its stage configs say (the mini configs: base 256 DDIM steps,
every SR stage 128; classifier-free guidance as one batched call of the text and null-text
branches). The distilled one: every stage distilled by ``imagen-video distill`` (guided, then
halving rounds) down to ``--final-steps`` (8), sampled with the stochastic N-step sampler, w a
model input (one model call a step).

1. Distillation: one ``imagen-video distill`` process per stage, all at once on the one GPU
   (each takes device memory as it needs it; the small stages do not fill a GPU alone), logs
   in ``<workdir>/students/<stage>.log``. Text comes from ``--text-cache`` (``imagen-video
   embed``: the captions of the cascade's training data and the evaluation prompts), so no
   text encoder weights are needed. A run started again resumes (finished stages are skipped).
   A student that runs out of device memory beside the others and the original cascade's
   evaluation (ssr3 did, on an H200) is distilled again alone once the rest have stopped.
2. Quality: ``eval.cascade_eval.evaluate_cascade`` (caption accuracy, FVD, KVD of every stage's
   output on held-out prompts), the same prompts and seeds for both cascades; the original
   cascade's while the students train. Every sampling loop is compiled first, at batch 1 and
   at the evaluation batch, the stages in parallel threads. The distilled cascade is loaded
   from ``<workdir>/distilled_cascade``: links to the students (stages left out of
   ``--stages`` stay undistilled there, a mixed cascade). ``--original-from FILE`` takes the
   original cascade's figures from an earlier run's ``table1.jsonl`` instead (refused unless
   device kind, JAX and settings match), so a run that changes only the students measures only
   them: the original's compiling, scoring and timing were most of the third run's 18 minutes.
3. Speed, with the GPU to itself: wall seconds from the prompts to the last stage's uint8
   videos (every stage's output passed on through the host, as the evaluation does), per stage
   and end to end, at batch 1 and at the evaluation batch, compiled, median of ``--repeats``
   (3: a single run read the small stages up to twice as slow at batch 1; docs/RESULTS.md);
   model calls and FLOPs a sample (XLA cost analysis of each stage's call compiled for the CPU,
   times the calls, classifier-free guidance's second branch counted).

Every record is printed as a JSON line and written to ``<workdir>/table1.jsonl``; the tables
(per stage, and end to end beside the paper's row) go to ``<workdir>/table1.md`` and stdout.
The default schedule is 400 steps a round at batch 8. ssr3 is distilled on the whole 512 x 512
frames it samples, at batch 4 (``STAGE_DEFAULTS``), every other stage on its training crops:
on 256 x 256 crops ssr3's student lost 10-20 points of caption accuracy, on 128 x 128 crops 45
(likely: GroupNorm statistics over a crop are not a whole frame's); on whole frames the
cascade met Table 1's targets (docs/RESULTS.md, seventh and eighth runs). On one H200 the six
smaller stages distil in 6-11 minutes together, ssr3 in about 21 (2.0 steps/s once compiled),
and the evaluation and timing of both cascades take about 10 minutes after it. Shorter rounds
lose quality (150 steps a round cost ssr2 15 points of caption accuracy, 400 steps 10);
``--stage-steps ssr3=1000`` gives the stages named longer rounds. ``--stage-set
ssr3:data.crop_height=256 --stage-set ssr3:data.crop_width=256 --stage-set
ssr3:data.batch_size=8`` distils ssr3 on its training crops again. ``--student ssr3=DIR`` puts
a student distilled earlier (its compact export) in the distilled cascade instead of
distilling that stage again. Leave XLA's autotuning on: without it
(``--xla_gpu_autotune_level=0``) the students trained two orders of magnitude slower.
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # the students train beside us

import argparse
import concurrent.futures
import json
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CASCADE = REPO / "imagen_video_jax" / "assets" / "demo_cascade"
# Caption embeddings looked for when --text-cache is not given: those of the evaluation script
# and of the mini cascade's training (both hold every one-digit caption).
DEFAULT_TEXT_CACHES = [
    REPO / "workdir" / "eval_captions.npz",
    REPO / "workdir" / "mini_cascade" / "captions.npz",
]
PAPER = {  # Imagen Video, Table 1
    "original": {"steps": "256 + 128", "clip_score": 25.19, "seconds_per_sample": 618.0},
    "distilled": {"steps": "8 + 8", "clip_score": 25.03, "seconds_per_sample": 35.0},
    "speedup": 17.7,
    "flops_ratio": 36.0,
}
# Acceptance of the distilled cascade (the project's issue): speed and quality kept.
TARGET_SPEEDUP = 17.7
MAX_CAPTION_DROP = 0.05
MAX_FVD_RATIO = 1.25
# Grain workers of each student's data: the 512 x 512 stage renders the most.
WORKERS = {"ssr3": 8}
DEFAULT_WORKERS = 2
# Settings of one stage's distillation before --set and --stage-set: ssr3 learns on the whole
# 512 x 512 frames it samples, not on its training crops (docs/RESULTS.md, seventh and eighth
# runs), at batch 4 (twice the pixels of batch 8 at 256 x 256).
STAGE_DEFAULTS = {"ssr3": ["data.crop_height=0", "data.crop_width=0", "data.batch_size=4"]}


def log(message: str) -> None:
    print(f"[distill_table1] {message}", file=sys.stderr, flush=True)


def emit(records: list[dict], record: dict[str, Any]) -> dict[str, Any]:
    print(json.dumps(record, sort_keys=True), flush=True)
    records.append(record)
    return record


# ----------------------------------------------------------------------------- distillation


def distill_command(args: argparse.Namespace, stage: str) -> list[str]:
    """The `imagen-video distill` command of one stage."""
    steps = args.stage_steps.get(stage, args.steps_per_round)
    settings = {
        "train.text_cache": args.text_cache,
        "distill.final_steps": args.final_steps,
        "distill.guided_steps": steps,
        "distill.steps_per_round": steps,
        "distill.learning_rate": args.learning_rate,
        "distill.warmup_steps": max(1, steps // 10),
        "distill.ema_decay": args.ema_decay,
        "data.batch_size": args.batch,
        "data.num_workers": WORKERS.get(stage, DEFAULT_WORKERS),
        "train.log_every": max(1, steps // 5),
        "train.checkpoint_every": steps,
    }
    sets = [f"{key}={value}" for key, value in settings.items()] + STAGE_DEFAULTS.get(stage, [])
    sets += list(args.set)
    sets += [override for name, override in args.stage_set if name == stage]
    return [
        sys.executable, "-m", "imagen_video_jax.cli", "distill",
        "--config", f"configs/imagen_video.py:stage={stage},size=mini",
        "--teacher", str(args.cascade), "--workdir", str(args.workdir / "students"),
        "--no-progress", *(part for value in sets for part in ("--set", value)),
    ]  # fmt: skip


class StudentOutOfMemory(RuntimeError):
    """A distillation process that ran out of device memory (it can be resumed alone)."""


def distill_stage(args: argparse.Namespace, stage: str) -> float:
    """Run one stage's distillation process, its log appended to
    ``<workdir>/students/<stage>.log``; returns its wall seconds."""
    from imagen_video_jax.bench.measure import out_of_memory

    log_file = args.workdir / "students" / f"{stage}.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    command = distill_command(args, stage)
    log(f"distilling {stage}: {shlex.join(command)}")
    env = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    started = time.perf_counter()
    with open(log_file, "a") as out:
        offset = out.tell()
        code = subprocess.run(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - started
    if code.returncode != 0:
        with open(log_file) as logged:
            logged.seek(offset)
            failure = StudentOutOfMemory if out_of_memory(logged.read()) else RuntimeError
        raise failure(f"distilling {stage} failed (exit {code.returncode}): see {log_file}")
    log(f"{stage} distilled in {seconds:.0f} s")
    return seconds


def finish_students(
    args: argparse.Namespace, running: dict[str, concurrent.futures.Future]
) -> dict[str, float]:
    """Wait for every student; one that ran out of device memory beside the others (and the
    original cascade's evaluation) is distilled again once all have stopped, alone, resuming
    from its last checkpoint. Returns each stage's wall seconds (of its last run)."""
    seconds, again = {}, []
    for stage, future in running.items():
        try:
            seconds[stage] = future.result()
        except StudentOutOfMemory as error:
            log(f"{error}; distilling {stage} again, alone")
            again.append(stage)
    for stage in again:
        seconds[stage] = distill_stage(args, stage)
    return seconds


def distilled_folder(args: argparse.Namespace, names: Sequence[str], stages: Sequence[str]) -> Path:
    """A cascade folder of links: the students of ``stages``, the teachers of the others."""
    folder = args.workdir / "distilled_cascade"
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        link = folder / name
        if name in args.student:
            target = args.student[name]
        elif name in stages:
            target = args.workdir / "students" / name
        else:
            target = args.cascade / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target.resolve(), target_is_directory=True)
    return folder


# ----------------------------------------------------------------------------- sampling


def run_stages(cascade: Any, prompts: list[str], seed: int) -> dict[str, float]:
    """Sample ``prompts`` through the cascade, stage by stage: each stage's uint8 output comes
    to the host and goes on to the next (as the evaluation samples, so one executable a
    stage); returns every stage's wall seconds."""
    video, seconds = None, {}
    for name in cascade.stage_names:
        started = time.perf_counter()
        video = cascade.sample_stage(name, prompts, cond=video, seed=seed)
        seconds[name] = time.perf_counter() - started
    return seconds


def compile_loops(cascade: Any, batches: Sequence[int]) -> float:
    """Run every stage once at each batch size, the stages in parallel threads, so that each
    compiles its sampling loop; returns the wall seconds."""
    from imagen_video_jax.eval.cascade_eval import held_out_prompts

    def run(stage: Any) -> None:
        for batch in batches:
            cond = None
            if stage.spec.input_shape is not None:
                cond = np.zeros((batch, *stage.spec.input_shape, 3), np.uint8)
            cascade.sample_stage(stage.name, held_out_prompts(batch), cond=cond, seed=0)

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(len(cascade.stages)) as pool:
        for future in [pool.submit(run, stage) for stage in cascade.stages.values()]:
            future.result()
    return time.perf_counter() - started


def speed(cascade: Any, batches: Sequence[int], repeats: int) -> dict[int, dict[str, float]]:
    """Per batch size: wall seconds per sample of each stage and end to end ('total'), from the
    prompts to the last stage's uint8 videos (compiled), median of ``repeats`` runs."""
    from imagen_video_jax.eval.cascade_eval import held_out_prompts

    out = {}
    for batch in batches:
        runs = [
            run_stages(cascade, held_out_prompts(batch), seed=1000 * (repeat + 1))
            for repeat in range(repeats)
        ]
        per_stage = {name: float(np.median([r[name] for r in runs])) / batch for name in runs[0]}
        total = float(np.median([sum(r.values()) for r in runs])) / batch
        out[batch] = {**per_stage, "total": total}
    return out


def stage_costs(cascade: Any, pool: concurrent.futures.Executor) -> dict[str, dict[str, Any]]:
    """Per stage: sampler, steps, guidance, model calls a sample and (a future of) FLOPs a call."""
    from imagen_video_jax.bench.sample import (
        guidance_branches,
        model_call_flops,
        model_evaluations,
    )

    costs = {}
    for stage in cascade.stages.values():
        settings = stage.settings
        branches = guidance_branches(stage, settings)
        costs[stage.name] = {
            "sampler": settings.sampler,
            "num_steps": settings.num_steps,
            "guidance": "cfg" if branches == 2 else ("input" if stage.distilled else "none"),
            "model_calls": model_evaluations(settings.sampler, settings.num_steps) * branches,
            "flops": pool.submit(model_call_flops, stage),
        }
    return costs


# ----------------------------------------------------------------------------- the table


def _fmt(value: Any, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def stage_table(rows: Sequence[dict]) -> str:
    lines = [
        "| stage | shape | steps | calls / sample | TFLOP / sample | caption acc | FVD | KVD "
        "| s / sample (batch, stage alone) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    by_stage: dict[str, dict[str, dict]] = {}
    for row in rows:
        by_stage.setdefault(row["stage"], {})[row["variant"]] = row
    for name, pair in by_stage.items():
        o, d = pair["original"], pair["distilled"]
        lines.append(
            f"| {name} | {o['shape']} | {o['num_steps']} {o['sampler']} -> {d['num_steps']} "
            f"{d['sampler']} | {o['model_calls']} -> {d['model_calls']} | "
            f"{_fmt(o['tflop_per_sample'])} -> {_fmt(d['tflop_per_sample'], 3)} | "
            f"{100 * o['caption_accuracy']:.1f} -> {100 * d['caption_accuracy']:.1f} % | "
            f"{_fmt(o['fvd'], 1)} -> {_fmt(d['fvd'], 1)} | {_fmt(o['kvd'], 3)} -> "
            f"{_fmt(d['kvd'], 3)} | {_fmt(o['stage_seconds_per_sample'], 3)} -> "
            f"{_fmt(d['stage_seconds_per_sample'], 3)} |"
        )
    return "\n".join(lines)


def summary_table(summary: dict[str, Any], batch: int) -> str:
    o, d = summary["original"], summary["distilled"]
    paper = PAPER
    return "\n".join(
        [
            f"| cascade | steps a stage | model calls / sample | TFLOP / sample | s / sample "
            f"(batch 1) | s / sample (batch {batch}) | caption acc (last stage) | FVD (last "
            "stage) |",
            "|---|---|---|---|---|---|---|---|",
            f"| original | {o['steps']} | {o['model_calls']} | {_fmt(o['tflop_per_sample'])} | "
            f"{_fmt(o['seconds_batch_1'], 3)} | {_fmt(o['seconds_batch_n'], 3)} | "
            f"{100 * o['caption_accuracy']:.1f} % | {_fmt(o['fvd'], 1)} |",
            f"| distilled | {d['steps']} | {d['model_calls']} | {_fmt(d['tflop_per_sample'], 3)} "
            f"| {_fmt(d['seconds_batch_1'], 3)} | {_fmt(d['seconds_batch_n'], 3)} | "
            f"{100 * d['caption_accuracy']:.1f} % | {_fmt(d['fvd'], 1)} |",
            f"| ratio | | {summary['model_calls_ratio']:.1f}x fewer | "
            f"{summary['flops_ratio']:.1f}x fewer | {summary['speedup_batch_1']:.1f}x faster | "
            f"{summary['speedup_batch_n']:.1f}x faster | "
            f"{100 * summary['caption_accuracy_change']:+.1f} points | "
            f"{_fmt(summary['fvd_ratio'])}x |",
            f"| paper, Table 1 | {paper['original']['steps']} -> {paper['distilled']['steps']} | "
            f"| {paper['flops_ratio']:.0f}x fewer | {paper['original']['seconds_per_sample']:.0f}"
            f" s -> {paper['distilled']['seconds_per_sample']:.0f} s ({paper['speedup']}x) | | "
            f"CLIP {paper['original']['clip_score']} -> {paper['distilled']['clip_score']} | |",
        ]
    )


def steps_text(costs: dict[str, dict]) -> str:
    return ", ".join(f"{name} {c['num_steps']}" for name, c in costs.items())


def variant_summary(
    costs: dict, scores: dict, timing: dict, last: str, batch: int
) -> dict[str, Any]:
    calls = sum(c["model_calls"] for c in costs.values())
    flops = sum(c["model_calls"] * c["flops"].result() for c in costs.values())
    return {
        "steps": steps_text(costs),
        "model_calls": calls,
        "tflop_per_sample": flops / 1e12,
        "seconds_batch_1": timing[1]["total"],
        "seconds_batch_n": timing[batch]["total"],
        "caption_accuracy": scores[last]["caption_accuracy"],
        "fvd": scores[last]["fvd"],
        "kvd": scores[last]["kvd"],
    }


def stage_records(variant: str, costs: dict, scores: dict, timing: dict, batch: int) -> list:
    """One record per stage: sampling, model calls and FLOPs, quality, seconds per sample."""
    records = []
    for name, cost in costs.items():
        score, flops = scores[name], cost["flops"].result()
        records.append(
            {
                "table": "distill_table1_stage",
                "variant": variant,
                "stage": name,
                "shape": "x".join(str(v) for v in score["shape"]),
                **{k: cost[k] for k in ("sampler", "num_steps", "guidance", "model_calls")},
                "gflop_per_call": flops / 1e9,
                "tflop_per_sample": cost["model_calls"] * flops / 1e12,
                **{k: score[k] for k in ("caption_accuracy", "fvd", "kvd")},
                "stage_seconds_batch_1": timing[1][name],
                "stage_seconds_per_sample": timing[batch][name],
            }
        )
    return records


def comparison(summary: dict[str, dict]) -> dict[str, Any]:
    """The distilled cascade against the original: ratios and the targets."""
    o, d = summary["original"], summary["distilled"]
    result = {
        "table": "distill_table1",
        "model_calls_ratio": o["model_calls"] / d["model_calls"],
        "flops_ratio": o["tflop_per_sample"] / d["tflop_per_sample"],
        "speedup_batch_1": o["seconds_batch_1"] / d["seconds_batch_1"],
        "speedup_batch_n": o["seconds_batch_n"] / d["seconds_batch_n"],
        "caption_accuracy_change": d["caption_accuracy"] - o["caption_accuracy"],
        "fvd_ratio": d["fvd"] / o["fvd"] if o["fvd"] else None,
    }
    result["meets_targets"] = bool(
        min(result["speedup_batch_1"], result["speedup_batch_n"]) >= TARGET_SPEEDUP
        and result["caption_accuracy_change"] >= -MAX_CAPTION_DROP
        and result["fvd_ratio"] is not None
        and result["fvd_ratio"] <= MAX_FVD_RATIO
    )
    return result


# ----------------------------------------------------------------------------- main


def stage_steps(text: str) -> dict[str, int]:
    """``--stage-steps``: ``"ssr3=1000,tsr3=600"`` -> {'ssr3': 1000, 'tsr3': 600}."""
    from imagen_video_jax.cascade.cli import per_stage_value

    steps = per_stage_value(text, int)
    if not isinstance(steps, dict):
        raise argparse.ArgumentTypeError(f"give STAGE=N pairs (e.g. ssr3=1000), not {text!r}")
    return steps


def stage_override(text: str) -> tuple[str, str]:
    """``--stage-set``: ``"ssr3:data.batch_size=4"`` -> ('ssr3', 'data.batch_size=4')."""
    from imagen_video_jax.stages import STAGE_ORDER

    stage, sep, override = text.partition(":")
    if not sep or stage not in STAGE_ORDER or "=" not in override:
        raise argparse.ArgumentTypeError(
            f"give STAGE:KEY=VALUE with STAGE one of {list(STAGE_ORDER)} "
            f"(e.g. ssr3:data.batch_size=4), not {text!r}"
        )
    return stage, override


def student_folder(text: str) -> tuple[str, Path]:
    """``--student``: ``"ssr3=runs/ff/students/ssr3"`` -> ('ssr3', that folder, resolved)."""
    from imagen_video_jax.stages import STAGE_ORDER

    stage, sep, folder = text.partition("=")
    if not sep or stage not in STAGE_ORDER or not folder:
        raise argparse.ArgumentTypeError(
            f"give STAGE=FOLDER with STAGE one of {list(STAGE_ORDER)}, not {text!r}"
        )
    path = Path(folder).resolve()
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"--student {stage}: {path} is not a folder")
    return stage, path


def rounds_text(args: argparse.Namespace) -> str:
    """The steps a round, as the table's header gives them: "400" or "400 (ssr3 1000)"."""
    overrides = ", ".join(f"{stage} {steps}" for stage, steps in args.stage_steps.items())
    return f"{args.steps_per_round}" + (f" ({overrides})" if overrides else "")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--cascade",
        type=Path,
        default=DEFAULT_CASCADE,
        help="the trained mini cascade (compact export or train workdir)",
    )
    parser.add_argument(
        "--text-cache",
        type=Path,
        default=None,
        help="caption embeddings of imagen-video embed (default: the first of "
        "workdir/eval_captions.npz and workdir/mini_cascade/captions.npz that exists)",
    )
    parser.add_argument("--workdir", type=Path, default=Path("runs/distill_table1"))
    parser.add_argument(
        "--stages", default="", help="comma-separated stages to distill (default: every stage)"
    )
    parser.add_argument("--final-steps", type=int, default=8)
    parser.add_argument(
        "--steps-per-round",
        type=int,
        default=400,
        help="optimizer steps of every round, the guided one included",
    )
    parser.add_argument(
        "--stage-steps",
        type=stage_steps,
        default={},
        metavar="STAGE=N,...",
        help="steps a round for the stages named (the others take --steps-per-round)",
    )
    parser.add_argument(
        "--batch",
        type=int,
        default=8,
        help="global batch of distillation (ssr3 takes 4 on whole frames: STAGE_DEFAULTS)",
    )
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    parser.add_argument("--ema-decay", type=float, default=0.999)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="more config overrides for every stage's distillation",
    )
    parser.add_argument(
        "--stage-set",
        type=stage_override,
        action="append",
        default=[],
        metavar="STAGE:KEY=VALUE",
        help="a config override for one stage's distillation, after --set (e.g. "
        "ssr3:data.batch_size=2 for a smaller GPU)",
    )
    parser.add_argument(
        "--student",
        type=student_folder,
        action="append",
        default=[],
        metavar="STAGE=FOLDER",
        help="a student distilled earlier (its compact export, or its folder of a distill "
        "workdir), used for STAGE instead of distilling it again",
    )
    students = parser.add_mutually_exclusive_group()
    students.add_argument(
        "--skip-distill", action="store_true", help="use the students already in <workdir>/students"
    )
    students.add_argument(
        "--distill-only",
        action="store_true",
        help="distill the stages and stop (a later run resumes them, then evaluates and times)",
    )
    parser.add_argument("--num-samples", type=int, default=40, help="evaluation prompts")
    parser.add_argument("--eval-batch", type=int, default=8)
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed runs a batch size (the median is kept)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--original-from",
        type=Path,
        help="take the original cascade's figures from an earlier run's table1.jsonl (same "
        "device kind, JAX and settings) instead of measuring them again",
    )
    args = parser.parse_args(argv)
    args.cascade = args.cascade.resolve()
    args.student = dict(args.student)
    args.workdir = args.workdir.resolve()
    candidates = [args.text_cache] if args.text_cache else DEFAULT_TEXT_CACHES
    found = [path for path in candidates if path.is_file()]
    if not found:
        parser.error(
            f"no caption embeddings at {', '.join(map(str, candidates))}: make them where the "
            "text encoder is installed with `imagen-video embed --config "
            "configs/imagen_video.py:stage=base,size=mini --set "
            "data.moving_digits.two_digit_prob=0 --out FILE` and pass --text-cache FILE"
        )
    args.text_cache = found[0].resolve()
    return args


def quality(
    args: argparse.Namespace,
    cascade: Any,
    pool: concurrent.futures.Executor,
    batches: Sequence[int],
) -> tuple[dict, dict, float]:
    """A cascade's costs, its scores, and the seconds it took to compile its loops."""
    costs = stage_costs(cascade, pool)
    compile_seconds = compile_loops(cascade, batches)
    return costs, evaluate(args, cascade), compile_seconds


def run_settings(args: argparse.Namespace) -> dict[str, Any]:
    """What makes two runs' figures of a cascade comparable (beside device and JAX)."""
    cascade = args.cascade
    return {
        # Relative to the repository where it lies inside it, so that two checkouts agree.
        "cascade": str(cascade.relative_to(REPO) if cascade.is_relative_to(REPO) else cascade),
        "num_samples": args.num_samples,
        "eval_batch": args.eval_batch,
        "seed": args.seed,
        "repeats": args.repeats,
    }


def earlier_original(
    path: Path, settings: dict[str, Any], info: dict[str, Any]
) -> tuple[list[dict], dict[str, Any]]:
    """The original cascade's stage records and summary from an earlier run's table1.jsonl.
    Refuses a file whose device, JAX or run settings differ from this run's (settings the file
    does not hold, from runs before they were recorded, are not checked)."""
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    original = [r for r in records if r.get("variant") == "original"]
    stages = [r for r in original if r["table"] == "distill_table1_stage"]
    cascade = [r for r in original if r["table"] == "distill_table1_cascade"]
    if not stages or len(cascade) != 1:
        raise SystemExit(f"--original-from {path}: no original cascade's records in it")
    (summary,) = cascade
    wanted = {"device": info["device"], "jax": info["jax"], **settings}
    differ = [
        f"{key} {summary[key]!r} (here {value!r})"
        for key, value in wanted.items()
        if key in summary and summary[key] != value
    ]
    if differ:
        raise SystemExit(f"--original-from {path} was measured otherwise: {'; '.join(differ)}")
    log(f"the original cascade's figures are taken from {path}")
    return stages, summary


def evaluate(args: argparse.Namespace, cascade: Any) -> dict[str, dict]:
    from imagen_video_jax.eval.cascade_eval import evaluate_cascade

    return evaluate_cascade(
        cascade,
        num_samples=args.num_samples,
        batch_size=args.eval_batch,
        seed=args.seed,
        text_cache=args.text_cache,
        cache_dir=args.workdir / "i3d_cache",
        progress=True,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from imagen_video_jax.cascade import Cascade, stage_dirs

    names = list(stage_dirs(args.cascade))
    stages = [s for s in args.stages.split(",") if s] or names
    unknown = sorted((set(stages) | set(args.student)) - set(names))
    if unknown:
        raise SystemExit(
            f"stages {unknown} (--stages, --student) are not in {args.cascade}, which holds {names}"
        )
    started = time.perf_counter()
    to_distill = [] if args.skip_distill else [s for s in stages if s not in args.student]
    students = concurrent.futures.ThreadPoolExecutor(max(1, len(to_distill)))
    running = {s: students.submit(distill_stage, args, s) for s in to_distill}
    if args.distill_only:
        for stage, seconds in finish_students(args, running).items():
            log(f"{stage}: {seconds:.0f} s")
        return 0

    from imagen_video_jax.bench.measure import device_description
    from imagen_video_jax.eval.cascade_eval import CachedTextEncoder
    from imagen_video_jax.models.text_cache import load_embedding_cache

    info = {**device_description(), "command": shlex.join([sys.argv[0], *(argv or sys.argv[1:])])}
    settings = run_settings(args)
    encoder = CachedTextEncoder(load_embedding_cache(args.text_cache))
    batches = sorted({1, args.eval_batch})
    records: list[dict] = []
    summary, rows, distill_seconds = {}, [], {}

    def measured(variant: str, cascade: Any, costs: dict, scores: dict, compile_s: float) -> None:
        """Time ``cascade`` (the GPU to itself), then record its stages and its summary."""
        timing = speed(cascade, batches, args.repeats)
        for record in stage_records(variant, costs, scores, timing, args.eval_batch):
            record["distill_seconds"] = distill_seconds.get(record["stage"])
            rows.append(emit(records, record))
        summary[variant] = variant_summary(costs, scores, timing, names[-1], args.eval_batch)
        record = {"table": "distill_table1_cascade", "variant": variant, **summary[variant]}
        emit(records, {**record, "compile_seconds": compile_s, **settings, **info})

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        if args.original_from:
            earlier_rows, summary["original"] = earlier_original(args.original_from, settings, info)
            rows += [emit(records, row) for row in earlier_rows]
        else:
            # The original cascade's quality is measured while the students train (the GPU
            # has room); every timing is taken with the GPU to itself.
            original = Cascade.from_checkpoints(args.cascade, text_encoder=encoder)
            original_parts = quality(args, original, pool, batches)
        distill_seconds.update(finish_students(args, running))
        students.shutdown()
        if not args.original_from:
            measured("original", original, *original_parts)
        folder = distilled_folder(args, names, stages)
        distilled = Cascade.from_checkpoints(folder, text_encoder=encoder)
        measured("distilled", distilled, *quality(args, distilled, pool, batches))
    result = comparison(summary)
    result.update(wall_seconds=time.perf_counter() - started, **info)
    emit(records, result)
    markdown = "\n\n".join(
        [
            "# Table 1 on the mini cascade: original vs distilled",
            f"Cascade {args.cascade}; distilled to {args.final_steps} steps a stage with "
            f"{rounds_text(args)} steps a round at batch {args.batch}; quality on "
            f"{args.num_samples} held-out prompts (seed {args.seed})"
            + "".join(f"; {stage}: the student in {path}" for stage, path in args.student.items())
            + f"; {info['device']}, "
            f"JAX {info['jax']}; run: `{info['command']}`; {result['wall_seconds']:.0f} s in all."
            + (
                f" The original cascade's figures are those of an earlier run on the same device "
                f"kind and JAX: {args.original_from}."
                if args.original_from
                else ""
            ),
            summary_table({**summary, **result}, args.eval_batch),
            stage_table(rows),
            f"Targets: >= {TARGET_SPEEDUP}x faster at both batch sizes, caption accuracy within "
            f"{100 * MAX_CAPTION_DROP:.0f} points and FVD within {MAX_FVD_RATIO}x of the "
            f"original at the last stage: {'met' if result['meets_targets'] else 'NOT met'}.",
        ]
    )
    (args.workdir / "table1.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (args.workdir / "table1.md").write_text(markdown + "\n")
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
