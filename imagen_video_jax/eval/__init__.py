"""Evaluation: FVD and KVD from I3D features, caption accuracy for moving_digits, and the
per-stage evaluation of a cascade beside real-data and noise baselines.

The I3D and caption-classifier weights are loaded on first use and kept for the process.
"""

from imagen_video_jax.eval.caption_classifier import caption_accuracy, load_classifier
from imagen_video_jax.eval.cascade_eval import (
    CachedTextEncoder,
    evaluate_cascade,
    held_out_prompts,
    markdown_table,
)
from imagen_video_jax.eval.distances import (
    feature_stats,
    frechet_distance,
    frechet_distance_of_features,
    fvd,
    kernel_distance,
    kvd,
    polynomial_mmd,
    reference_features,
)
from imagen_video_jax.eval.i3d import i3d_features

__all__ = [
    "CachedTextEncoder",
    "caption_accuracy",
    "evaluate_cascade",
    "feature_stats",
    "frechet_distance",
    "frechet_distance_of_features",
    "fvd",
    "held_out_prompts",
    "i3d_features",
    "kernel_distance",
    "kvd",
    "load_classifier",
    "markdown_table",
    "polynomial_mmd",
    "reference_features",
]
