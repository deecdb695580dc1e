"""The ``imagen-video`` command: one entry point, one subcommand per job.

Each subcommand lives in its own module, imported only when it runs, which exposes
``add_arguments(parser)`` and ``main(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module implementing it, one-line help)
COMMANDS = {
    "train": ("imagen_video_jax.train.cli", "train one cascade stage from a config"),
    "distill": (
        "imagen_video_jax.train.distill_cli",
        "guided + progressive distillation of a stage",
    ),
    "embed": (
        "imagen_video_jax.train.embed_cli",
        "precompute text embeddings of a dataset's captions (train.text_cache)",
    ),
    "sample": ("imagen_video_jax.cascade.cli", "sample videos from text with the cascade"),
    "eval": ("imagen_video_jax.eval.cli", "FVD, KVD and caption accuracy of a cascade"),
    "prepare": (
        "imagen_video_jax.data.cli",
        "build a dataset (moving_digits, photo_motion, video_folder)",
    ),
    "bench": ("imagen_video_jax.bench", "run the benchmarks of BENCHMARKS.md"),
    "demo": ("imagen_video_jax.cascade.demo", "sample a captioned video from the bundled cascade"),
}


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imagen-video",
        description="Imagen Video, Video Diffusion Models and NUWA-XL in JAX.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def _load(name: str):
    module_name = COMMANDS[name][0]
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and module_name.startswith(err.name):
            return None
        raise


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        parser = _top_parser()
        if not argv:
            parser.print_help()
            return 2
        parser.parse_args(argv)  # prints help or an error for unknown commands
        return 2
    name, rest = argv[0], argv[1:]
    module = _load(name)
    if module is None:
        print(f"imagen-video {name}: not built yet in this version", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(prog=f"imagen-video {name}", description=COMMANDS[name][1])
    module.add_arguments(parser)
    return int(module.main(parser.parse_args(rest)) or 0)


if __name__ == "__main__":
    sys.exit(main())
