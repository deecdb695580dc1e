"""``imagen-video sample``: text in, video files out.

    imagen-video sample --checkpoints DIR --prompt "a handwritten 7 moving up" --out out.mp4 \
        [--prompts-file F] [--seed 0] [--steps 32 | --steps base=64,tsr1=16] [--guidance 5]
        [--stop-after ssr1] [--save-intermediates]

Writes ``out.mp4``, ``out.gif`` and the contact sheet ``out.png`` (``out_000.mp4``, ... for
several prompts); with ``--save-intermediates`` also each earlier stage's videos
(``out_base.mp4``, ...).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from imagen_video_jax.stages import STAGE_ORDER


def per_stage_value(text: str, convert: Callable[[str], Any]) -> Any:
    """``"8"`` -> 8 for every stage; ``"base=32,tsr1=8"`` -> {'base': 32, 'tsr1': 8}."""
    if "=" not in text:
        return convert(text)
    values = {}
    for item in text.split(","):
        name, sep, value = item.strip().partition("=")
        if not sep or name not in STAGE_ORDER:
            raise argparse.ArgumentTypeError(
                f"{item!r} must look like STAGE=VALUE with STAGE one of {list(STAGE_ORDER)}"
            )
        values[name] = convert(value)
    return values


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``sample`` and ``demo``."""
    parser.add_argument("--seed", type=int, default=0, help="prompt i uses seed + i (default 0)")
    parser.add_argument(
        "--steps",
        type=lambda t: per_stage_value(t, int),
        help="sampling steps: one count for every stage or STAGE=N,... (default: the configs')",
    )
    parser.add_argument(
        "--guidance",
        type=lambda t: per_stage_value(t, float),
        help="guidance weight w: one for every stage or STAGE=W,... (default: the configs')",
    )
    parser.add_argument(
        "--sampler",
        type=lambda t: per_stage_value(t, str),
        help="ddim, ancestral, stochastic or pc; or STAGE=NAME,... (default: the configs')",
    )
    parser.add_argument(
        "--stop-after", choices=STAGE_ORDER, help="last stage to run (default: all present)"
    )
    parser.add_argument(
        "--save-intermediates",
        action="store_true",
        help="also write every earlier stage's videos (<out>_<stage>.mp4/.gif/.png)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoints",
        required=True,
        help="cascade folder: one subfolder per stage (base, tsr1, ...) as `imagen-video train` "
        "writes them",
    )
    parser.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    parser.add_argument("--prompts-file", help="a text file with one prompt per line")
    parser.add_argument(
        "--out", default="sample.mp4", help="output MP4; the GIF and PNG go next to it"
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=8,
        help="prompts sampled together (the last batch is padded, so nothing recompiles)",
    )
    add_sampling_arguments(parser)


def read_prompts(prompts: list[str], prompts_file: str | None) -> list[str]:
    """The --prompt values, then the non-empty lines of --prompts-file."""
    prompts = list(prompts)
    if prompts_file:
        path = Path(prompts_file)
        if not path.is_file():
            raise FileNotFoundError(f"prompts file {path} does not exist")
        prompts += [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not prompts:
        raise ValueError("no prompts: give --prompt TEXT (repeatable) or --prompts-file FILE")
    return prompts


def sample_in_batches(
    cascade: Any, prompts: list[str], *, batch_size: int, seed: int, **options: Any
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Sample prompts ``batch_size`` at a time (prompt i with seed + i) with every batch padded
    to the same size; returns the final videos and each stage's videos."""
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    batch_size = min(batch_size, len(prompts))
    finals, stages = [], {}
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        pad = batch_size - len(chunk)
        seeds = [seed + start + i for i in range(len(chunk))] + [seed] * pad
        final, per_stage = cascade.sample(
            chunk + [chunk[-1]] * pad, seed=seeds, return_intermediates=True, **options
        )
        finals.append(final[: len(chunk)])
        for name, video in per_stage.items():
            stages.setdefault(name, []).append(video[: len(chunk)])
    return np.concatenate(finals), {k: np.concatenate(v) for k, v in stages.items()}


def describe(spec: Any) -> str:
    return f"{spec.name}: {spec.frames} x {spec.height} x {spec.width} at {spec.fps:g} fps"


def write_all(
    cascade: Any,
    out: Path,
    prompts: list[str],
    final: np.ndarray,
    per_stage: dict[str, np.ndarray],
    *,
    stop_after: str | None,
    seed: int,
    intermediates: bool,
) -> list[Path]:
    """The final videos (and on request every earlier stage's) as MP4, GIF and PNG."""
    from imagen_video_jax.cascade.io import write_samples

    spec = cascade.output_spec(stop_after)
    written = write_samples(out, final, spec.fps, prompts, title=f"{describe(spec)}, seed {seed}")
    if intermediates:
        for stage in cascade.stages_until(stop_after)[:-1]:
            written += write_samples(
                out,
                per_stage[stage.name],
                stage.spec.fps,
                prompts,
                title=f"{describe(stage.spec)}, seed {seed}",
                tag=stage.name,
            )
    return written


def sampling_options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "stop_after": args.stop_after,
        "num_steps": args.steps,
        "guidance_weight": args.guidance,
        "sampler": args.sampler,
        "progress": not args.no_progress,
    }


def main(args: argparse.Namespace) -> int:
    from imagen_video_jax.cascade import Cascade

    try:
        prompts = read_prompts(args.prompt, args.prompts_file)
        start = time.perf_counter()
        cascade = Cascade.from_checkpoints(args.checkpoints, stop_after=args.stop_after)
        final, per_stage = sample_in_batches(
            cascade,
            prompts,
            batch_size=args.batch_size,
            seed=args.seed,
            **sampling_options(args),
        )
        written = write_all(
            cascade,
            Path(args.out),
            prompts,
            final,
            per_stage,
            stop_after=args.stop_after,
            seed=args.seed,
            intermediates=args.save_intermediates,
        )
    except (ValueError, FileNotFoundError) as error:
        print(f"imagen-video sample: error: {error}", file=sys.stderr)
        return 2
    print(f"sampled {len(prompts)} video(s) in {time.perf_counter() - start:.1f} s")
    for path in written:
        print(f"wrote {path}")
    return 0
