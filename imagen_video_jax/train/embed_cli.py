"""``imagen-video embed``: precompute the frozen text encoder's embeddings of a dataset's captions.

    imagen-video embed --config configs/imagen_video.py:stage=base,size=mini --out captions.npz
    imagen-video train --config ... --set train.text_cache=captions.npz

The cache (models.text_cache) lets training (and sampling) run without the text encoder: the
step looks each caption up, so a machine without the encoder's weights can still train, and no
step spends time on the encoder. For moving_digits the captions are every caption the renderer
can write with the config's settings; other datasets take ``--captions-file`` (one per line).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from imagen_video_jax.config import load_config
from imagen_video_jax.data.captions import caption_vocabulary
from imagen_video_jax.models.text_cache import cache_embeddings
from imagen_video_jax.models.text_encoder import load_text_encoder


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", required=True, help="stage config, e.g. configs/imagen_video.py:stage=base"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field (e.g. data.moving_digits.two_digit_prob=0)",
    )
    parser.add_argument("--out", required=True, type=Path, help="cache file to write (.npz)")
    parser.add_argument("--captions-file", type=Path, help="captions to embed, one per line")
    parser.add_argument(
        "--dtype", choices=("float32", "float16"), default="float16", help="storage precision"
    )


def dataset_captions(config) -> list[str]:
    """Every caption the config's procedural moving_digits data can produce."""
    data = config.data
    if data.dataset != "moving_digits":
        raise ValueError(
            f"the caption list of dataset {data.dataset!r} is not known here: pass "
            "--captions-file with one caption per line"
        )
    digits = data.moving_digits
    return caption_vocabulary(
        two_digits=digits.two_digit_prob > 0,
        bouncing=digits.bounce_prob > 0,
        images=data.get("joint", "none") != "none",
    )


def read_captions(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"captions file {path} does not exist")
    captions = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not captions:
        raise ValueError(f"captions file {path} holds no captions")
    return captions


def main(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.overrides)
    captions = read_captions(args.captions_file) if args.captions_file else dataset_captions(config)
    encoder = config.text_encoder
    text_encoder = load_text_encoder(encoder.name, max_length=encoder.max_length)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cache = cache_embeddings(text_encoder, captions, args.out, dtype=np.dtype(args.dtype))
    size_mb = args.out.stat().st_size / 2**20
    print(
        f"{args.out}: {len(cache.keys)} caption embeddings of {encoder.name} "
        f"(max_length {encoder.max_length}, {args.dtype}), {size_mb:.1f} MB"
    )
    return 0
