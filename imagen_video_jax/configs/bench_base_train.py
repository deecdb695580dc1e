"""bench-base-train of BENCHMARKS.md:
``configs/bench_base_train.py:batch=8,remat=none,mesh=data,attention=auto``.

The base stage of the mini cascade with the benchmark's U-Net (width 128, multipliers
(1, 2, 4, 8), about 250M parameters), 16-frame 64x64 clips and 64 text tokens of width 768.
"""

from __future__ import annotations

import jax
import ml_collections

from imagen_video_jax.config import parse_config_arg
from imagen_video_jax.configs import imagen_video

DEFAULTS = {
    "batch": "8",  # clips per device
    "remat": "none",  # none | block | dots | dots_spatial | dots_attention
    "mesh": "data",  # data: data parallel | fsdp: parameters sharded over all devices
    "attention": "auto",  # model.attention_impl: auto | xla | cudnn | pallas | pallas_cudnn
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = parse_config_arg(arg, DEFAULTS)
    config = imagen_video.get_config("stage=base,size=mini")
    config.model = imagen_video.bench_base_train_model_config()
    config.model.remat = args["remat"]
    config.model.attention_impl = args["attention"]
    config.stage.frames, config.stage.height, config.stage.width = 16, 64, 64
    config.text_encoder.max_length = 64  # precomputed text tokens of width 768
    config.text_encoder.dim = 768
    config.data.batch_size = int(args["batch"]) * jax.device_count()
    config.train.grad_accum_steps = 1
    if args["mesh"] not in ("data", "fsdp"):
        raise ValueError(f"mesh={args['mesh']!r}: expected data or fsdp")
    if args["mesh"] == "fsdp":
        config.mesh.data, config.mesh.fsdp = 1, -1
    return config
