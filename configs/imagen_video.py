"""Imagen Video cascade stages: ``configs/imagen_video.py:stage=<name>,size=<paper|mini|tiny>``.

One file describes every stage of the seven-stage cascade at three sizes:
  paper  the paper's seven models (5.6B ... 340M parameters) and T5-XXL;
  mini   the same roles and scale factors, small enough to train on one GPU in minutes;
  tiny   for CPU tests.
"""

from __future__ import annotations

import ml_collections

from imagen_video_jax.config import parse_config_arg
from imagen_video_jax.stages import cascade_stages

DEFAULTS = {"stage": "base", "size": "tiny"}


def stage_config(name: str, size: str) -> ml_collections.ConfigDict:
    """The stage's role and shapes, copied from imagen_video_jax.stages."""
    spec = cascade_stages(size)[name]
    return ml_collections.ConfigDict(
        {
            "name": name,  # one of base, tsr1, ssr1, ssr2, tsr2, tsr3, ssr3
            "size": size,  # paper | mini | tiny
            "role": spec.role,  # base | tsr | ssr
            "frames": spec.frames,  # output frames
            "height": spec.height,  # output height
            "width": spec.width,  # output width
            "fps": spec.fps,  # output frame rate
            "temporal_factor": spec.temporal_factor,  # output / input frames
            "spatial_factor": spec.spatial_factor,  # output / input height and width
            "fully_convolutional": spec.fully_convolutional,  # no attention; may train on crops
        }
    )


def text_encoder_config(size: str) -> ml_collections.ConfigDict:
    """Frozen text encoder: T5-XXL for the paper, MiniLM (shipped offline) for small sizes."""
    if size == "paper":
        return ml_collections.ConfigDict({"name": "t5-v1_1-xxl", "max_length": 64, "dim": 4096})
    return ml_collections.ConfigDict({"name": "minilm", "max_length": 32, "dim": 384})


def model_config(name: str, size: str) -> ml_collections.ConfigDict:
    """VideoUNet hyper-parameters of one stage at one size (see imagen_video_jax.models)."""
    raise NotImplementedError  # filled in with the VideoUNet


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = parse_config_arg(arg, DEFAULTS)
    name, size = args["stage"], args["size"]
    config = ml_collections.ConfigDict()
    config.stage = stage_config(name, size)
    config.text_encoder = text_encoder_config(size)
    config.model = model_config(name, size)
    return config
