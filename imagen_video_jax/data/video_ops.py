"""Array operations on uint8 videos ``[frames, height, width, 3]``: resizing, antialiased
downsampling, temporal subsampling, and fitting a stored clip to a stage's output shape.

Pure NumPy, so they run inside grain worker processes without JAX.
"""

from __future__ import annotations

import functools

import numpy as np


@functools.lru_cache(maxsize=256)
def resize_weights(in_size: int, out_size: int) -> np.ndarray:
    """[out_size, in_size] linear-interpolation weights, antialiased when shrinking.

    Each output sample is a normalized triangle-filter average of the input; the triangle
    widens by ``in_size / out_size`` when shrinking so that no input pixel is skipped.
    """
    scale = out_size / in_size
    stretch = min(scale, 1.0)
    centers = (np.arange(out_size) + 0.5) / scale - 0.5
    distance = np.abs(centers[:, None] - np.arange(in_size)[None, :])
    weights = np.maximum(0.0, 1.0 - distance * stretch)
    weights /= weights.sum(axis=1, keepdims=True)
    weights.setflags(write=False)
    return weights.astype(np.float32)


def to_uint8(values: np.ndarray) -> np.ndarray:
    """Round float pixel values to uint8, clipped to [0, 255]."""
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def resize_video(video: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize every frame of ``video`` [T, H, W, C] to ``height`` x ``width`` (antialiased)."""
    if video.shape[1:3] == (height, width):
        return video
    rows = resize_weights(video.shape[1], height)
    cols = resize_weights(video.shape[2], width)
    out = np.einsum("oh,thwc->towc", rows, video.astype(np.float32))
    out = np.einsum("pw,towc->topc", cols, out)
    return to_uint8(out)


def resize_and_center_crop(video: np.ndarray, height: int, width: int) -> np.ndarray:
    """Scale ``video`` so it covers ``height`` x ``width``, then cut out the centre."""
    in_h, in_w = video.shape[1:3]
    scale = max(height / in_h, width / in_w)
    cover_h = max(height, round(in_h * scale))
    cover_w = max(width, round(in_w * scale))
    top = (cover_h - height) // 2
    left = (cover_w - width) // 2
    rows = resize_weights(in_h, cover_h)[top : top + height]
    cols = resize_weights(in_w, cover_w)[left : left + width]
    out = np.einsum("oh,thwc->towc", rows, video.astype(np.float32))
    out = np.einsum("pw,towc->topc", cols, out)
    return to_uint8(out)


def area_downsample(video: np.ndarray, factor: int) -> np.ndarray:
    """Average each ``factor`` x ``factor`` block of every frame (an antialiased box filter).

    Integer sums, rounded half up; summing row by row keeps memory access contiguous.
    """
    if factor == 1:
        return video
    t, h, w, c = video.shape
    if h % factor or w % factor:
        raise ValueError(f"frame size {h}x{w} is not divisible by the downsampling factor {factor}")
    dtype = np.uint16 if factor * factor * 255 < 2**16 else np.uint32
    rows = video.reshape(t, h // factor, factor, w * c)
    row_sums = rows[:, :, 0].astype(dtype)
    for i in range(1, factor):
        row_sums += rows[:, :, i]
    columns = row_sums.reshape(t, h // factor, w // factor, factor, c)
    sums = columns[:, :, :, 0].copy()
    for i in range(1, factor):
        sums += columns[:, :, :, i]
    area = factor * factor
    return ((sums + area // 2) // area).astype(np.uint8)


def temporal_subsample(video: np.ndarray, factor: int) -> np.ndarray:
    """Every ``factor``-th frame, starting with the first."""
    return video[::factor]


def conditioning_video(target: np.ndarray, temporal_factor: int, spatial_factor: int) -> np.ndarray:
    """What the previous cascade stage makes for ``target``: fewer frames or fewer pixels.

    A temporal super-resolution stage sees every ``temporal_factor``-th frame, a spatial one
    the target box-downsampled by ``spatial_factor``.
    """
    return area_downsample(temporal_subsample(target, temporal_factor), spatial_factor)


def frame_stride(source_fps: float, target_fps: float) -> int:
    """How many source frames one target frame spans; the rates must divide exactly."""
    stride = round(source_fps / target_fps)
    if stride < 1 or abs(stride * target_fps - source_fps) > 1e-3 * source_fps:
        raise ValueError(
            f"clips stored at {source_fps:g} fps cannot make {target_fps:g} fps clips: "
            "the stored frame rate must be a whole multiple of the stage's"
        )
    return stride


def fit_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bring frames to ``height`` x ``width``: box-downsample by a whole factor, else resize + crop.

    Upsampling is refused: a stage must not learn from blurred targets.
    """
    in_h, in_w = frames.shape[1:3]
    if (in_h, in_w) == (height, width):
        return frames
    if in_h < height or in_w < width:
        raise ValueError(
            f"stored frames are {in_h}x{in_w} but {height}x{width} are needed: prepare the "
            "dataset at this size or larger"
        )
    factor = in_h // height
    if in_h == factor * height and in_w == factor * width:
        return area_downsample(frames, factor)
    return resize_and_center_crop(frames, height, width)


def fit_clip(
    video: np.ndarray,
    fps: float,
    frames: int,
    height: int,
    width: int,
    target_fps: float,
    start: int,
) -> np.ndarray:
    """``frames`` frames at ``target_fps`` from a stored clip, from source frame ``start``."""
    stride = frame_stride(fps, target_fps)
    needed = (frames - 1) * stride + 1
    if video.shape[0] < start + needed:
        raise ValueError(
            f"a stored clip of {video.shape[0]} frames at {fps:g} fps is too short for "
            f"{frames} frames at {target_fps:g} fps starting at frame {start}"
        )
    return fit_frames(video[start : start + needed : stride], height, width)


def clip_start_range(num_frames: int, fps: float, frames: int, target_fps: float) -> int:
    """How many start positions a stored clip offers for ``frames`` frames at ``target_fps``."""
    needed = (frames - 1) * frame_stride(fps, target_fps) + 1
    if num_frames < needed:
        raise ValueError(
            f"stored clips have {num_frames} frames at {fps:g} fps; {frames} frames at "
            f"{target_fps:g} fps need {needed}"
        )
    return num_frames - needed + 1
