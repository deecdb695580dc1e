"""NUWA-XL long videos: frame planning of diffusion over diffusion, Mask Temporal Diffusion
(global, local and prefix modes), the autoregressive baseline, T-KLVAE/MTD training on the
bundled data, and the long-video metrics (B-FVD-16, Avg-FID)."""

from imagen_video_jax.long_video.generate import (
    METHODS,
    LongVideoModel,
    encode_prompts,
    generate_long_video,
    make_plan,
    run_plan,
    sample_long_latents,
)
from imagen_video_jax.long_video.metrics import avg_frame_fid, block_fvd, video_blocks
from imagen_video_jax.long_video.mtd import (
    MASK_MODES,
    SamplingOptions,
    SegmentSampler,
    mode_mask,
    mtd_loss,
)
from imagen_video_jax.long_video.planning import (
    FramePlan,
    Round,
    lattice_frames,
    plan_autoregressive,
    plan_frames,
    plan_long_video,
    smallest_depth,
)

__all__ = [
    "MASK_MODES",
    "METHODS",
    "FramePlan",
    "LongVideoModel",
    "Round",
    "SamplingOptions",
    "SegmentSampler",
    "avg_frame_fid",
    "block_fvd",
    "encode_prompts",
    "generate_long_video",
    "lattice_frames",
    "make_plan",
    "mode_mask",
    "mtd_loss",
    "plan_autoregressive",
    "plan_frames",
    "plan_long_video",
    "run_plan",
    "sample_long_latents",
    "smallest_depth",
    "video_blocks",
]
