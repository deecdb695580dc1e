"""Video Diffusion Models (Ho et al. 2022) at small scale on moving digits:
``configs/vdm.py:images=4,cond=text,size=small,motion=straight,res=32``.

Arguments:
  images  independent images appended to each training clip for joint image-video training,
          marked in frame_mask so temporal attention leaves them alone (paper: 0, 4 or 8)
  cond    none: unconditional | class: one-digit clips moving straight, whose captions are the
          class names ("a handwritten 7 moving up", 80 classes; "a handwritten 7 bouncing
          around" with motion=bounce), through the text encoder | text: free captions (one or
          two digits)
  size    small: 16-frame clips, trains on one GPU in minutes | tiny: CPU tests
  motion  straight: each digit moves in one of eight directions | bounce: digits bounce off the
          walls, so clips of any length move alike (for extension to 64 frames and beyond)
  res     small: frame side in pixels, 32 or 64 (tiny is always 8 frames of 16x16)

The model is VDM's factorized space-time U-Net: 3x3 convolutions within each frame (1x3x3),
spatial self-attention within each frame at the lower resolutions, and temporal self-attention
over the frames at every level with a learned relative-position bias; text (cond=text|class) is
cross-attended and its pooled embedding added to the noise-level embedding. Every other section
(diffusion, train, mesh, text_encoder) is configs/imagen_video.py's base stage (size small uses
its 'mini' settings), with the changes set and documented below.
"""

from __future__ import annotations

import ml_collections

from imagen_video_jax.config import parse_config_arg
from imagen_video_jax.configs import imagen_video

DEFAULTS = {"images": "4", "cond": "text", "size": "small", "motion": "straight", "res": "32"}
CONDITIONS = ("none", "class", "text")
SIZES = {"small": "mini", "tiny": "tiny"}  # VDM size -> the imagen_video.py size it builds on
MOTIONS = ("straight", "bounce")
# U-Net shape per (size, res): (channels, channel_mult, num_res_blocks, spatial attention).
UNET_SHAPES = {
    ("small", 32): (64, (1, 2, 4), (2, 2, 2), (False, True, True)),
    ("small", 64): (64, (1, 2, 3, 4), (2, 2, 2, 2), (False, False, True, True)),
    ("tiny", 16): (8, (1, 2), (1, 1), (False, True)),
}


def parse_args(arg: str | None) -> dict:
    """The checked arguments: images (int >= 0), cond, size, motion, res (int)."""
    args = parse_config_arg(arg, DEFAULTS)
    for key, choices in (("cond", CONDITIONS), ("size", tuple(SIZES)), ("motion", MOTIONS)):
        if args[key] not in choices:
            raise ValueError(f"configs/vdm.py: {key} must be one of {choices}; got {args[key]!r}")
    for key in ("images", "res"):
        if not args[key].isdigit():
            raise ValueError(f"configs/vdm.py: {key} must be an integer >= 0; got {args[key]!r}")
        args[key] = int(args[key])
    if args["size"] == "tiny":
        args["res"] = 16
    if (args["size"], args["res"]) not in UNET_SHAPES:
        raise ValueError(f"configs/vdm.py: res must be 32 or 64 for size=small; got {args['res']}")
    return args


def stage_config(size: str, res: int) -> ml_collections.ConfigDict:
    """What the model makes: a 16-frame clip (8 for tiny) of res x res pixels at 8 fps."""
    return ml_collections.ConfigDict(
        {
            "name": "base",  # trained and sampled as a cascade's first stage (text -> video)
            "size": size,  # small | tiny
            "role": "base",  # no low-resolution input
            "frames": 16 if size == "small" else 8,  # frames of a clip (the sampling window)
            "height": res,  # frame height
            "width": res,  # frame width
            "fps": 8.0,  # frame rate; a straight digit crosses most of the canvas in 16 frames
            "temporal_factor": 1,  # no temporal super-resolution
            "spatial_factor": 1,  # no spatial super-resolution
            "fully_convolutional": False,  # has attention
        }
    )


def update_model(model: ml_collections.ConfigDict, args: dict) -> None:
    """The factorized space-time U-Net over the base stage's model fields (all documented in
    configs/imagen_video.py; the fields set here say what VDM changes)."""
    channels, channel_mult, num_res_blocks, attention = UNET_SHAPES[(args["size"], args["res"])]
    text = args["cond"] != "none"
    levels = len(channel_mult)
    model.update(
        {
            "channels": channels,  # width of the first level
            "channel_mult": channel_mult,  # level widths = channels * mult
            "num_res_blocks": num_res_blocks,  # residual blocks per level
            "spatial_attention": attention,  # per level: self-attention within each frame
            "cross_attention": attention if text else (False,) * levels,  # text tokens
            "temporal_mixing": ("attention",) * levels,  # temporal attention at every level
            # Relative-position bias: one learned value per head and frame offset up to this
            # distance (covers every pair of a 16-frame clip).
            "temporal_max_distance": 32 if args["size"] == "small" else 8,
            "emb_channels": 4 * channels,  # width of the noise-level (+ pooled text) embedding
            "use_text": text,  # cond=class|text: captions through the frozen text encoder
        }
    )


def sample_config(size: str, cond: str) -> ml_collections.ConfigDict:
    """How windows are sampled (long_video.vdm and the cascade's base-stage sampler)."""
    small = size == "small"
    return ml_collections.ConfigDict(
        {
            "sampler": "ddim",  # ddim | ancestral | stochastic | pc
            "num_steps": 128 if small else 8,  # model evaluations per window
            "guidance_weight": 0.0 if cond == "none" else 1.0,  # classifier-free w (0: none)
            "oscillating": False,  # constant guidance weight
            "dynamic_threshold": 0.0,  # no dynamic thresholding: x_hat is clipped (clip_x)
            "clip_x": True,  # clip x_hat to [-1, 1] each step (known frames stay exact)
            # Conditional sampling and extension: reconstruction (guidance) | replacement.
            "conditioning": "reconstruction",
            "reconstruction_weight": 2.0,  # w_r of reconstruction guidance
            "context_frames": 8 if small else 4,  # extension: known frames from the window before
        }
    )


def update_data(data: ml_collections.ConfigDict, args: dict) -> None:
    """Joint image-video training with appended images (VDM) on moving digits."""
    images = args["images"]
    data.update(
        {
            "joint": "vdm" if images else "none",  # images appended to each clip, or none
            "num_appended_images": images,  # images per clip (same digit as the clip)
            "batch_size": 32 if args["size"] == "small" else 4,  # clips per global batch
        }
    )
    data.moving_digits.update(
        {
            "two_digit_prob": 0.0 if args["cond"] == "class" else 0.25,  # class: one digit
            "bounce_prob": 1.0 if args["motion"] == "bounce" else 0.0,  # share bouncing
        }
    )


def update_train(train: ml_collections.ConfigDict, size: str) -> None:
    """Short runs: a few thousand steps (launch scripts set train.num_steps)."""
    if size != "small":
        return
    train.update(
        {
            "num_steps": 4000,  # optimizer steps
            "learning_rate": 3e-4,  # peak AdamW learning rate
            "warmup_steps": 200,  # linear warm-up from 0
            "ema_decay": 0.999,  # EMA of the params used for sampling
            "checkpoint_every": 1000,  # steps between checkpoints
            "log_every": 100,  # steps between logged scalars
            "sample_every": 0,  # no preview samples during training
        }
    )


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = parse_args(arg)
    config = imagen_video.get_config(f"stage=base,size={SIZES[args['size']]}")
    config.vdm = ml_collections.ConfigDict(
        {
            "images": args["images"],  # appended images per clip (the config argument)
            "cond": args["cond"],  # none | class | text
            "motion": args["motion"],  # straight | bounce
        }
    )
    config.stage = stage_config(args["size"], args["res"])
    update_model(config.model, args)
    config.diffusion.resolution_shift = 0.0  # one resolution: the plain cosine schedule
    config.sample = sample_config(args["size"], args["cond"])
    update_data(config.data, args)
    update_train(config.train, args["size"])
    return config
