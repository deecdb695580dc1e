"""``imagen-video eval``: caption accuracy, FVD, KVD and sampling time of a cascade, per stage.

    imagen-video eval --checkpoints DIR --dataset moving_digits --num-samples 256 \
        [--batch-size 32] [--seed 0] [--stop-after ssr1] [--steps base=64,tsr1=32] \
        [--text-cache captions.npz] [--out results.json] [--no-fvd]

Prints a markdown table (each stage's samples beside held-out real clips and uniform noise);
``--out`` also writes the scores as JSON and the table beside it (``results.md``). Without
``--checkpoints`` the bundled demo cascade is evaluated.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from imagen_video_jax.cascade.cli import add_stage_setting_arguments
from imagen_video_jax.stages import STAGE_ORDER


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoints",
        help="cascade folder: one subfolder per stage, orbax train workdirs or the compact "
        "export (default: the bundled demo cascade)",
    )
    parser.add_argument("--dataset", default="moving_digits", help="(default moving_digits)")
    parser.add_argument("--num-samples", type=int, required=True, help="videos per stage")
    parser.add_argument(
        "--batch-size", type=int, default=16, help="prompts sampled together (default 16)"
    )
    parser.add_argument("--seed", type=int, default=0, help="sample i uses seed + i (default 0)")
    parser.add_argument(
        "--stop-after", choices=STAGE_ORDER, help="last stage to run (default: all present)"
    )
    add_stage_setting_arguments(parser)
    parser.add_argument(
        "--text-cache",
        help="prompt embeddings from this cache (.npz of `imagen-video embed`) instead of the "
        "text encoder, for machines without its weights",
    )
    parser.add_argument("--classifier", help="caption classifier weights (default: bundled)")
    parser.add_argument(
        "--cache-dir",
        help="where real clips' I3D features are cached (default $IMAGEN_VIDEO_CACHE/fvd, else "
        "~/.cache/imagen_video_jax/fvd)",
    )
    parser.add_argument("--out", help="write the scores as JSON here, and the table as .md")
    parser.add_argument("--no-fvd", action="store_true", help="caption accuracy and time only")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def checkpoints_dir(checkpoints: str | None) -> Path:
    """The given cascade folder, else the bundled demo cascade (which must then exist)."""
    from imagen_video_jax.cascade.checkpoints import stage_dirs
    from imagen_video_jax.cascade.demo import bundled_cascade_dir

    if checkpoints:
        return Path(checkpoints)
    folder = bundled_cascade_dir()
    try:
        stage_dirs(folder)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"no --checkpoints given and the bundled demo cascade is not in this installation "
            f"({folder} holds no stages): pass --checkpoints DIR, or make the demo cascade with "
            "launch/train_mini_cascade.sh"
        ) from None
    return folder


def write_outputs(out: Path, record: dict, table: str) -> list[Path]:
    """``out`` (JSON) and the markdown table beside it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n")
    markdown = out.with_suffix(".md")
    markdown.write_text(table)
    return [out, markdown]


def main(args: argparse.Namespace) -> int:
    from imagen_video_jax.cascade import Cascade
    from imagen_video_jax.eval.caption_classifier import load_classifier
    from imagen_video_jax.eval.cascade_eval import check_settings, evaluate_cascade, markdown_table

    fvd = not args.no_fvd
    try:
        check_settings(
            num_samples=args.num_samples,
            batch_size=args.batch_size,
            seed=args.seed,
            dataset=args.dataset,
            fvd=fvd,
        )
        folder = checkpoints_dir(args.checkpoints)
        classifier = load_classifier(args.classifier)
        start = time.perf_counter()
        cascade = Cascade.from_checkpoints(folder, stop_after=args.stop_after)
        results = evaluate_cascade(
            cascade,
            num_samples=args.num_samples,
            batch_size=args.batch_size,
            seed=args.seed,
            stop_after=args.stop_after,
            dataset=args.dataset,
            fvd=fvd,
            num_steps=args.steps,
            guidance_weight=args.guidance,
            sampler=args.sampler,
            text_cache=args.text_cache,
            classifier=classifier,
            cache_dir=args.cache_dir,
            progress=not args.quiet,
        )
    except (ValueError, FileNotFoundError) as error:
        print(f"imagen-video eval: error: {error}", file=sys.stderr)
        return 2
    table = markdown_table(results)
    print(table, end="")
    print(f"evaluated {folder} in {time.perf_counter() - start:.1f} s")
    if args.out:
        record = {
            "checkpoints": str(folder),
            "dataset": args.dataset,
            "num_samples": args.num_samples,
            "batch_size": min(args.batch_size, args.num_samples),
            "seed": args.seed,
            "stop_after": args.stop_after,
            "num_steps": args.steps,
            "guidance_weight": args.guidance,
            "sampler": args.sampler,
            "fvd": fvd,
            "stages": results,
        }
        for path in write_outputs(Path(args.out), record, table):
            print(f"wrote {path}")
    return 0
