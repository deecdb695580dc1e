"""One cascade stage sampled several ways from the same input videos, each scored as Table 1
scores a stage: to tell what a stage itself changes from what it inherits from the stages
before it.

    python launch/stage_probe.py --chain runs/distill_table1/students --stage ssr3 \\
        --variant student=runs/distill_table1/students \\
        --variant original=imagen_video_jax/assets/demo_cascade \\
        --variant original_8=imagen_video_jax/assets/demo_cascade:steps=8 \\
        --text-cache build/mini_text_cache.npz --out runs/probe

The stages of ``--chain`` before ``--stage`` make the input videos of the held-out prompts
(prompt ``i`` with seed ``--seed + i``, as ``imagen-video eval`` and Table 1 sample them).
Each ``--variant NAME=CASCADE[:sampler=S][:steps=N][:seed=K][:guidance=W]`` then samples
``--stage`` of CASCADE from those same videos (seed K + i, default ``--seed``; guidance weight
W, default the stage's) and is scored: caption accuracy, FVD and KVD against held-out real
clips, the pixels' mean and standard deviation, and its seconds a sample (compiled). One
JSON line per variant on stdout and in ``<out>/probe.jsonl``, a markdown table last and in
``<out>/probe.md``; ``<out>/<variant>.npy`` keeps the first four videos. ``--inputs FILE``
keeps the input videos: a later probe of the same chain, stage, prompts and seed reads them
from FILE instead of sampling the chain again (minutes on a GPU for the mini cascade).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from imagen_video_jax.cascade import Cascade
from imagen_video_jax.eval.caption_classifier import load_classifier
from imagen_video_jax.eval.cascade_eval import (
    format_number,
    held_out_prompts,
    render_spec,
    sample_stages,
    stage_scores,
    with_text_cache,
)

VARIANT_OPTIONS = {"sampler": str, "steps": int, "seed": int, "guidance": float}
SAVED_VIDEOS = 4


def parse_variant(text: str) -> tuple[str, Path, dict[str, Any]]:
    """``NAME=CASCADE[:key=value]...`` -> (name, cascade folder, options)."""
    name, sep, rest = text.partition("=")
    if not sep or not name or not rest:
        raise argparse.ArgumentTypeError(f"expected NAME=CASCADE[:key=value...], got {text!r}")
    folder, *pairs = rest.split(":")
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in VARIANT_OPTIONS:
            raise argparse.ArgumentTypeError(
                f"variant {name!r}: unknown option {pair!r}; expected {sorted(VARIANT_OPTIONS)}"
            )
        options[key] = VARIANT_OPTIONS[key](value)
    return name, Path(folder), options


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chain", type=Path, required=True, help="cascade of the input videos")
    parser.add_argument("--stage", required=True, help="the stage to probe")
    parser.add_argument(
        "--variant", type=parse_variant, action="append", required=True, dest="variants"
    )
    parser.add_argument("--text-cache", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--num-samples", type=int, default=40)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-fvd", action="store_true", help="caption accuracy only")
    parser.add_argument("--cache-dir", type=Path, help="real clips' I3D features (default: out)")
    parser.add_argument(
        "--inputs", type=Path, help="the input videos' file: read when it exists, else written"
    )
    args = parser.parse_args(argv)
    names = [name for name, _, _ in args.variants]
    if len(set(names)) != len(names):
        parser.error(f"variant names must differ; got {names}")
    return args


def input_videos(chain: Any, stage: str, prompts, *, batch: int, seed: int) -> np.ndarray | None:
    """The chain's output of the stage before ``stage`` (None when ``stage`` is the first)."""
    before = chain.stage_names[: chain.stage_names.index(stage)]
    if not before:
        return None
    options = {name: {} for name in before}
    videos, _ = sample_stages(
        chain, before, prompts, batch_size=batch, seed=seed, options=options, log=log
    )
    return videos[before[-1]]


def chain_inputs(args: argparse.Namespace, chain: Any, prompts, *, batch: int) -> np.ndarray | None:
    """:func:`input_videos`, read from ``--inputs`` when that file holds the videos of the same
    chain, stage, prompts and seed (refused when made otherwise), else sampled and written
    there."""
    made_with = {
        "chain": str(args.chain.resolve()), "stage": args.stage,
        "num_samples": args.num_samples, "seed": args.seed,
    }  # fmt: skip
    if args.inputs is not None and args.inputs.exists():
        with np.load(args.inputs) as saved:
            saved_with = json.loads(str(saved["made_with"]))
            if saved_with != made_with:
                raise SystemExit(f"--inputs {args.inputs} holds {saved_with}, not {made_with}")
            log(f"input videos read from {args.inputs}")
            return saved["videos"]
    videos = input_videos(chain, args.stage, prompts, batch=batch, seed=args.seed)
    if args.inputs is not None and videos is not None:
        with open(args.inputs, "wb") as out:
            np.savez(out, videos=videos, made_with=json.dumps(made_with))
    return videos


def log(message: str) -> None:
    print(f"[probe] {message}", file=sys.stderr, flush=True)


def load(folder: Path, text_cache: Path, prompts: Sequence[str], stage: str) -> Any:
    """The cascade of ``folder`` up to ``stage``, its text answered from ``text_cache``."""
    return with_text_cache(Cascade.from_checkpoints(folder, stop_after=stage), text_cache, prompts)


def probe(args: argparse.Namespace) -> list[dict[str, Any]]:
    args.out.mkdir(parents=True, exist_ok=True)
    prompts = held_out_prompts(args.num_samples)
    batch = min(args.batch, args.num_samples)
    chain = load(args.chain, args.text_cache, prompts, args.stage)
    started = time.perf_counter()
    cond = chain_inputs(args, chain, prompts, batch=batch)
    log(f"input videos in {time.perf_counter() - started:.0f} s")
    classifier = load_classifier()
    render = render_spec(chain.stages[chain.stage_names[0]].config, chain.stages[args.stage].spec)
    records = []
    for name, folder, options in args.variants:
        cascade = (
            chain if folder == args.chain else load(folder, args.text_cache, prompts, args.stage)
        )
        options = dict(options)
        seed = options.pop("seed", args.seed)
        steps = options.pop("steps", None)
        guidance = options.pop("guidance", None)
        settings = {"num_steps": steps, "guidance_weight": guidance, **options}
        videos, timings = sample_stages(
            cascade, [args.stage], prompts, batch_size=batch, seed=seed,
            options={args.stage: settings}, log=log, cond=cond,
        )  # fmt: skip
        video = videos[args.stage]
        scores = stage_scores(
            cascade.stages[args.stage].spec, video, prompts, render=render,
            dataset="moving_digits", classifier=classifier, fvd=not args.no_fvd, seed=seed,
            cache_dir=args.cache_dir or args.out / "i3d_cache",
        )  # fmt: skip
        pixels = video.astype(np.float32)
        record = {
            "variant": name, "cascade": str(folder), "stage": args.stage, "seed": seed,
            "num_steps": steps, "sampler": options.get("sampler"), "guidance": guidance,
            "seconds_per_sample": timings[args.stage].seconds_per_sample(batch),
            **scores["samples"], "real_fvd": scores["real"]["fvd"],
            "pixel_mean": float(pixels.mean()), "pixel_std": float(pixels.std()),
        }  # fmt: skip
        print(json.dumps(record), flush=True)
        with open(args.out / "probe.jsonl", "a") as out:
            out.write(json.dumps(record) + "\n")
        np.save(args.out / f"{name}.npy", video[:SAVED_VIDEOS])
        records.append(record)
    return records


def table(records: Sequence[dict[str, Any]]) -> str:
    lines = [
        "| variant | caption acc | FVD | KVD | pixel mean | pixel std | s / sample |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in records:
        lines.append(
            f"| {r['variant']} | {100 * r['caption_accuracy']:.1f} % | "
            f"{format_number(r['fvd'], 1)} | {format_number(r['kvd'], 1)} | "
            f"{r['pixel_mean']:.1f} | {r['pixel_std']:.1f} | {r['seconds_per_sample']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    text = table(probe(args))
    (args.out / "probe.md").write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
