"""``imagen-video demo``: a captioned video from the cascade bundled with the package, on CPU.

    imagen-video demo [--prompt "a handwritten 3 moving right"] [--out-dir .] [--seed 0]

Writes ``demo.mp4``, ``demo.gif`` and ``demo.png`` (frames under the caption). The bundled
weights are made by ``launch/train_mini_cascade.sh``; ``demo.json`` beside them holds the
demo's defaults (prompt, last stage, step counts) chosen so it runs in well under two minutes
on a laptop CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from imagen_video_jax.cascade.cli import (
    add_sampling_arguments,
    describe,
    sampling_options,
    write_all,
)

DEFAULT_PROMPT = "a handwritten 2 moving up and to the right"
DEMO_FILE = "demo.json"
# Without demo.json: stop at the last stage with at most this many pixels in all
# (frames x height x width), and this many steps per stage (distilled stages keep their own).
DEFAULT_MAX_PIXELS = 16 * 128 * 128
DEFAULT_STEPS = {"base": 32}
DEFAULT_SR_STEPS = 8


def bundled_cascade_dir() -> Path:
    """Where the package keeps the demo cascade."""
    return Path(__file__).resolve().parents[1] / "assets" / "demo_cascade"


def missing_message(folder: Path) -> str:
    return (
        f"imagen-video demo: the bundled demo cascade is not in this installation ({folder} "
        "holds no stage checkpoints).\n"
        "Make it on a GPU with `bash launch/train_mini_cascade.sh` from the source tree: it "
        "trains the seven mini stages on the bundled datasets and writes their weights to "
        "imagen_video_jax/assets/demo_cascade/; then reinstall the package (pip install .).\n"
        "To sample your own checkpoints instead: imagen-video sample --checkpoints DIR "
        "--prompt TEXT"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompt", help=f"what to show (default: {DEFAULT_PROMPT!r})")
    parser.add_argument("--out-dir", default=".", help="folder for demo.mp4/.gif/.png")
    parser.add_argument(
        "--cascade", help="a cascade folder to use instead of the bundled one (same layout)"
    )
    add_sampling_arguments(parser)


def demo_defaults(folder: Path, stage_specs: list[Any], distilled: dict[str, bool]) -> dict:
    """The demo's prompt, last stage and steps: demo.json's, else the built-in rule."""
    path = folder / DEMO_FILE
    if path.is_file():
        saved = json.loads(path.read_text())
    else:
        fitting = [
            spec.name
            for spec in stage_specs
            if spec.frames * spec.height * spec.width <= DEFAULT_MAX_PIXELS
        ]
        saved = {
            "stop_after": fitting[-1] if fitting else stage_specs[0].name,
            "num_steps": {
                spec.name: DEFAULT_STEPS.get(spec.name, DEFAULT_SR_STEPS)
                for spec in stage_specs
                if not distilled[spec.name]
            },
        }
    return {"prompt": DEFAULT_PROMPT, **saved}


def demo_options(
    cascade: Any, folder: Path, stop_after: str | None = None
) -> tuple[str, dict[str, Any]]:
    """(default prompt, ``Cascade.sample`` options: stop_after and num_steps) of the demo
    cascade in ``folder``; ``stop_after`` replaces the default last stage."""
    defaults = demo_defaults(
        folder,
        [stage.spec for stage in cascade.stages.values()],
        {name: stage.distilled for name, stage in cascade.stages.items()},
    )
    stop_after = stop_after or defaults.get("stop_after")
    steps = defaults.get("num_steps")
    if isinstance(steps, dict):
        run = {stage.name for stage in cascade.stages_until(stop_after)}
        steps = {name: count for name, count in steps.items() if name in run}
    return defaults["prompt"], {"stop_after": stop_after, "num_steps": steps}


def main(args: argparse.Namespace) -> int:
    from imagen_video_jax.cascade import Cascade
    from imagen_video_jax.cascade.checkpoints import stage_dirs

    folder = Path(args.cascade) if args.cascade else bundled_cascade_dir()
    try:
        stage_dirs(folder)
    except FileNotFoundError:
        print(missing_message(folder), file=sys.stderr)
        return 1
    try:
        start = time.perf_counter()
        cascade = Cascade.from_checkpoints(folder)
        default_prompt, defaults = demo_options(cascade, folder, args.stop_after)
        options = {**sampling_options(args), "stop_after": defaults["stop_after"]}
        if options["num_steps"] is None:
            options["num_steps"] = defaults["num_steps"]
        prompt = args.prompt or default_prompt
        final, per_stage = cascade.sample(
            [prompt], seed=args.seed, return_intermediates=True, **options
        )
        written = write_all(
            cascade,
            Path(args.out_dir) / "demo.mp4",
            [prompt],
            final,
            per_stage,
            stop_after=options["stop_after"],
            seed=args.seed,
            intermediates=args.save_intermediates,
        )
    except (ValueError, FileNotFoundError) as error:
        print(f"imagen-video demo: error: {error}", file=sys.stderr)
        return 2
    spec = cascade.output_spec(options["stop_after"])
    print(f"{prompt!r} -> {describe(spec)} in {time.perf_counter() - start:.1f} s")
    for path in written:
        print(f"wrote {path}")
    return 0
