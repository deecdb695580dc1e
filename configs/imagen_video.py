"""Imagen Video cascade stages: ``configs/imagen_video.py:stage=<name>,size=<paper|mini|tiny>``.

One file describes every stage of the seven-stage cascade at three sizes:
  paper  the paper's seven models (5.6B ... 340M parameters) and T5-XXL;
  mini   the same roles and scale factors, small enough to train on one GPU in minutes;
  tiny   for CPU tests.
"""

from __future__ import annotations

import math

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


def diffusion_config(name: str, size: str) -> ml_collections.ConfigDict:
    """Noise schedule, parameterization and noise-conditioning augmentation."""
    spec = cascade_stages(size)[name]
    base = cascade_stages(size)["base"]
    return ml_collections.ConfigDict(
        {
            "prediction": "v",  # v | eps | x (v is the paper's choice)
            "schedule": "cosine",  # cosine | linear log-SNR schedule
            "logsnr_min": -20.0,  # log-SNR at t = 1
            "logsnr_max": 20.0,  # log-SNR at t = 0
            # Shift of the cosine schedule, 2 log(base_res / res): high-resolution stages see
            # more noise at the same t (0 for stages at the base resolution).
            "resolution_shift": 2.0 * math.log(base.height / spec.height),
            "cond_aug_logsnr_range": (-1.0, 10.0),  # train: cond noised at U(range) log-SNR
            "cond_aug_logsnr_sample": math.log(3.0),  # sample: fixed cond level (SNR 3)
            "text_drop_prob": 0.1,  # text dropped to the null embedding for CFG
        }
    )


def sample_config(name: str, size: str) -> ml_collections.ConfigDict:
    """How this stage samples inside the cascade (undistilled defaults)."""
    spec = cascade_stages(size)[name]
    return ml_collections.ConfigDict(
        {
            "sampler": "ddim",  # ddim | ancestral | stochastic | pc
            "num_steps": 256 if name == "base" else 128,  # paper: 256 base, 128 SR
            "guidance_weight": 15.0 if spec.height * spec.width <= 48 * 80 else 5.0,
            # Oscillating guidance (w, 1, w, 1, ...) after a constant-w start, only for stages
            # at or below 80x48 (the paper's rule); higher stages use constant w.
            "oscillating": spec.height * spec.width <= 48 * 80,
            "dynamic_threshold": 0.995,  # percentile for dynamic thresholding; 0 disables
        }
    )


def data_config(name: str, size: str) -> ml_collections.ConfigDict:
    """Training data of this stage (see imagen_video_jax.data)."""
    return ml_collections.ConfigDict()


def train_config(name: str, size: str) -> ml_collections.ConfigDict:
    """Optimizer, schedule, EMA, checkpointing and logging (see imagen_video_jax.train)."""
    return ml_collections.ConfigDict()


def mesh_config(size: str) -> ml_collections.ConfigDict:
    """Device mesh and logical-axis rules (see imagen_video_jax.parallel)."""
    return ml_collections.ConfigDict()


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = parse_config_arg(arg, DEFAULTS)
    name, size = args["stage"], args["size"]
    config = ml_collections.ConfigDict()
    config.stage = stage_config(name, size)
    config.text_encoder = text_encoder_config(size)
    config.model = model_config(name, size)
    config.diffusion = diffusion_config(name, size)
    config.sample = sample_config(name, size)
    config.data = data_config(name, size)
    config.train = train_config(name, size)
    config.mesh = mesh_config(size)
    return config
