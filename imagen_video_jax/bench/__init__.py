"""``imagen-video bench NAME``: the benchmarks of BENCHMARKS.md (run them on an accelerator).

Each prints one JSON line per measurement and a table last.
"""

from __future__ import annotations

import argparse

BENCHMARKS = ("base-train",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", choices=BENCHMARKS, help="which benchmark to run")
    parser.add_argument("--batch", type=int, default=8, help="clips per device")
    parser.add_argument("--remat", default="none", choices=("none", "block", "dots"))
    parser.add_argument("--mesh", default="data", choices=("data", "fsdp"))
    parser.add_argument(
        "--fit",
        default="16,32,64",
        help="comma-separated batches per device to try for the largest batch that fits",
    )
    parser.add_argument("--iters", type=int, default=20, help="timed steps after warm-up")
    parser.add_argument(
        "--profile", default=None, help="write a jax.profiler trace of 3 steps here"
    )


def main(args: argparse.Namespace) -> int:
    from imagen_video_jax.bench import base_train, measure

    fit = tuple(int(b) for b in args.fit.split(",") if b)
    records = base_train.run(
        args.batch,
        fit_batches=fit,
        iters=args.iters,
        remat=args.remat,
        fsdp=args.mesh == "fsdp",
        profile_dir=args.profile,
    )
    columns = ("bench", "batch", "batch_per_device", "step_ms", "clips_per_s", "tflops", "mfu")
    measure.print_table(records, columns + ("compiled_gib", "peak_gib", "fits"))
    return 0
