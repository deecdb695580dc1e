"""NUWA-XL on the bundled moving digits.

``configs/nuwa_xl.py:size=<small|tiny>,space=<latent|pixel>``:

  small  one GPU in minutes: 32x32 bouncing digits, T-KLVAE to 8x8x4 latents, L=16 frames a
         call, depth m=3 ((L-1)^m + 1 = 3376 frames; 1024-frame videos by default);
  tiny   CPU tests and smoke runs: 16x16 pixels, L=5, m=2 (17 frames).
``space=pixel`` drops the T-KLVAE and diffuses pixels directly.

The MTD model is a VideoUNet built like the cascade's (configs/imagen_video.py) with
``mask_condition=True``; its training and sampling are in imagen_video_jax.long_video.
"""

from __future__ import annotations

import ml_collections

from imagen_video_jax.config import parse_config_arg
from imagen_video_jax.configs import imagen_video

DEFAULTS = {"size": "small", "space": "latent"}

# (frames per call L, depth m, frame height/width, decode/VAE clip length) per size
_SHAPES = {"small": (16, 3, 32, 16), "tiny": (5, 2, 16, 4)}


def long_video_config(size: str) -> ml_collections.ConfigDict:
    frames_per_call, depth, _, _ = _SHAPES[size]
    return ml_collections.ConfigDict(
        {
            "frames_per_call": frames_per_call,  # L: frames made by one MTD call
            "depth": depth,  # m: global pass + (m - 1) local depths; (L-1)^m + 1 frames
            "num_frames": 1024 if size == "small" else 17,  # default length of a long video
            # Autoregressive baseline: frames known in each sliding window (the last ones made);
            # each window makes L - context new frames.
            "context": 4 if size == "small" else 2,
            "decode_batch": 64,  # T-KLVAE decode: chunks of vae_train.clip_frames per call
        }
    )


def vae_config(size: str) -> ml_collections.ConfigDict:
    small = size == "small"
    return ml_collections.ConfigDict(
        {
            "in_channels": 3,  # video channels
            "latent_channels": 4,  # channels of the latent (diagonal Gaussian posterior)
            "channels": 64 if small else 8,  # width of the first level
            # level widths = channels * mult; len - 1 stride-2 downsamplings (x4 for small)
            "channel_mult": (1, 2, 2) if small else (1, 2),
            "num_res_blocks": 1,  # residual blocks per encoder level (decoder: one more)
            "norm_groups": 16 if small else 4,  # GroupNorm groups (statistics per frame)
            "head_dim": 32 if small else 8,  # attention head width in the middle blocks
            "temporal": True,  # T-KLVAE: identity-initialised temporal conv + attention
            "temporal_max_distance": 16,  # temporal attention: offsets beyond share a bias
            "dtype": "float32",  # compute dtype (params float32)
        }
    )


def vae_train_config(size: str) -> ml_collections.ConfigDict:
    small = size == "small"
    return ml_collections.ConfigDict(
        {
            "image_steps": 3000 if small else 20,  # phase 1: the image KL-VAE on single frames
            "video_steps": 1000 if small else 10,  # phase 2: inflated T-KLVAE on clips
            "image_batch_size": 64 if small else 8,  # frames per image step
            "batch_size": 8 if small else 2,  # clips per video step
            "clip_frames": _SHAPES[size][3],  # frames per clip; also the decode chunk length
            "learning_rate": 1e-3 if small else 2e-3,  # peak AdamW learning rate
            "warmup_steps": 100 if small else 2,  # linear warm-up, then cosine to 10%
            "kl_weight": 1e-4,  # loss = L1 reconstruction + kl_weight * KL (both means)
            "ema_decay": 0.999 if small else 0.9,  # EMA of the params (the saved weights)
            "log_every": 250 if small else 10,  # steps between log lines
        }
    )


def model_config(size: str, space: str) -> ml_collections.ConfigDict:
    """The MTD VideoUNet (fields documented in configs/imagen_video.py's unet_config)."""
    small = size == "small"
    shape = (
        (64, (1, 2, 2), (2, 2, 2), (False, True, True))
        if small
        else (8, (1, 2), (1, 1), (False, True))
    )
    settings = (
        {"head_dim": 32, "norm_groups": 16, "remat": "none", "temporal_max_distance": 16}
        if small
        else {"head_dim": 4, "norm_groups": 4, "remat": "none", "temporal_max_distance": 8}
    )
    config = imagen_video.unet_config(
        shape,
        temporal="attention",
        fully_convolutional=False,
        text_dim=text_encoder_config().dim,
        conditional=False,
        settings=settings,
    )
    channels = vae_config(size).latent_channels if space == "latent" else 3
    config.in_channels = channels  # latent channels (or RGB in pixel space)
    config.out_channels = channels
    config.mask_condition = True  # MTD: known frames + mask injected at every level
    config.dtype = "bfloat16" if small else "float32"
    return config


def text_encoder_config() -> ml_collections.ConfigDict:
    """MiniLM (shipped offline), as the cascade's small sizes."""
    return imagen_video.text_encoder_config("mini")


def diffusion_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        {
            "prediction": "v",  # v | eps | x
            "schedule": "cosine",  # cosine | linear log-SNR schedule
            "logsnr_min": -20.0,  # log-SNR at t = 1
            "logsnr_max": 20.0,  # log-SNR at t = 0
            "resolution_shift": 0.0,  # cosine shift 2 log(base_res / res); none here
            "text_drop_prob": 0.1,  # text dropped to the null embedding for CFG
        }
    )


def sample_config(size: str) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        {
            "sampler": "ddim",  # ddim | ancestral | stochastic | pc
            "num_steps": 50 if size == "small" else 4,  # model evaluations per MTD call
            "guidance_weight": 1.0,  # classifier-free guidance w; 0 = conditional only
            "replacement": True,  # also impose known frames by the replacement method
        }
    )


def mtd_train_config(size: str) -> ml_collections.ConfigDict:
    small = size == "small"
    return ml_collections.ConfigDict(
        {
            "num_steps": 6000 if small else 10,  # optimizer steps
            "batch_size": 32 if small else 2,  # L-frame examples per step
            "learning_rate": 3e-4 if small else 1e-3,  # peak AdamW learning rate
            "warmup_steps": 200 if small else 2,  # linear warm-up, then cosine to 10%
            "ema_decay": 0.999 if small else 0.9,  # EMA of the params (the saved weights)
            # Probabilities of the example modes: global (no frame known, stride (L-1)^(m-1)),
            # local (first + last known, a random depth's stride), prefix (first 1..context
            # frames known, stride 1: the autoregressive baseline's windows).
            "mode_probs": (0.3, 0.5, 0.2),
            "log_every": 250 if small else 5,  # steps between log lines
        }
    )


def data_config(size: str) -> ml_collections.ConfigDict:
    frames_per_call, depth, side, clip = _SHAPES[size]
    lattice = (frames_per_call - 1) ** depth + 1  # frames of diffusion over diffusion
    frames = -(-(lattice + lattice // 2) // clip) * clip
    return ml_collections.ConfigDict(
        {
            "height": side,  # frame height
            "width": side,  # frame width
            "fps": 8.0,  # frame rate of the long videos
            # Long training videos: the lattice plus room for random offsets, a multiple of
            # vae_train.clip_frames (latents are encoded in those chunks).
            "video_frames": frames,
            "num_videos": 32 if size == "small" else 2,  # long training videos rendered
            "num_eval_videos": 8 if size == "small" else 2,  # held-out real videos (test split)
            "speed": 0.3,  # canvas (shorter side) per second; each video 60-100% of it
            "digit_scale": 0.4,  # digit side / canvas side
            "two_digit_prob": 0.0,  # share of videos with two digits
            "bounce_prob": 1.0,  # digits bounce off the walls, so motion lasts the whole video
            "seed": 0,  # which videos the renderer makes
        }
    )


def eval_config(size: str) -> ml_collections.ConfigDict:
    small = size == "small"
    return ml_collections.ConfigDict(
        {
            "num_videos": 4 if small else 2,  # generated long videos per method
            "block": 16,  # B-FVD-16 and Avg-FID time blocks
            "frame_stride": 8 if small else 1,  # Avg-FID: every n-th frame gets features
        }
    )


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = parse_config_arg(arg, DEFAULTS)
    size, space = args["size"], args["space"]
    if size not in _SHAPES:
        raise ValueError(f"size must be one of {sorted(_SHAPES)}; got {size!r}")
    if space not in ("latent", "pixel"):
        raise ValueError(f"space must be 'latent' or 'pixel'; got {space!r}")
    config = ml_collections.ConfigDict()
    config.space = space  # latent: MTD diffuses T-KLVAE latents; pixel: frames directly
    config.long_video = long_video_config(size)
    config.vae = vae_config(size)
    config.vae_train = vae_train_config(size)
    config.model = model_config(size, space)
    config.text_encoder = text_encoder_config()
    config.diffusion = diffusion_config()
    config.sample = sample_config(size)
    config.mtd_train = mtd_train_config(size)
    config.data = data_config(size)
    config.eval = eval_config(size)
    return config
