"""``imagen-video distill``: guided and progressive distillation of one cascade stage.

    imagen-video distill --config configs/imagen_video.py:stage=base,size=mini \\
        --teacher DIR --workdir DIR [--set distill.steps_per_round=500 ...]

``--teacher`` is an ``imagen-video train`` workdir holding the stage (``DIR/<stage>/<step>/``,
its newest EMA params are read), a compact exported cascade (``DIR/<stage>/params.npz`` and
``config.json``, as the bundled demo cascade; float16 weights are read as float32), or the
stage's folder itself. The teacher's saved config gives the stage, text encoder, model,
diffusion, sampling and data sections; ``--config`` the train, mesh and ``distill`` settings;
``--set`` wins over both.

Rounds are checkpointed in ``WORKDIR/<stage>/round_<k>/`` and a run started again resumes at
the round and step it reached. After the last round the student's EMA params and config are
written in the compact sampling format to ``WORKDIR/<stage>/`` (``config.json`` says the stage
is distilled: ``model.guidance_input``, the stochastic sampler at ``distill.final_steps``), so
``Cascade.from_checkpoints`` and ``imagen-video sample`` load it as they load any stage, next to
undistilled ones.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from imagen_video_jax.train import cli as train_cli

EXPORT_DTYPES = ("float32", "float16")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    train_cli.add_arguments(parser)
    parser.add_argument(
        "--teacher",
        required=True,
        help="the stage's teacher: a train workdir, an exported cascade, or the stage folder",
    )
    parser.add_argument(
        "--export-dtype",
        choices=EXPORT_DTYPES,
        default="float32",
        help="precision of the distilled stage written to WORKDIR/<stage>/ (default float32)",
    )


def load_teacher(teacher: str | Path, stage: str) -> tuple[Any, dict]:
    """(float32 EMA params, saved config) of ``stage``'s teacher."""
    from imagen_video_jax.cascade.checkpoints import find_stage_dir, load_stage

    return load_stage(find_stage_dir(teacher, stage, "teacher"))


def export_student(result: Any, workdir: str | Path, dtype: str = "float32") -> Path:
    """Write the distilled student (EMA params and config) compactly to ``WORKDIR/<stage>/``."""
    import jax
    from jax.experimental import multihost_utils

    from imagen_video_jax.cascade.checkpoints import save_stage

    params = result.state.ema_params
    if jax.process_count() > 1:
        params = multihost_utils.process_allgather(params, tiled=True)
    stage_dir = Path(workdir) / str(result.config.stage.name)
    if jax.process_index() == 0:
        save_stage(stage_dir, params, result.config, dtype)
    return stage_dir


def main(args: argparse.Namespace) -> int:
    train_cli.start_distributed(args)
    from imagen_video_jax.config import load_config
    from imagen_video_jax.train.distill import distill, with_teacher_config
    from imagen_video_jax.train.loop import NonFiniteError

    try:
        config = load_config(args.config, args.overrides)
        params, teacher_config = load_teacher(args.teacher, str(config.stage.name))
        config = with_teacher_config(config, teacher_config, tuple(args.overrides))
        result = distill(
            config,
            params,
            args.workdir,
            data_dir=args.data_dir,
            progress_bar=not args.no_progress,
        )
    except (ValueError, FileNotFoundError) as error:
        print(f"imagen-video distill: error: {error}", file=sys.stderr)
        return 2
    except NonFiniteError as error:
        print(f"imagen-video distill: {error}", file=sys.stderr)
        return 1
    if not result.finished:
        print(
            f"imagen-video distill: stopped in {result.config.stage.name} at step "
            f"{int(result.state.step)}; run the same command again to resume"
        )
        return 0
    stage_dir = export_student(result, args.workdir, args.export_dtype)
    sample = result.config.sample
    print(
        f"distilled {result.config.stage.name}: samples in {sample.num_steps} {sample.sampler} "
        f"steps with w as input; written to {stage_dir}"
    )
    return 0
