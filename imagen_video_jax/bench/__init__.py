"""``imagen-video bench NAME [options]``: the benchmarks of BENCHMARKS.md (run them on an
accelerator).

Each benchmark lives in its own module, imported only when it runs, which exposes
``add_arguments(parser)`` and ``main(args) -> int``; each prints one JSON line per measurement
and a table last. ``imagen-video bench NAME --help`` lists a benchmark's options.
"""

from __future__ import annotations

import argparse
import importlib

# name -> (module implementing it, one-line help)
BENCHMARKS = {
    "base-train": (
        "imagen_video_jax.bench.base_train",
        "training throughput of the base-stage Video U-Net",
    ),
    "sample": (
        "imagen_video_jax.bench.sample",
        "mini-cascade sampling time, undistilled vs distilled, against each step's compute floor",
    ),
    "scale": (
        "imagen_video_jax.bench.scale",
        "bench-base-train on 1 and N devices, data parallel and FSDP",
    ),
    "paper-memory": (
        "imagen_video_jax.bench.paper_memory",
        "parameters and one train step's peak memory of each paper-scale stage",
    ),
    "temporal-attention": (
        "imagen_video_jax.bench.temporal_attention",
        "temporal attention's forward and backward at each U-Net level, against its memory floor",
    ),
    "paper-sample": (
        "imagen_video_jax.bench.paper_sample",
        "the paper-scale cascade (T5-XXL and seven distilled stages) sampled on one GPU",
    ),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", choices=list(BENCHMARKS), help="which benchmark to run")
    parser.add_argument(
        "options",
        nargs=argparse.REMAINDER,
        help="the benchmark's own options (imagen-video bench NAME --help lists them)",
    )


def main(args: argparse.Namespace) -> int:
    module_name, description = BENCHMARKS[args.name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(
        prog=f"imagen-video bench {args.name}", description=description
    )
    module.add_arguments(parser)
    return int(module.main(parser.parse_args(args.options)) or 0)
