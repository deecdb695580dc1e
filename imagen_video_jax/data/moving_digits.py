"""Moving digits: text-to-video clips made from scikit-learn's real handwritten digits.

One or two 8x8 handwritten digits (the 1,797 scans of ``sklearn.datasets.load_digits``),
upsampled smoothly, move in one of eight directions (or bounce) on a dark canvas, with a
caption saying which digit moves which way (see :mod:`imagen_video_jax.data.captions`).
Two-digit clips split the canvas into a top and a bottom band, one digit in each, so the
digits never overlap. Train and test clips come from disjoint source scans; an ``images``
split holds single captioned digits for joint image-video training.

Every record is a pure function of (parameters, split, index): clip ``i`` shows digit
``i % 10`` (the first digit of two) moving in direction ``(i // 10) % 8``, so any 80
consecutive clips cover all digit-direction pairs; everything else is drawn from a generator
seeded by (seed, split, index). Motion is sub-pixel (bilinear), so the digit's centre of
mass moves exactly along its path.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, ClassVar

import numpy as np

from imagen_video_jax.data.captions import (
    BOUNCING,
    DIRECTION_STEPS,
    DIRECTIONS,
    MOTIONS,
    digits_caption,
)
from imagen_video_jax.data.storage import (
    SyntheticClipBuilder,
    SyntheticClipConfig,
    int_list_feature,
)
from imagen_video_jax.data.video_ops import resize_weights, to_uint8

NUM_SUBJECTS = 10  # record i of every split is about digit i % 10
SPLIT_NUMBERS = {"train": 0, "test": 1, "images": 2}
TEST_FRACTION = 1 / 6  # share of each digit's scans held out for the test split
_SOURCE_SPLIT_SEED = 20221005  # fixed: the train/test partition never depends on a run's seed


@dataclasses.dataclass(frozen=True)
class MovingDigitsSpec:
    """What a moving-digits clip looks like."""

    frames: int
    height: int
    width: int
    fps: float
    speed: float = 0.3  # canvas (shorter side) per second; each clip moves at 60-100% of it
    digit_scale: float = 0.4  # digit side / shorter side of its region (canvas or band)
    two_digit_prob: float = 0.25  # chance a clip has two digits (top and bottom band)
    bounce_prob: float = 0.0  # chance a digit bounces off the walls instead of moving straight
    seed: int = 0

    def __post_init__(self):
        if min(self.frames, self.height, self.width) < 1 or self.fps <= 0:
            raise ValueError(
                f"bad clip shape {self.frames}x{self.height}x{self.width} @ {self.fps}"
            )
        if min(self.height, self.width) < 8:
            raise ValueError(
                f"moving digits need a canvas of at least 8x8, got {self.height}x{self.width}"
            )


@functools.cache
def digit_scans() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 scans as float32 [N, 8, 8] in [0, 1] and their labels [N]."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return (digits.images / 16.0).astype(np.float32), digits.target.astype(np.int64)


@functools.cache
def source_ids(split: str) -> tuple[np.ndarray, ...]:
    """Scan ids usable by ``split``, one array per digit; test scans are never used in training."""
    if split not in SPLIT_NUMBERS:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLIT_NUMBERS)}")
    _, labels = digit_scans()
    rng = np.random.default_rng(_SOURCE_SPLIT_SEED)
    per_digit = []
    for digit in range(10):
        ids = rng.permutation(np.flatnonzero(labels == digit))
        held_out = int(round(len(ids) * TEST_FRACTION))
        per_digit.append(np.sort(ids[:held_out] if split == "test" else ids[held_out:]))
    return tuple(per_digit)


def digit_patch(scan: np.ndarray, side: int) -> np.ndarray:
    """An 8x8 scan upsampled to ``side`` x ``side`` by separable linear interpolation."""
    weights = resize_weights(scan.shape[0], side)
    return weights @ scan @ weights.T


def _shifted(patch: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """``patch`` moved by sub-pixel offsets (dx, dy) in [0, 1), one per frame [T, 2].

    Bilinear: each output is a [s+1, s+1] patch with the same mass, its centre of mass
    shifted by exactly (dx, dy).
    """
    s = patch.shape[0]
    dx = offsets[:, 0, None, None].astype(np.float32)
    dy = offsets[:, 1, None, None].astype(np.float32)
    out = np.zeros((len(offsets), s + 1, s + 1), np.float32)
    out[:, :s, :s] = (1 - dy) * (1 - dx) * patch
    out[:, :s, 1:] += (1 - dy) * dx * patch
    out[:, 1:, :s] += dy * (1 - dx) * patch
    out[:, 1:, 1:] += dy * dx * patch
    return out


def _reflect(x: np.ndarray, limit: float) -> np.ndarray:
    """Fold positions into [0, limit] as a ball bouncing between two walls."""
    if limit <= 0:
        return np.zeros_like(x)
    folded = np.mod(x, 2 * limit)
    return np.where(folded > limit, 2 * limit - folded, folded)


def _path(
    rng: np.random.Generator,
    direction: str,
    bouncing: bool,
    travel: float,
    free: np.ndarray,
    frames: int,
) -> np.ndarray:
    """Top-left positions (x, y) [frames, 2] of a digit with ``free`` room (x, y) to move in."""
    step = np.array(DIRECTION_STEPS[direction], np.float64)
    shift = travel * step / np.linalg.norm(step)
    u = np.linspace(0.0, 1.0, frames)[:, None] if frames > 1 else np.zeros((1, 1))
    if bouncing:
        # Start so that the first wall ahead is met within the clip when the travel allows.
        ahead = np.minimum(rng.uniform(0.2, 0.8, 2) * np.abs(shift), free)
        start = np.where(
            shift > 0, free - ahead, np.where(shift < 0, ahead, rng.uniform(0, 1, 2) * free)
        )
        return np.stack(
            [_reflect(start[a] + shift[a] * u[:, 0], free[a]) for a in range(2)], axis=1
        )
    moving = np.abs(shift) > 0
    shrink = np.min(free[moving] / np.abs(shift[moving]), initial=1.0)
    shift = shift * min(1.0, shrink)
    low = np.maximum(0.0, -shift)
    high = np.minimum(free, free - shift)
    start = low + rng.uniform(0, 1, 2) * (high - low)
    return start + shift * u


def _draw(
    canvas: np.ndarray, patch: np.ndarray, positions: np.ndarray, top: int, left: int
) -> None:
    """Draw ``patch`` (0-255) into each grey frame of ``canvas`` [T, H, W] at ``positions``
    inside a region, keeping the brighter pixel where strokes meet."""
    size = patch.shape[0] + 1
    whole = np.floor(positions).astype(np.int64)
    pieces = to_uint8(_shifted(patch, positions - whole))
    for frame, (ix, iy), piece in zip(canvas, whole.tolist(), pieces):
        window = frame[top + iy : top + iy + size, left + ix : left + ix + size]
        np.maximum(window, piece, out=window)


def _regions(spec: MovingDigitsSpec, count: int) -> list[tuple[int, int, int, int]]:
    """(top, left, height, width) of each digit's region: the canvas, or its two bands."""
    if count == 1:
        return [(0, 0, spec.height, spec.width)]
    half = spec.height // 2
    return [(0, 0, half, spec.width), (half, 0, spec.height - half, spec.width)]


def _side(spec: MovingDigitsSpec, region_height: int, region_width: int) -> int:
    return max(2, int(round(spec.digit_scale * min(region_height, region_width))))


def render_clip(spec: MovingDigitsSpec, split: str, index: int) -> dict[str, Any]:
    """Clip ``index`` of ``split`` ('train' or 'test'): video, caption and what made it."""
    if split not in ("train", "test"):
        raise ValueError(f"clips come from split 'train' or 'test', got {split!r}")
    rng = np.random.default_rng((spec.seed, SPLIT_NUMBERS[split], index))
    scans, _ = digit_scans()
    ids = source_ids(split)
    count = 2 if rng.random() < spec.two_digit_prob else 1
    digits = [index % 10] + [int(rng.integers(10)) for _ in range(count - 1)]
    directions = [DIRECTIONS[(index // 10) % 8]] + [
        DIRECTIONS[int(rng.integers(8))] for _ in range(count - 1)
    ]
    duration = (spec.frames - 1) / spec.fps
    canvas = np.zeros((spec.frames, spec.height, spec.width), np.uint8)
    motions, sources = [], []
    for digit, direction, (top, left, rh, rw) in zip(digits, directions, _regions(spec, count)):
        side = _side(spec, rh, rw)
        free = np.array([rw - side - 1, rh - side - 1], np.float64)
        if free.min() < 0:
            raise ValueError(f"digit_scale {spec.digit_scale} leaves no room to move in {rh}x{rw}")
        bouncing = rng.random() < spec.bounce_prob
        travel = spec.speed * min(spec.height, spec.width) * rng.uniform(0.6, 1.0) * duration
        positions = _path(rng, direction, bouncing, travel, free, spec.frames)
        source = int(ids[digit][rng.integers(len(ids[digit]))])
        _draw(canvas, 255.0 * digit_patch(scans[source], side), positions, top, left)
        motions.append(BOUNCING if bouncing else direction)
        sources.append(source)
    return _record(canvas, list(zip(digits, motions)), spec.fps, index, sources)


def render_image(spec: MovingDigitsSpec, index: int) -> dict[str, Any]:
    """Image ``index`` of the 'images' split: digit ``index % 10`` from a training scan."""
    rng = np.random.default_rng((spec.seed, SPLIT_NUMBERS["images"], index))
    scans, _ = digit_scans()
    digit = index % 10
    ids = source_ids("images")[digit]
    source = int(ids[rng.integers(len(ids))])
    side = _side(spec, spec.height, spec.width)
    free = np.array([spec.width - side - 1, spec.height - side - 1], np.float64)
    canvas = np.zeros((1, spec.height, spec.width), np.uint8)
    _draw(canvas, 255.0 * digit_patch(scans[source], side), rng.uniform(0, 1, (1, 2)) * free, 0, 0)
    return _record(canvas, [(digit, None)], spec.fps, index, [source])


def render(spec: MovingDigitsSpec, split: str, index: int) -> dict[str, Any]:
    """Record ``index`` of any split: a clip of 'train' / 'test' or an image of 'images'."""
    if split == "images":
        return render_image(spec, index)
    return render_clip(spec, split, index)


def _record(grey, pairs, fps, index, sources) -> dict[str, Any]:
    return {
        "video": np.stack([grey, grey, grey], axis=-1),  # white digits
        "caption": digits_caption(pairs),
        "fps": np.float32(fps),
        "index": np.int64(index),
        "digits": np.array([d for d, _ in pairs], np.int64),
        "motions": np.array([-1 if m is None else MOTIONS.index(m) for _, m in pairs], np.int64),
        "sources": np.array(sources, np.int64),
    }


@dataclasses.dataclass(eq=False)
class MovingDigitsConfig(SyntheticClipConfig):
    """A prepared moving-digits dataset: its clip shape, sizes and renderer parameters."""

    SPEC: ClassVar[type] = MovingDigitsSpec
    speed: float = MovingDigitsSpec.speed
    digit_scale: float = MovingDigitsSpec.digit_scale
    two_digit_prob: float = MovingDigitsSpec.two_digit_prob
    bounce_prob: float = MovingDigitsSpec.bounce_prob


class MovingDigits(SyntheticClipBuilder):
    """Handwritten digits (scikit-learn's load_digits) moving on a dark canvas, captioned."""

    def extra_features(self) -> dict[str, Any]:
        return {
            "digits": int_list_feature(),
            "motions": int_list_feature(),
            "sources": int_list_feature(),
        }

    def render(self, spec: MovingDigitsSpec, split: str, index: int) -> dict:
        return render(spec, split, index)


def num_subjects(split: str) -> int:
    """Record ``i`` of every split is about digit ``i % 10``."""
    del split
    return NUM_SUBJECTS
