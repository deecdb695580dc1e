"""Long and conditional video: NUWA-XL (frame planning of diffusion over diffusion, Mask
Temporal Diffusion in global, local and prefix modes, the autoregressive baseline, T-KLVAE/MTD
training, B-FVD-16 and Avg-FID) and VDM (reconstruction-guided prediction, interpolation,
super-resolution and autoregressive extension)."""

from imagen_video_jax.long_video.generate import (
    METHODS,
    LongVideoModel,
    encode_prompts,
    find_model_dir,
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
from imagen_video_jax.long_video.vdm import (
    VDMSampling,
    WindowSampler,
    extend_stage_video,
    extend_video,
    interpolate_video,
    predict_video,
    super_resolve_video,
)

__all__ = [
    "VDMSampling",
    "WindowSampler",
    "extend_stage_video",
    "extend_video",
    "interpolate_video",
    "predict_video",
    "super_resolve_video",
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
    "find_model_dir",
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
