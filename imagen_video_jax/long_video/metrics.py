"""The long-video metrics of NUWA-XL: block FVD (B-FVD-16) and an average per-frame FID.

B-FVD-16: every video is cut into consecutive 16-frame blocks and the FVD is taken between the
blocks of real and of generated videos (I3D features; imagen_video_jax.eval). Avg-FID: the
Frechet distance between per-frame features of real and generated frames, taken separately for
each 16-frame time block (frames of every video pooled) and averaged over the blocks, so
quality that drifts along the video (as sliding windows tend to) shows. Per-frame features
default to I3D on each frame held still; any ``frame_features(frames [N, H, W, 3]) -> [N, D]``
(e.g. a classifier's penultimate layer) can be passed.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from imagen_video_jax.eval.distances import frechet_distance_of_features
from imagen_video_jax.eval.i3d import i3d_features

Features = Callable[[np.ndarray], np.ndarray]
BLOCK = 16


def video_blocks(videos: np.ndarray, block: int = BLOCK) -> np.ndarray:
    """[B, T, H, W, C] -> [B * (T // block), block, H, W, C]: consecutive blocks (a partial
    last block is dropped)."""
    videos = np.asarray(videos)
    if videos.ndim != 5 or videos.shape[1] < block:
        raise ValueError(f"expected videos [B, T >= {block}, H, W, C]; got shape {videos.shape}")
    count = videos.shape[1] // block
    trimmed = videos[:, : count * block]
    return trimmed.reshape(videos.shape[0] * count, block, *videos.shape[2:])


def block_fvd(
    real: np.ndarray, fake: np.ndarray, block: int = BLOCK, features: Features = i3d_features
) -> float:
    """B-FVD-``block``: FVD between the ``block``-frame blocks of real and generated videos."""
    real_features = features(video_blocks(real, block))
    fake_features = features(video_blocks(fake, block))
    return frechet_distance_of_features(real_features, fake_features)


def i3d_frame_features(frames: np.ndarray) -> np.ndarray:
    """I3D features of single frames [N, H, W, 3] (each held still as a short clip)."""
    return i3d_features(np.asarray(frames)[:, None])


def avg_frame_fid(
    real: np.ndarray,
    fake: np.ndarray,
    block: int = BLOCK,
    frame_features: Features = i3d_frame_features,
    frame_stride: int = 1,
) -> float:
    """Mean over time blocks of the Frechet distance between per-frame features of real and
    generated frames in that block (every ``frame_stride``-th frame; videos pooled)."""
    real, fake = np.asarray(real), np.asarray(fake)
    blocks = min(real.shape[1], fake.shape[1]) // block
    if blocks < 1:
        raise ValueError(f"videos need at least {block} frames; got {real.shape}, {fake.shape}")
    picks = np.arange(0, blocks * block, frame_stride)
    real_features = _frame_features(real[:, picks], frame_features)
    fake_features = _frame_features(fake[:, picks], frame_features)
    block_of = picks // block
    distances = [
        frechet_distance_of_features(
            real_features[:, block_of == b].reshape(-1, real_features.shape[-1]),
            fake_features[:, block_of == b].reshape(-1, fake_features.shape[-1]),
        )
        for b in range(blocks)
    ]
    return float(np.mean(distances))


def _frame_features(videos: np.ndarray, frame_features: Features) -> np.ndarray:
    """[B, T, H, W, C] -> per-frame features [B, T, D]."""
    flat = frame_features(videos.reshape(-1, *videos.shape[2:]))
    return np.asarray(flat).reshape(videos.shape[0], videos.shape[1], -1)
