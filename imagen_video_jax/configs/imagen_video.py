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
from imagen_video_jax.stages import cascade_stages, stage_spec

DEFAULTS = {"stage": "base", "size": "tiny"}


def stage_config(name: str, size: str) -> ml_collections.ConfigDict:
    """The stage's role and shapes, copied from imagen_video_jax.stages."""
    spec = stage_spec(name, size)
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


# U-Net shape of each stage: (channels, channel_mult, num_res_blocks per level, attention per
# level). "attention" marks the levels with spatial self-attention and text cross-attention;
# fully convolutional stages have none. Paper widths are chosen so that parameter counts land
# within 10% of the paper's (T5-XXL text width; counted in tests/test_param_counts.py).
_UNET_SHAPES = {
    "paper": {
        "base": (768, (1, 2, 3, 4), (3, 3, 3, 4), (False, True, True, True)),  # 5.44B (5.6B)
        "tsr1": (384, (1, 2, 4, 4), (3, 3, 3, 4), (False, False, True, True)),  # 1.62B (1.7B)
        "ssr1": (256, (1, 2, 4, 4, 6), (2, 2, 2, 3, 4), (False, False, True, True, True)),  # 1.38B
        "ssr2": (128, (1, 2, 4, 8, 8, 8), (2, 2, 3, 4, 7, 8), (False,) * 6),  # 1.23B (1.2B)
        "tsr2": (128, (1, 2, 4, 8, 8), (2, 2, 4, 5, 6), (False,) * 5),  # 763M (780M)
        "tsr3": (128, (1, 2, 4, 8, 8), (2, 2, 3, 4, 5), (False,) * 5),  # 633M (630M)
        "ssr3": (128, (1, 2, 4, 6, 6), (1, 2, 3, 4, 4), (False,) * 5),  # 354M (340M)
    },
    "mini": {
        "base": (64, (1, 2, 2), (2, 2, 2), (False, True, True)),
        "tsr1": (64, (1, 2, 2), (2, 2, 2), (False, True, True)),
        "ssr1": (64, (1, 2, 2, 2), (1, 2, 2, 2), (False, False, True, True)),
        "ssr2": (32, (1, 2, 4, 4), (1, 1, 2, 2), (False,) * 4),
        "tsr2": (32, (1, 2, 4, 4), (1, 1, 2, 2), (False,) * 4),
        "tsr3": (32, (1, 2, 4, 4), (1, 1, 2, 2), (False,) * 4),
        "ssr3": (32, (1, 2, 4, 4), (1, 1, 1, 2), (False,) * 4),
    },
}
_TINY_SHAPE = (8, (1, 2), (1, 1), (False, True))  # every tiny stage: ~0.1M params, fast to compile

# Settings that follow the size: attention head width, GroupNorm groups, rematerialisation.
_SIZE_SETTINGS = {
    "paper": {"head_dim": 64, "norm_groups": 32, "remat": "block", "temporal_max_distance": 32},
    "mini": {"head_dim": 32, "norm_groups": 16, "remat": "none", "temporal_max_distance": 32},
    "tiny": {"head_dim": 4, "norm_groups": 4, "remat": "none", "temporal_max_distance": 8},
}


def unet_config(
    shape: tuple,
    *,
    temporal: str,
    fully_convolutional: bool,
    text_dim: int,
    conditional: bool,
    settings: dict,
) -> ml_collections.ConfigDict:
    """A VideoUNet config from a U-Net shape ``(channels, channel_mult, num_res_blocks,
    attention per level)`` and the model's role, every field documented; the NUWA-XL and
    benchmark configs build their U-Nets with it too. ``settings``: head_dim, norm_groups,
    remat, temporal_max_distance."""
    channels, channel_mult, num_res_blocks, attention = shape
    attention = tuple(a and not fully_convolutional for a in attention)
    return ml_collections.ConfigDict(
        {
            "in_channels": 3,  # channels of the noisy video z
            "out_channels": 3,  # channels of the prediction
            "channels": channels,  # width of the first level
            "channel_mult": channel_mult,  # level widths = channels * mult; one level per entry
            "num_res_blocks": num_res_blocks,  # blocks per level, in the encoder and the decoder
            "spatial_attention": attention,  # per level: self-attention within each frame
            "cross_attention": attention,  # per level: attention to the text tokens
            "temporal_mixing": (temporal,) * len(channel_mult),  # per level: attention|conv|none
            "head_dim": settings["head_dim"],  # channels per attention head
            # Temporal attention bias: one learned value per head and frame offset, offsets
            # beyond this distance share the last one.
            "temporal_max_distance": settings["temporal_max_distance"],
            "norm_groups": settings["norm_groups"],  # GroupNorm groups (statistics per frame)
            "emb_channels": 4 * channels,  # width of the noise-level (+ text, aug, w) embedding
            "use_text": True,  # text tokens in: pooled into the embedding, cross-attended
            "text_dim": text_dim,  # width of the text encoder's token embeddings
            "cond_channels": 3 if conditional else 0,  # SR: channels of the low-res video input
            "cond_augmentation": conditional,  # SR: cond_logsnr (its noise level) is an input
            "mask_condition": False,  # NUWA-XL: known frames + mask injected at every level
            "guidance_input": False,  # distilled students: the guidance weight w is an input
            "dropout": 0.0,  # dropout rate inside residual blocks (train=True)
            "dtype": "bfloat16",  # compute dtype (parameters stay float32)
            # auto | xla | cudnn (fused: all attention) | pallas (temporal
            # attention by the Pallas kernels, spatial as auto) | pallas_cudnn (the Pallas
            # kernels, and cuDNN's fused kernel for spatial and cross-attention)
            "attention_impl": "auto",
            # rematerialisation: none | block | dots | dots_spatial | dots_attention
            "remat": settings["remat"],
        }
    )


def model_config(name: str, size: str) -> ml_collections.ConfigDict:
    """VideoUNet hyper-parameters of one stage at one size (see imagen_video_jax.models).

    The base stage mixes frames by temporal attention, super-resolution stages by temporal
    convolution; fully convolutional stages have no attention of any kind (text only through
    the pooled embedding); SR stages take the low-res video and its augmentation level.
    """
    spec = cascade_stages(size)[name]
    shape = _TINY_SHAPE if size == "tiny" else _UNET_SHAPES[size][name]
    return unet_config(
        shape,
        temporal="attention" if spec.role == "base" else "conv",
        fully_convolutional=spec.fully_convolutional,
        text_dim=text_encoder_config(size).dim,
        conditional=spec.role != "base",
        settings=_SIZE_SETTINGS[size],
    )


def bench_base_train_model_config() -> ml_collections.ConfigDict:
    """The bench-base-train U-Net of BENCHMARKS.md: width 128, mults (1, 2, 4, 8), 2 blocks a
    level, spatial attention and cross-attention (64 tokens of width 768) at the two lowest
    levels, temporal attention everywhere, bfloat16; about 250M parameters."""
    return unet_config(
        (128, (1, 2, 4, 8), (2, 2, 2, 2), (False, False, True, True)),
        temporal="attention",
        fully_convolutional=False,
        text_dim=768,
        conditional=False,
        settings={"head_dim": 64, "norm_groups": 32, "remat": "none", "temporal_max_distance": 32},
    )


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
            # Exact frame chunking of the model for stages too large for one device (see
            # imagen_video_jax/cascade/chunked.py); 0 turns each off. frame_chunk: model
            # windows of this many output frames plus the temporal receptive field (temporal
            # convolution only). layer_chunk: frames per chunk of every layer, on by default
            # above 2^26 output values per channel (the paper's 128 x 768 x 1280 stage).
            "frame_chunk": 0,
            "layer_chunk": 16 if spec.frames * spec.height * spec.width > 2**26 else 0,
        }
    )


def data_config(name: str, size: str) -> ml_collections.ConfigDict:
    """Training data of this stage (see imagen_video_jax.data); clips take the stage's output
    shape and frame rate from config.stage, and SR conditioning is derived from them."""
    role = cascade_stages(size)[name].role
    return ml_collections.ConfigDict(
        {
            "dataset": "moving_digits",  # moving_digits | photo_motion | video_folder
            "source": "procedural",  # procedural: rendered on the fly | tfds: prepared records
            "tfds_config": "",  # prepared config to read; "" = the stage's shape: 16x64x64_24fps
            "data_dir": "",  # prepared datasets; "" = $IMAGEN_VIDEO_DATA or ~/tensorflow_datasets
            "batch_size": {"paper": 256, "mini": 32, "tiny": 8}[size],  # global, over processes
            # Joint image-video training: none | vdm (images appended to each clip) | pack
            # (clip-length packs of images replace some clips). TSR stages train on video only.
            "joint": "none" if role == "tsr" else "pack",
            "image_ratio": 0.2,  # pack: share of examples that are packs of images
            "num_appended_images": 4,  # vdm: images appended to each clip (the paper: 4 to 8)
            "crop_height": 0,  # random crop of the target (fully convolutional stages); 0 = none
            "crop_width": 0,  # as crop_height, for the width
            "num_workers": {"paper": 8, "mini": 4, "tiny": 0}[size],  # grain worker processes
            "prefetch": 2,  # batches each worker prepares ahead
            "read_threads": 0,  # threads reading records per process; 0 = in the loop itself
            "shuffle": True,  # shuffle records (each epoch anew)
            "seed": 0,  # sampling order, augmentation and joint-training images
            "num_train_clips": 100_000,  # procedural: clips in one training epoch
            "num_test_clips": 1_000,  # procedural: held-out clips for evaluation
            "num_images": 10_000,  # procedural: captioned images for joint training
            "moving_digits": {
                "speed": 0.3,  # canvas (shorter side) per second; each clip 60-100% of it
                "digit_scale": 0.4,  # digit side / shorter side of its canvas region
                "two_digit_prob": 0.25,  # share of clips with two digits (top and bottom)
                "bounce_prob": 0.0,  # share of digits bouncing off the walls
                "seed": 0,  # which clips the procedural dataset holds
            },
            "photo_motion": {
                "pan_speed": 0.25,  # window widths per second when panning or tilting
                "zoom_speed": 0.3,  # change of log window size per second when zooming
                "rotate_speed": 20.0,  # degrees per second when rotating
                "seed": 0,  # which clips the procedural dataset holds
            },
        }
    )


def train_config(name: str, size: str) -> ml_collections.ConfigDict:
    """Optimizer, schedule, EMA, checkpointing and logging (see imagen_video_jax.train)."""
    small = size != "paper"
    steps = {"tiny": 200, "mini": 50_000, "paper": 1_000_000}[size]
    return ml_collections.ConfigDict(
        {
            "seed": 0,  # seeds init, noise and dropout (folded by step); data: data.seed
            "num_steps": steps,  # optimizer steps to train for
            "learning_rate": 1e-3 if size == "tiny" else 1e-4,  # peak AdamW learning rate
            "lr_schedule": "cosine" if small else "constant",  # after warm-up: cosine | constant
            "warmup_steps": {"tiny": 10, "mini": 1000, "paper": 10_000}[size],  # linear from 0
            "end_lr_factor": 0.1,  # cosine: final learning rate / peak learning rate
            "adam_b1": 0.9,  # AdamW first-moment decay
            "adam_b2": 0.99,  # AdamW second-moment decay
            "adam_eps": 1e-8,  # AdamW epsilon
            "weight_decay": 0.0,  # AdamW decoupled weight decay, on kernels only (ndim >= 2)
            "grad_clip_norm": 1.0,  # clip gradients to this global norm; 0 disables
            # Learning-rate factors of the params under a path prefix, {"a/b": 10.0}; {}: none.
            "lr_multipliers": {},
            "grad_accum_steps": 1,  # micro-batches per step (data.batch_size divides evenly)
            "ema_decay": {"tiny": 0.99, "mini": 0.999, "paper": 0.9999}[size],  # EMA of params
            "max_nonfinite_steps": 10,  # stop after this many NaN/inf steps in a row
            "text_source": "auto",  # auto | batch (precomputed text_emb) | encoder (on tokens)
            # Path of a caption-embedding cache (.npz, `imagen-video embed`): the
            # step then looks captions up instead of running the text encoder. '': no cache.
            "text_cache": "",
            "checkpoint_every": {"tiny": 50, "mini": 1000, "paper": 5000}[size],  # steps
            "keep_checkpoints": 3,  # newest checkpoints kept on disk
            "async_checkpointing": True,  # write checkpoints while training goes on
            "log_every": {"tiny": 5, "mini": 50, "paper": 100}[size],  # scalars to TB/JSONL
            "sample_every": {"tiny": 0, "mini": 5000, "paper": 20_000}[size],  # 0: no samples
            "num_samples": 4,  # videos per periodic sample, from the EMA params
            "sample_steps": 32,  # DDIM steps of periodic samples (cheap previews)
        }
    )


def distill_config(name: str, size: str) -> ml_collections.ConfigDict:
    """Guided and progressive distillation of this stage (``imagen-video distill``, see
    imagen_video_jax.train.distill): round 0 teaches the student (the teacher plus a
    guidance-weight input) the teacher's classifier-free-guided prediction; every later round
    halves its sampling steps, from ``start_steps`` down to ``final_steps``."""
    steps = {"tiny": 20, "mini": 2000, "paper": 50_000}[size]
    return ml_collections.ConfigDict(
        {
            # Round 0 draws w ~ U[w_min, w_max] per example (later rounds too: the student
            # keeps every w); the range holds the stage's sampling weight.
            "guidance_range": (0.0, sample_config(name, size).guidance_weight),
            # SR stages: the low-res video's noise level while distilling. "train" draws it
            # from the training range, as the teacher saw it; "sample" fixes it at the level
            # the stage samples with (diffusion.cond_aug_logsnr_sample). On the mini cascade
            # "sample" lost: ssr3 75 -> 37.5 % caption accuracy (docs/RESULTS.md, 4th run).
            "cond_aug": "train",
            "guided_steps": steps,  # optimizer steps of round 0 (guided distillation)
            "steps_per_round": steps,  # optimizer steps of each halving round
            "start_steps": 0,  # the teacher's sampling steps; 0 = sample.num_steps
            "final_steps": 8,  # the student's steps after the last round (start / 2^k)
            "learning_rate": 1e-3 if size == "tiny" else 5e-5,  # peak AdamW rate of each round
            "lr_schedule": "cosine",  # per round, after warm-up: cosine | constant
            "warmup_steps": {"tiny": 2, "mini": 100, "paper": 1000}[size],  # per round
            "ema_decay": {"tiny": 0.9, "mini": 0.999, "paper": 0.9999}[size],  # student EMA
            # Learning-rate factor of the student's guidance-weight embedding, which starts at
            # zero (the ssr3 student's stayed small and ignored w: docs/RESULTS.md, 7th run).
            "guidance_lr_multiplier": 1.0,
        }
    )


def mesh_config(size: str) -> ml_collections.ConfigDict:
    """Device mesh and logical-axis rules (see imagen_video_jax.parallel)."""
    from imagen_video_jax.parallel.mesh import DEFAULT_RULES

    paper = size == "paper"
    return ml_collections.ConfigDict(
        {
            "data": 1 if paper else -1,  # data-parallel replicas; -1 takes the devices left
            "fsdp": -1 if paper else 1,  # params, optimizer state and batch split this many ways
            "tensor": 1,  # model-parallel split of MLP channels and attention heads
            # (logical axis, mesh axes) pairs, first match wins: batch -> (data, fsdp),
            # embed -> fsdp, mlp/heads -> tensor, everything else replicated.
            "rules": DEFAULT_RULES,
        }
    )


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
    config.distill = distill_config(name, size)
    config.mesh = mesh_config(size)
    return config
