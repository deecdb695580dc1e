"""The cascaded sampler: text -> base video -> super-resolution stages -> uint8 video, and
the files it writes (MP4, GIF, captioned PNG contact sheets)."""

from imagen_video_jax.cascade.cascade import Cascade, CascadeStage, check_prompts
from imagen_video_jax.cascade.checkpoints import load_stage, save_stage, stage_dirs
from imagen_video_jax.cascade.sampler import StageSampler
from imagen_video_jax.cascade.specs import SamplingSettings, check_chain, spec_from_config

__all__ = [
    "Cascade",
    "CascadeStage",
    "SamplingSettings",
    "StageSampler",
    "check_chain",
    "check_prompts",
    "load_stage",
    "save_stage",
    "spec_from_config",
    "stage_dirs",
]
