"""``imagen-video prepare NAME``: write a dataset as array_record files (no TensorFlow needed).

Examples::

    imagen-video prepare moving_digits --frames 16 --size 64 --fps 24
    imagen-video prepare photo_motion --config configs/imagen_video.py:stage=ssr1,size=mini
    imagen-video prepare video_folder --root ~/UCF-101 --frames 16 --size 64x80 --fps 8 \\
        --name ucf101 --test-fraction 0.1 --text-encoder minilm
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import logging
import os

from imagen_video_jax.data.storage import default_data_dir, shape_name

DATASETS = ("moving_digits", "photo_motion", "video_folder")
DEFAULT_SHAPE = {"frames": 16, "height": 64, "width": 64}
DEFAULT_FPS = {"moving_digits": 24.0, "photo_motion": 24.0, "video_folder": 8.0}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", choices=DATASETS, help="which dataset to build")
    parser.add_argument(
        "--data-dir",
        default=None,
        help="output root (default $IMAGEN_VIDEO_DATA or ~/tensorflow_datasets)",
    )
    parser.add_argument(
        "--config",
        default=None,
        help="take clip shape and settings from a stage config: configs/imagen_video.py:stage=base",
    )
    parser.add_argument("--frames", type=int, default=None, help="frames per clip")
    parser.add_argument(
        "--size", default=None, help="frame size: HxW or one number for square frames"
    )
    parser.add_argument("--fps", type=float, default=None, help="frames per second")
    parser.add_argument(
        "--name", default=None, help="builder config name (default: from the shape)"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="rebuild even if the dataset exists"
    )
    synthetic = parser.add_argument_group("moving_digits and photo_motion")
    synthetic.add_argument("--num-train", type=int, default=2000, help="training clips")
    synthetic.add_argument(
        "--num-test", type=int, default=200, help="test clips (held-out sources)"
    )
    synthetic.add_argument(
        "--num-images", type=int, default=2000, help="captioned images for joint training"
    )
    synthetic.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="renderer setting, e.g. speed=0.5 or two_digit_prob=0 (repeatable)",
    )
    folder = parser.add_argument_group("video_folder")
    folder.add_argument("--root", help="folder of videos (files or folders of frames)")
    folder.add_argument(
        "--captions", default="", help="CSV or JSONL of path,caption (default: folder names)"
    )
    folder.add_argument(
        "--clips-per-video", type=int, default=1, help="consecutive clips cut from each video"
    )
    folder.add_argument(
        "--test-fraction", type=float, default=0.0, help="share of videos in the test split"
    )
    folder.add_argument(
        "--frames-fps", type=float, default=24.0, help="frame rate of folders of frames"
    )
    folder.add_argument(
        "--text-encoder",
        default=None,
        help="precompute text embeddings with this encoder (e.g. minilm)",
    )
    folder.add_argument(
        "--text-max-length", type=int, default=None, help="tokens per caption for --text-encoder"
    )


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    data_dir = default_data_dir(args.data_dir)
    shape, settings = _shape_and_settings(args)
    name = args.name or _default_name(args, shape)
    builder = _builder(args, name, shape, settings, data_dir)
    import tensorflow_datasets as tfds

    mode = tfds.download.GenerateMode
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(
            download_mode=mode.REUSE_CACHE_IF_EXISTS
            if args.overwrite
            else mode.REUSE_DATASET_IF_EXISTS
        )
    )
    splits = {split: info.num_examples for split, info in builder.info.splits.items()}
    print(f"{args.dataset}/{name} in {builder.data_dir}: {splits}")
    if args.dataset == "video_folder":
        print(builder.summary)
    return 0


def _shape_and_settings(args: argparse.Namespace) -> tuple[dict, dict]:
    """Clip shape (frames, height, width, fps) and renderer settings from --config and flags."""
    shape = dict(DEFAULT_SHAPE, fps=DEFAULT_FPS[args.dataset])
    settings: dict = {}
    if args.config:
        from imagen_video_jax.config import load_config

        config = load_config(args.config)
        shape = {k: config.stage[k] for k in ("frames", "height", "width", "fps")}
        if args.dataset in config.data:
            settings = config.data[args.dataset].to_dict()
    if args.frames is not None:
        shape["frames"] = args.frames
    if args.size is not None:
        shape["height"], shape["width"] = _parse_size(args.size)
    if args.fps is not None:
        shape["fps"] = args.fps
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r} must look like key=value")
        settings[key] = ast.literal_eval(value)
    return shape, settings


def _parse_size(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    if len(parts) not in (1, 2) or not all(p.isdigit() for p in parts):
        raise ValueError(f"--size must be HxW or one number, got {text!r}")
    return int(parts[0]), int(parts[-1])


def _default_name(args: argparse.Namespace, shape: dict) -> str:
    name = shape_name(shape["frames"], shape["height"], shape["width"], shape["fps"])
    if args.dataset == "video_folder":
        folder = os.path.basename(os.path.normpath(args.root or "videos"))
        return f"{folder}_{name}"
    return name


def _builder(args, name: str, shape: dict, settings: dict, data_dir: str):
    """The TFDS builder for the requested dataset and config."""
    if args.dataset == "video_folder":
        from imagen_video_jax.data.video_folder import VideoFolder, VideoFolderConfig

        if not args.root:
            raise ValueError("prepare video_folder needs --root, the folder of videos")
        config = VideoFolderConfig(
            name=name,
            root=os.path.expanduser(args.root),
            captions=args.captions,
            clips_per_video=args.clips_per_video,
            test_fraction=args.test_fraction,
            frames_fps=args.frames_fps,
            **shape,
        )
        return VideoFolder(
            config=config,
            data_dir=data_dir,
            file_format="array_record",
            embed_fn=_embed_fn(args.text_encoder, args.text_max_length),
        )
    if args.dataset == "moving_digits":
        from imagen_video_jax.data.moving_digits import MovingDigits as builder_class
        from imagen_video_jax.data.moving_digits import MovingDigitsConfig as config_class
    else:
        from imagen_video_jax.data.photo_motion import PhotoMotion as builder_class
        from imagen_video_jax.data.photo_motion import PhotoMotionConfig as config_class
    known = {f.name for f in dataclasses.fields(config_class.SPEC)} - set(shape)
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ValueError(
            f"unknown {args.dataset} settings {unknown}; expected some of {sorted(known)}"
        )
    config = config_class(
        name=name,
        num_train=args.num_train,
        num_test=args.num_test,
        num_images=args.num_images,
        **shape,
        **settings,
    )
    return builder_class(config=config, data_dir=data_dir, file_format="array_record")


def _embed_fn(encoder_name: str | None, max_length: int | None):
    """A text encoder's ``encode(captions) -> (emb, mask)``, loaded only when asked for."""
    if not encoder_name:
        return None
    from imagen_video_jax.models import load_text_encoder

    return load_text_encoder(encoder_name, max_length=max_length).encode
