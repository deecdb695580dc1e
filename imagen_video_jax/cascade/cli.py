"""``imagen-video sample``: text in, video files out.

    imagen-video sample --checkpoints DIR --prompt "a handwritten 7 moving up" --out out.mp4 \
        [--prompts-file F] [--seed 0] [--steps 32 | --steps base=64,tsr1=16] [--guidance 5]
        [--stop-after ssr1] [--save-intermediates]

Writes ``out.mp4``, ``out.gif`` and the contact sheet ``out.png`` (``out_000.mp4``, ... for
several prompts); with ``--save-intermediates`` also each earlier stage's videos
(``out_base.mp4``, ...).

Long videos, two ways:

    imagen-video sample --checkpoints DIR --prompt TEXT --extend-to 64 \
        [--extend-mode reconstruction|replacement] [--reconstruction-weight 2] [--context-frames 8]

VDM autoregressive extension at the base stage of the cascade in DIR (or of a VDM model, which
is saved as a one-stage cascade): the base stage samples its window exactly as plain sampling
does (same seed, same video), then each further window knows the last K frames so far and adds
the rest. The super-resolution stages are not run: they take the base stage's fixed window
length, so the long video is written at the base resolution and frame rate.

    imagen-video sample --long --frames 1024 --checkpoints MODEL --prompts-file story.txt

NUWA-XL diffusion over diffusion with a long-video model (the folder LongVideoModel.save writes,
or the workdir of launch/nuwa_xl_long_video.py): all prompts together are one storyline, prompt
i of P covering frames [i N / P, (i+1) N / P); one video is written.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Callable, Iterator
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
    add_stage_setting_arguments(parser)
    parser.add_argument(
        "--stop-after", choices=STAGE_ORDER, help="last stage to run (default: all present)"
    )
    parser.add_argument(
        "--save-intermediates",
        action="store_true",
        help="also write every earlier stage's videos (<out>_<stage>.mp4/.gif/.png)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_stage_setting_arguments(parser: argparse.ArgumentParser) -> None:
    """--steps, --guidance and --sampler: one value for every stage or STAGE=VALUE,..."""
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoints",
        required=True,
        help="cascade folder: one subfolder per stage (base, tsr1, ...) as `imagen-video train` "
        "writes them (a VDM model: its workdir, holding base/); with --long a long-video model",
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
    add_long_video_arguments(parser)


def add_long_video_arguments(parser: argparse.ArgumentParser) -> None:
    """--extend-to (VDM autoregressive extension) and --long (NUWA-XL)."""
    from imagen_video_jax.long_video.vdm import METHODS

    extension = parser.add_argument_group(
        "autoregressive extension (VDM)",
        "the base stage samples its window as plain sampling does (same seed, same frames), "
        "then each further window knows the last K frames so far and adds the rest; the "
        "super-resolution stages are not run (they take the base window's length), so the "
        "video is written at the base stage's resolution and frame rate. Windows after the "
        "first use the stage's sampler and steps, a constant guidance w and no dynamic "
        "thresholding (x_hat clipped to [-1, 1] unless the config's sample.clip_x is off)",
    )
    extension.add_argument(
        "--extend-to", type=int, metavar="N", help="frames of the video (at least the window's)"
    )
    extension.add_argument(
        "--extend-mode",
        choices=METHODS,
        help="how windows take their known frames: reconstruction guidance or replacement "
        "(default: the config's sample.conditioning, else reconstruction)",
    )
    extension.add_argument(
        "--reconstruction-weight",
        "--guidance-weight",
        dest="reconstruction_weight",
        type=float,
        metavar="W_R",
        help="w_r of reconstruction guidance (default: the config's sample.reconstruction_weight,"
        " else 2)",
    )
    extension.add_argument(
        "--context-frames",
        type=int,
        metavar="K",
        help="known frames of each window (default: the config's sample.context_frames, else "
        "half the window)",
    )
    long = parser.add_argument_group(
        "diffusion over diffusion (NUWA-XL)",
        "--checkpoints is a long-video model (the folder LongVideoModel.save writes, or the "
        "workdir of launch/nuwa_xl_long_video.py); all prompts, in order, are one storyline of "
        "one video (prompt i of P covers frames [i N / P, (i+1) N / P)); progress by depth",
    )
    long.add_argument("--long", action="store_true", help="sample a long-video model")
    long.add_argument(
        "--frames",
        type=int,
        metavar="N",
        help="with --long: frames of the video, 2 to the (L-1)^m + 1 of the model's plan",
    )


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


def check_mode_options(args: argparse.Namespace) -> None:
    """One clear error for options that do not go together."""
    extending = args.extend_to is not None
    if args.long and extending:
        raise ValueError("--long and --extend-to are two ways to a long video; choose one")
    if args.long != (args.frames is not None):
        raise ValueError("--long needs --frames N, and --frames goes with --long")
    extension_only = {
        "--extend-mode": args.extend_mode,
        "--reconstruction-weight": args.reconstruction_weight,
        "--context-frames": args.context_frames,
    }
    given = [name for name, value in extension_only.items() if value is not None]
    if given and not extending:
        raise ValueError(f"{', '.join(given)} only apply with --extend-to N")
    if (args.long or extending) and args.save_intermediates:
        raise ValueError("--save-intermediates has no earlier stages with --long or --extend-to")
    if args.long and args.stop_after:
        raise ValueError("--stop-after names a cascade stage; a long-video model has none")
    if extending and args.stop_after not in (None, STAGE_ORDER[0]):
        raise ValueError(
            f"--extend-to extends the base stage's video and runs no super-resolution stage; "
            f"got --stop-after {args.stop_after}"
        )


# ----------------------------------------------------------------------------- extension


def extension_options(
    stage: Any,
    num_frames: int,
    *,
    method: str | None = None,
    weight: float | None = None,
    context_frames: int | None = None,
    num_steps: Any = None,
    guidance_weight: Any = None,
    sampler: Any = None,
) -> dict[str, Any]:
    """Checked keyword arguments of long_video.vdm.extend_stage_video for the base ``stage``:
    its sampler, steps and guidance weight (with the per-stage overrides applied), the
    conditioning method, w_r and the context frames. Raises before anything compiles."""
    from imagen_video_jax.cascade.specs import apply_overrides, per_stage
    from imagen_video_jax.long_video import vdm

    if stage.distilled:
        raise ValueError(
            f"stage {stage.name!r} is a distilled student (guidance weight as a model input); "
            "extension samples undistilled models: give the teacher's checkpoints"
        )
    window = stage.spec.frames
    if num_frames < window:
        raise ValueError(
            f"--extend-to {num_frames} is below the {window} frames the base stage "
            f"{stage.name!r} makes; give N >= {window}"
        )
    if context_frames is None:
        context_frames = vdm.default_context_frames(stage.config)
    if not 0 < context_frames < window:
        raise ValueError(
            f"--context-frames must be in [1, {window - 1}] for windows of {window} frames; "
            f"got {context_frames}"
        )
    names = [stage.name]
    settings = apply_overrides(
        stage.settings,
        sampler=per_stage(sampler, names, "sampler")[stage.name],
        num_steps=per_stage(num_steps, names, "num_steps")[stage.name],
        guidance_weight=per_stage(guidance_weight, names, "guidance_weight")[stage.name],
    )
    options = {
        "sampler": settings.sampler,
        "num_steps": settings.num_steps,
        "method": method,
        "weight": weight,
    }
    if vdm.sampling_from_config(stage.config, **options).method != "reconstruction" and weight:
        raise ValueError("--reconstruction-weight applies to --extend-mode reconstruction only")
    return {
        "guidance_weight": settings.guidance_weight,
        "context_frames": context_frames,
        **options,
    }


@contextlib.contextmanager
def window_bar(enabled: bool, desc: str, num_frames: int) -> Iterator[Callable | None]:
    """A tqdm bar over the frames of one extended video, moved once per window (None when
    progress is off)."""
    if not enabled:
        yield None
        return
    from tqdm.auto import tqdm

    bar = tqdm(total=num_frames, desc=desc, unit="frame")

    def report(frames: int, total: int) -> None:
        bar.update(frames - bar.n)

    try:
        yield report
    finally:
        bar.close()


def extend_in_batches(
    cascade: Any,
    prompts: list[str],
    *,
    num_frames: int,
    batch_size: int,
    seed: int,
    method: str | None = None,
    weight: float | None = None,
    context_frames: int | None = None,
    num_steps: Any = None,
    guidance_weight: Any = None,
    sampler: Any = None,
    progress: bool = True,
) -> np.ndarray:
    """uint8 videos [prompts, num_frames, H, W, 3] of the cascade's base stage: prompt i's
    window exactly as plain sampling makes it (seed + i, ``batch_size`` prompts together),
    then extended window by window from seed + i (long_video.vdm.extend_stage_video)."""
    from imagen_video_jax.long_video.vdm import extend_stage_video

    stage = cascade.stages_until()[0]
    overrides = {"num_steps": num_steps, "guidance_weight": guidance_weight, "sampler": sampler}
    extension = extension_options(
        stage,
        num_frames,
        method=method,
        weight=weight,
        context_frames=context_frames,
        **overrides,
    )
    first, _ = sample_in_batches(
        cascade,
        prompts,
        batch_size=batch_size,
        seed=seed,
        stop_after=stage.name,
        progress=progress,
        **overrides,
    )
    text = text_mask = None
    if stage.uses_text:
        text, text_mask = cascade.encode(prompts)
    videos = []
    for i in range(len(prompts)):
        with window_bar(progress, f"extending video {i}", num_frames) as report:
            video = extend_stage_video(
                stage.config,
                stage.params,
                num_frames,
                seed=seed + i,
                batch=1,
                text=None if text is None else text[i : i + 1],
                text_mask=None if text_mask is None else text_mask[i : i + 1],
                start=first[i : i + 1],
                progress=report,
                **extension,
            )
        videos.append(video[0])
    return np.stack(videos)


def sample_extended(args: argparse.Namespace, prompts: list[str]) -> list[Path]:
    """--extend-to: the base stage's videos extended to N frames, written as files."""
    from imagen_video_jax.cascade import Cascade, stage_dirs
    from imagen_video_jax.cascade.io import write_samples

    later = list(stage_dirs(args.checkpoints))[1:]
    if later:
        print(f"extending the base stage's videos; stages {later} are not run", file=sys.stderr)
    cascade = Cascade.from_checkpoints(args.checkpoints, stop_after=STAGE_ORDER[0])
    videos = extend_in_batches(
        cascade,
        prompts,
        num_frames=args.extend_to,
        batch_size=args.batch_size,
        seed=args.seed,
        method=args.extend_mode,
        weight=args.reconstruction_weight,
        context_frames=args.context_frames,
        num_steps=args.steps,
        guidance_weight=args.guidance,
        sampler=args.sampler,
        progress=not args.no_progress,
    )
    spec = cascade.output_spec()
    title = (
        f"{spec.name}: {args.extend_to} x {spec.height} x {spec.width} at {spec.fps:g} fps, "
        f"extended from windows of {spec.frames} frames, seed {args.seed}"
    )
    return write_samples(args.out, videos, spec.fps, prompts, title=title)


# ----------------------------------------------------------------------------- NUWA-XL


def check_long_frames(num_frames: int, frames_per_call: int, depth: int) -> None:
    """A clear error unless diffusion over diffusion with L frames a call and depth m makes
    ``num_frames`` frames: 2 to (L-1)^m + 1 (the frames past N of the full lattice are not
    made)."""
    from imagen_video_jax.long_video import lattice_frames

    most = lattice_frames(frames_per_call, depth)
    if 2 <= num_frames <= most:
        return
    lattices = [lattice_frames(frames_per_call, d) for d in range(1, depth + 1)]
    raise ValueError(
        f"--frames {num_frames} is out of reach of this model's plan (L={frames_per_call} "
        f"frames a call, depth m={depth}): it makes 2 to (L-1)^m + 1 = {most} frames; nearest "
        f"valid count: {min(max(num_frames, 2), most)} (full lattices by depth: {lattices})"
    )


def single_value(value: Any, option: str) -> Any:
    """A sampling option as one value (a long-video model has no stages)."""
    if isinstance(value, dict):
        raise ValueError(f"{option} takes one value with --long (no STAGE=VALUE); got {value}")
    return value


def load_long_video_model(path: str | Path) -> Any:
    """The LongVideoModel in ``path``; a cascade folder gets a clear error."""
    from imagen_video_jax.long_video import LongVideoModel, find_model_dir

    path = Path(path).expanduser()
    if find_model_dir(path) is None and any((path / name).is_dir() for name in STAGE_ORDER):
        raise FileNotFoundError(
            f"{path} holds cascade stages, not a long-video model: sample it without --long "
            "(--extend-to N makes longer videos from it); --long needs the folder "
            "LongVideoModel.save writes (config.json and params.msgpack)"
        )
    return LongVideoModel.load(path)


def sample_long(args: argparse.Namespace, prompts: list[str]) -> list[Path]:
    """--long: one video of --frames frames by diffusion over diffusion, written as files."""
    from imagen_video_jax.cascade.io import write_samples
    from imagen_video_jax.long_video import generate_long_video, plan_long_video

    model = load_long_video_model(args.checkpoints)
    frames_per_call = int(model.config.long_video.frames_per_call)
    depth = int(model.config.long_video.depth)
    check_long_frames(args.frames, frames_per_call, depth)
    plan = plan_long_video(args.frames, frames_per_call, depth)
    print(
        f"diffusion over diffusion: {args.frames} frames, L={frames_per_call}, depth {depth}, "
        f"model calls per depth {[r.num_calls for r in plan.rounds]}"
    )
    video = generate_long_video(
        model,
        prompts,
        args.frames,
        seed=args.seed,
        num_steps=single_value(args.steps, "--steps"),
        guidance_weight=single_value(args.guidance, "--guidance"),
        sampler=single_value(args.sampler, "--sampler"),
        progress=not args.no_progress,
    )
    fps = float(model.config.data.fps)
    title = (
        f"{args.frames} x {video.shape[1]} x {video.shape[2]} at {fps:g} fps by diffusion over "
        f"diffusion (L={frames_per_call}, m={depth}), seed {args.seed}"
    )
    return write_samples(args.out, video[None], fps, [" / ".join(prompts)], title=title)


# ----------------------------------------------------------------------------- main


def check_not_long_video_model(path: str | Path) -> None:
    """A clear error when a cascade command is pointed at a long-video model."""
    from imagen_video_jax.long_video import find_model_dir

    path = Path(path).expanduser()
    if find_model_dir(path) is not None and not any((path / n).is_dir() for n in STAGE_ORDER):
        raise FileNotFoundError(
            f"{path} holds a NUWA-XL long-video model, not cascade stages: sample it with "
            "--long --frames N"
        )


def sample_plain(args: argparse.Namespace, prompts: list[str]) -> list[Path]:
    """The cascade (up to --stop-after) on every prompt, written as files."""
    from imagen_video_jax.cascade import Cascade

    cascade = Cascade.from_checkpoints(args.checkpoints, stop_after=args.stop_after)
    final, per_stage = sample_in_batches(
        cascade,
        prompts,
        batch_size=args.batch_size,
        seed=args.seed,
        **sampling_options(args),
    )
    return write_all(
        cascade,
        Path(args.out),
        prompts,
        final,
        per_stage,
        stop_after=args.stop_after,
        seed=args.seed,
        intermediates=args.save_intermediates,
    )


def main(args: argparse.Namespace) -> int:
    try:
        check_mode_options(args)
        prompts = read_prompts(args.prompt, args.prompts_file)
        start = time.perf_counter()
        if args.long:
            written, count = sample_long(args, prompts), 1
        else:
            check_not_long_video_model(args.checkpoints)
            sample = sample_plain if args.extend_to is None else sample_extended
            written, count = sample(args, prompts), len(prompts)
    except (ValueError, FileNotFoundError) as error:
        print(f"imagen-video sample: error: {error}", file=sys.stderr)
        return 2
    print(f"sampled {count} video(s) in {time.perf_counter() - start:.1f} s")
    for path in written:
        print(f"wrote {path}")
    return 0
