"""Datasets and grain pipelines: moving digits, photo motion, user video folders; per-stage
training pairs, joint image-video batches, sharded checkpointable iterators."""

from imagen_video_jax.data.captions import (
    BOUNCING,
    DIRECTION_STEPS,
    DIRECTIONS,
    MOTIONS,
    digit_phrase,
    digits_caption,
    parse_caption,
    parse_caption_pairs,
)
from imagen_video_jax.data.moving_digits import MovingDigits, MovingDigitsConfig, MovingDigitsSpec
from imagen_video_jax.data.photo_motion import PhotoMotion, PhotoMotionConfig, PhotoMotionSpec
from imagen_video_jax.data.pipeline import (
    EvalSource,
    StageShape,
    make_eval_source,
    make_train_iterator,
    open_sources,
)
from imagen_video_jax.data.storage import default_data_dir, shape_name
from imagen_video_jax.data.video_folder import VideoFolder, VideoFolderConfig
from imagen_video_jax.data.video_ops import conditioning_video

__all__ = [
    "BOUNCING",
    "DIRECTIONS",
    "DIRECTION_STEPS",
    "MOTIONS",
    "EvalSource",
    "MovingDigits",
    "MovingDigitsConfig",
    "MovingDigitsSpec",
    "PhotoMotion",
    "PhotoMotionConfig",
    "PhotoMotionSpec",
    "StageShape",
    "VideoFolder",
    "VideoFolderConfig",
    "conditioning_video",
    "default_data_dir",
    "digit_phrase",
    "digits_caption",
    "make_eval_source",
    "make_train_iterator",
    "open_sources",
    "parse_caption",
    "parse_caption_pairs",
    "shape_name",
]
