"""Where a cascade stage's time goes at batch 1: the parts of ``Cascade.sample_stage`` timed
alone, to find the fixed cost that dominates a distilled stage's 8 steps.

    python launch/stage_fixed_cost.py --text-cache build/mini_text_cache.npz

For each stage (random weights of ``configs/imagen_video.py:size=<size>``, or ``--cascade``):
``sample_stage`` at 1 and at ``--steps`` steps, for each sampler and guidance mode asked
(``cfg``: two branches in one call; ``input``: w a model input, as distilled students), and
the parts of one call: the compiled loop alone (inputs ready on the device), the PRNG keys,
the text (a cache lookup with ``--text-cache``). Medians of ``--repeats`` calls after a first
that compiles, in ms; one JSON line per stage and mode. The per-step cost is
(t_N - t_1) / (N - 1); the rest is fixed.
"""

from __future__ import annotations

import argparse
import functools
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import numpy as np

from imagen_video_jax.bench import measure
from imagen_video_jax.cascade import Cascade
from imagen_video_jax.cascade.cascade import example_seeds, stage_keys
from imagen_video_jax.cascade.specs import apply_overrides
from imagen_video_jax.eval.cascade_eval import CachedTextEncoder
from imagen_video_jax.models.text_cache import load_embedding_cache

PROMPT = "a handwritten 2 moving up and to the right"


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    """Median wall ms of ``fn()`` after one untimed call (which compiles)."""
    return round(1000 * measure.median_step_seconds(fn, warmup=1, iters=repeats), 3)


def loop_call(cascade, name: str, cond, steps: int, sampler: str) -> Callable[[], jax.Array]:
    """The stage's sampling loop (the jitted call ``sample_stage`` makes, so nothing compiles
    twice) with its inputs already on the device: ``sample_stage`` less the text lookup, the
    keys, the input transfer and the output copy."""
    stage = cascade.stages[name]
    settings = apply_overrides(stage.settings, num_steps=steps, sampler=sampler)
    text, mask = cascade.encode([PROMPT])
    device_cond = None if cond is None else jax.device_put(cond)
    keys = stage_keys(example_seeds(0, 1), cascade.stage_names.index(name))
    return functools.partial(stage.sampler, stage.params, keys, text, mask, device_cond, settings)


def stage_record(cascade, name: str, args: argparse.Namespace) -> dict:
    stage = cascade.stages[name]
    cond = None
    if stage.spec.input_shape is not None:
        cond = np.zeros((1, *stage.spec.input_shape, 3), np.uint8)
    record: dict = {"stage": name, "shape": "x".join(map(str, stage.spec.shape))}
    for sampler in args.samplers:
        for steps in (1, args.steps):
            whole = functools.partial(
                cascade.sample_stage, name, [PROMPT], cond=cond, num_steps=steps, sampler=sampler
            )
            record[f"{sampler}_{steps}_sample_stage"] = median_ms(whole, args.repeats)
            loop = loop_call(cascade, name, cond, steps, sampler)
            record[f"{sampler}_{steps}_loop"] = median_ms(loop, args.repeats)
    position = cascade.stage_names.index(name)
    record["keys"] = median_ms(lambda: stage_keys(example_seeds(0, 1), position), args.repeats)
    record["text"] = median_ms(lambda: cascade.encode([PROMPT]), args.repeats)
    return record


def cascade_for(args: argparse.Namespace, mode: str) -> Cascade:
    encoder = None  # the stages' own text encoder
    if args.text_cache:
        encoder = CachedTextEncoder(load_embedding_cache(args.text_cache))
    if args.cascade:
        return Cascade.from_checkpoints(
            args.cascade, stop_after=args.stop_after, text_encoder=encoder
        )
    overrides = ["model.guidance_input=True"] if mode == "input" else []
    return Cascade.from_random_init(
        args.size, stop_after=args.stop_after, overrides=overrides, text_encoder=encoder
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--text-cache", type=Path, help="imagen-video embed's file (default: the text encoder)"
    )
    parser.add_argument("--cascade", type=Path, help="trained stages (default: random weights)")
    parser.add_argument("--size", default="mini", help="config size of the random-weight stages")
    parser.add_argument("--stop-after", default="tsr1", help="the last stage timed")
    parser.add_argument("--modes", nargs="+", default=["cfg", "input"], choices=("cfg", "input"))
    parser.add_argument("--samplers", nargs="+", default=["ddim", "stochastic"])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args(argv)
    if args.cascade:
        args.modes = ["as trained"]
    return args


def main(argv: Sequence[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    info = measure.device_description()
    records = []
    for mode in args.modes:
        cascade = cascade_for(args, mode)
        for name in cascade.stage_names:
            record = {"mode": mode, **stage_record(cascade, name, args), **info}
            print(json.dumps(record), flush=True)
            records.append(record)
    return records


if __name__ == "__main__":
    main()
