"""``imagen-video train``: train one cascade stage from a config.

    imagen-video train --config configs/imagen_video.py:stage=base,size=tiny --workdir DIR \
        [--set data.batch_size=8 ...] [--config.train.num_steps=100 ...]

Checkpoints, logs and samples go to ``DIR/<stage>/``; a run resumes from there.
"""

from __future__ import annotations

import argparse
import sys

from imagen_video_jax.parallel.distributed import MODES

CONFIG_FLAG = "--config."


def config_flags_as_overrides(argv: list[str]) -> list[str]:
    """``--config.a.b=v`` / ``--config.a.b v`` (ml_collections style) -> ``--set a.b=v``."""
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith(CONFIG_FLAG):
            key, sep, value = arg[len(CONFIG_FLAG) :].partition("=")
            if not sep:
                if i + 1 >= len(argv):
                    raise SystemExit(f"imagen-video train: {arg} needs a value")
                i, value = i + 1, argv[i + 1]
            out += ["--set", f"{key}={value}"]
        else:
            out.append(arg)
        i += 1
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        required=True,
        help="config file and its arguments, e.g. configs/imagen_video.py:stage=base,size=tiny",
    )
    parser.add_argument("--workdir", required=True, help="run folder (local path or gs://...)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set data.batch_size=8 (or --config.KEY=VALUE)",
    )
    parser.add_argument("--data-dir", help="dataset folder (default: the data config's)")
    parser.add_argument(
        "--init-from",
        metavar="DIR",
        help="start a new run from this stage's params (an exported cascade, a train workdir "
        "or the stage folder) instead of at random; a run that has checkpoints resumes",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    group = parser.add_argument_group("multi-host")
    group.add_argument(
        "--multihost",
        choices=MODES,
        default="auto",
        help="jax.distributed start: auto (SLURM, a TPU pod, or --coordinator-address), on, off",
    )
    group.add_argument("--coordinator-address", help="host:port of process 0")
    group.add_argument("--num-processes", type=int)
    group.add_argument("--process-id", type=int)
    group.add_argument(
        "--local-device-ids", help="comma-separated local device ids this process uses"
    )
    parse_known_args = parser.parse_known_args

    def parse_with_config_flags(args=None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        return parse_known_args(config_flags_as_overrides(args), namespace)

    parser.parse_known_args = parse_with_config_flags


def start_distributed(args: argparse.Namespace) -> None:
    """``jax.distributed`` as the multi-host arguments say (before any other JAX call)."""
    from imagen_video_jax.parallel.distributed import initialize_distributed

    local_ids = args.local_device_ids
    initialize_distributed(
        args.multihost,
        coordinator_address=args.coordinator_address,
        num_processes=args.num_processes,
        process_id=args.process_id,
        local_device_ids=[int(i) for i in local_ids.split(",")] if local_ids else None,
    )


def main(args: argparse.Namespace) -> int:
    start_distributed(args)
    from imagen_video_jax.config import load_config
    from imagen_video_jax.train.loop import NonFiniteError, train

    try:
        config = load_config(args.config, args.overrides)
        init_params = None
        if args.init_from:
            from imagen_video_jax.cascade.checkpoints import find_stage_dir, load_stage

            stage_dir = find_stage_dir(args.init_from, str(config.stage.name), "--init-from")
            init_params, _ = load_stage(stage_dir)
        train(
            config,
            args.workdir,
            data_dir=args.data_dir,
            progress_bar=not args.no_progress,
            init_params=init_params,
        )
    except (ValueError, FileNotFoundError) as error:
        print(f"imagen-video train: error: {error}", file=sys.stderr)
        return 2
    except NonFiniteError as error:
        print(f"imagen-video train: {error}", file=sys.stderr)
        return 1
    return 0
