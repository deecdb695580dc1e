"""Evaluation: FVD and KVD from I3D features, and caption accuracy for moving_digits.

The I3D and caption-classifier weights are loaded on first use and kept for the process.
"""

from imagen_video_jax.eval.caption_classifier import caption_accuracy, load_classifier
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
    "caption_accuracy",
    "feature_stats",
    "frechet_distance",
    "frechet_distance_of_features",
    "fvd",
    "i3d_features",
    "kernel_distance",
    "kvd",
    "load_classifier",
    "polynomial_mmd",
    "reference_features",
]
