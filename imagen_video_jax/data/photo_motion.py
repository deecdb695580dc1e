"""Photo motion: real photographs under camera motion, so super-resolution stages learn real
texture.

The photographs ship with scikit-image (``skimage.data``) and scikit-learn
(``load_sample_images``), so nothing is downloaded. A clip looks through a window moving
over one photograph: panning left / right (the view moves left / right, the picture slides
the other way), tilting up / down, zooming in / out, or rotating clockwise / counterclockwise
(the picture turns that way on screen). Captions name the picture and the motion:
``"a photo of a cat, panning left"``; images of the 'images' split are still windows
captioned ``"a photo of a cat"``. Test clips use photographs never seen in training.

Clip ``i`` shows photo ``i % P`` (P photos in its split) under motion ``(i // P) % 8``; the
window's size and start are drawn from a generator seeded by (seed, split, index).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from imagen_video_jax.data.storage import SyntheticClipBuilder, SyntheticClipConfig
from imagen_video_jax.data.video_ops import to_uint8

SPLIT_NUMBERS = {"train": 0, "test": 1, "images": 2}
MOTIONS = (
    "panning left",
    "panning right",
    "tilting up",
    "tilting down",
    "zooming in",
    "zooming out",
    "rotating clockwise",
    "rotating counterclockwise",
)


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        return getattr(skimage.data, name)()

    return load


def _sklearn(filename: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from sklearn.datasets import load_sample_image

        return load_sample_image(filename)

    return load


# name -> (loader, what the caption calls it); all bundled with the installed packages.
PHOTOS: dict[str, tuple[Callable[[], np.ndarray], str]] = {
    "astronaut": (_skimage("astronaut"), "an astronaut"),
    "coffee": (_skimage("coffee"), "a cup of coffee"),
    "chelsea": (_skimage("chelsea"), "a cat"),
    "rocket": (_skimage("rocket"), "a rocket on its launch pad"),
    "hubble_deep_field": (_skimage("hubble_deep_field"), "galaxies in deep space"),
    "retina": (_skimage("retina"), "the retina of an eye"),
    "immunohistochemistry": (_skimage("immunohistochemistry"), "stained tissue under a microscope"),
    "camera": (_skimage("camera"), "a man with a camera"),
    "moon": (_skimage("moon"), "the surface of the moon"),
    "grass": (_skimage("grass"), "grass"),
    "gravel": (_skimage("gravel"), "gravel"),
    "brick": (_skimage("brick"), "a brick wall"),
    "china": (_sklearn("china.jpg"), "a chinese temple"),
    "coins": (_skimage("coins"), "old coins"),
    "flower": (_sklearn("flower.jpg"), "a flower"),
}
TEST_PHOTOS = ("coins", "flower")


def split_photos(split: str) -> tuple[str, ...]:
    """Photo names of a split: the test photos are held out of 'train' and 'images'."""
    if split not in SPLIT_NUMBERS:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLIT_NUMBERS)}")
    if split == "test":
        return TEST_PHOTOS
    return tuple(name for name in PHOTOS if name not in TEST_PHOTOS)


def photo_caption(subject: str, motion: str | None = None) -> str:
    return f"a photo of {subject}" if motion is None else f"a photo of {subject}, {motion}"


@functools.cache
def load_photo(name: str) -> np.ndarray:
    """Photo ``name`` as float32 RGB [H, W, 3] in [0, 255]."""
    pixels = np.asarray(PHOTOS[name][0]()).astype(np.float32)
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[..., None], 3, axis=-1)
    return np.ascontiguousarray(pixels[..., :3])


@dataclasses.dataclass(frozen=True)
class PhotoMotionSpec:
    """What a photo-motion clip looks like."""

    frames: int
    height: int
    width: int
    fps: float
    pan_speed: float = 0.25  # window widths per second
    zoom_speed: float = 0.3  # change of log window size per second
    rotate_speed: float = 20.0  # degrees per second
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class _Camera:
    """Per-frame window centres (x, y) [T, 2], heights [T] and angles [T] on the photo."""

    centers: np.ndarray
    heights: np.ndarray
    angles: np.ndarray


def _motion_offsets(
    motion: str, u: np.ndarray, spec: PhotoMotionSpec, height: float, aspect: float
):
    """Centre offsets [T, 2], log size changes [T] and angles [T] of a motion, per unit height."""
    duration = (spec.frames - 1) / spec.fps
    shift = np.zeros((len(u), 2))
    log_size = np.zeros(len(u))
    angle = np.zeros(len(u))
    pan = spec.pan_speed * duration * u * height
    if motion in ("panning left", "panning right"):
        shift[:, 0] = pan * aspect * (-1 if motion == "panning left" else 1)
    elif motion in ("tilting up", "tilting down"):
        shift[:, 1] = pan * (-1 if motion == "tilting up" else 1)
    elif motion in ("zooming in", "zooming out"):
        log_size = spec.zoom_speed * duration * u * (-1 if motion == "zooming in" else 1)
    else:
        turn = np.deg2rad(spec.rotate_speed * duration) * u
        angle = -turn if motion == "rotating clockwise" else turn
    return shift, log_size, angle


def _corners(heights: np.ndarray, angles: np.ndarray, aspect: float) -> np.ndarray:
    """Window corner offsets from the centre [T, 4, 2]."""
    half = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], np.float64) / 2
    local = half[None] * np.stack([heights * aspect, heights], axis=-1)[:, None, :]
    cos, sin = np.cos(angles)[:, None], np.sin(angles)[:, None]
    x = local[..., 0] * cos - local[..., 1] * sin
    y = local[..., 0] * sin + local[..., 1] * cos
    return np.stack([x, y], axis=-1)


def _camera(rng: np.random.Generator, spec: PhotoMotionSpec, motion: str, photo_shape) -> _Camera:
    """A window path that stays inside the photo for the whole clip."""
    photo_h, photo_w = photo_shape
    aspect = spec.width / spec.height
    u = np.linspace(0.0, 1.0, spec.frames) if spec.frames > 1 else np.zeros(1)
    height = rng.uniform(0.35, 0.7) * min(photo_h, photo_w / aspect)
    while True:
        shift, log_size, angles = _motion_offsets(motion, u, spec, height, aspect)
        heights = height * np.exp(log_size)
        corners = _corners(heights, angles, aspect) + shift[:, None, :]
        low = -corners.min(axis=(0, 1))
        high = np.array([photo_w, photo_h]) - corners.max(axis=(0, 1))
        if np.all(high >= low):
            start = low + rng.uniform(0, 1, 2) * (high - low)
            return _Camera(start + shift, heights, angles)
        height *= 0.8


@functools.cache
def photo_pyramid(name: str) -> tuple[np.ndarray, ...]:
    """Photo ``name`` as channel planes [3, H, W], halved again and again by 2x2 averaging."""
    levels = [np.ascontiguousarray(load_photo(name).transpose(2, 0, 1))]
    while min(levels[-1].shape[1:]) >= 32:
        above = levels[-1]
        h, w = above.shape[1] // 2, above.shape[2] // 2
        halved = above[:, : 2 * h, : 2 * w].reshape(3, h, 2, w, 2).mean(axis=(2, 4))
        levels.append(halved.astype(np.float32))
    return tuple(levels)


def _bilinear(planes: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Sample ``planes`` [3, H, W] at pixel-centre coordinates x, y (clamped): [3, *x.shape]."""
    h, w = planes.shape[1:]
    x = np.clip(x - 0.5, 0, w - 1.001)
    y = np.clip(y - 0.5, 0, h - 1.001)
    x0, y0 = x.astype(np.int64), y.astype(np.int64)
    fx, fy = (x - x0).astype(np.float32), (y - y0).astype(np.float32)
    corner = y0 * w + x0
    corners = np.take(
        planes.reshape(3, -1), np.stack([corner, corner + 1, corner + w, corner + w + 1]), axis=1
    )
    top = corners[:, 0] * (1 - fx) + corners[:, 1] * fx
    bottom = corners[:, 2] * (1 - fx) + corners[:, 3] * fx
    return top * (1 - fy) + bottom * fy


# Sub-pixel offsets (dy, dx) of the 2x2 samples averaged into each output pixel.
_SUPERSAMPLES = np.array([[-0.25, -0.25], [-0.25, 0.25], [0.25, -0.25], [0.25, 0.25]])


def _film(name: str, camera: _Camera, height: int, width: int) -> np.ndarray:
    """The frames [T, height, width, 3] of photo ``name`` seen through the camera's windows.

    Antialiased: each frame samples the pyramid level with one to two photo pixels per output
    pixel, at 2x2 points per output pixel.
    """
    pyramid = photo_pyramid(name)
    rows = (np.arange(height)[None, :, None] + 0.5 + _SUPERSAMPLES[:, 0, None, None]) / height - 0.5
    cols = (np.arange(width)[None, None, :] + 0.5 + _SUPERSAMPLES[:, 1, None, None]) / width - 0.5
    frames = np.empty((len(camera.heights), height, width, 3), np.uint8)
    for t, ((cx, cy), window_h, angle) in enumerate(
        zip(camera.centers, camera.heights, camera.angles)
    ):
        level = int(np.clip(np.floor(np.log2(window_h / height)), 0, len(pyramid) - 1))
        local_x = cols * (window_h * width / height)
        local_y = rows * window_h
        x = cx + local_x * np.cos(angle) - local_y * np.sin(angle)
        y = cy + local_x * np.sin(angle) + local_y * np.cos(angle)
        samples = _bilinear(pyramid[level], x / 2.0**level, y / 2.0**level)
        frames[t] = to_uint8(samples.mean(axis=1).transpose(1, 2, 0))
    return frames


def render_clip(spec: PhotoMotionSpec, split: str, index: int) -> dict[str, Any]:
    """Clip ``index`` of 'train' or 'test'."""
    if split not in ("train", "test"):
        raise ValueError(f"clips come from split 'train' or 'test', got {split!r}")
    names = split_photos(split)
    name = names[index % len(names)]
    motion = MOTIONS[(index // len(names)) % len(MOTIONS)]
    rng = np.random.default_rng((spec.seed, SPLIT_NUMBERS[split], index))
    camera = _camera(rng, spec, motion, load_photo(name).shape[:2])
    video = _film(name, camera, spec.height, spec.width)
    return _record(video, photo_caption(PHOTOS[name][1], motion), spec.fps, index, name, motion)


def render_image(spec: PhotoMotionSpec, index: int) -> dict[str, Any]:
    """Image ``index`` of 'images': a still window on training photo ``index % P``."""
    names = split_photos("images")
    name = names[index % len(names)]
    rng = np.random.default_rng((spec.seed, SPLIT_NUMBERS["images"], index))
    still = dataclasses.replace(spec, frames=1)
    camera = _camera(rng, still, MOTIONS[0], load_photo(name).shape[:2])
    video = _film(name, camera, spec.height, spec.width)
    return _record(video, photo_caption(PHOTOS[name][1]), spec.fps, index, name, "")


def render(spec: PhotoMotionSpec, split: str, index: int) -> dict[str, Any]:
    """Record ``index`` of any split."""
    if split == "images":
        return render_image(spec, index)
    return render_clip(spec, split, index)


def num_subjects(split: str) -> int:
    """Record ``i`` of ``split`` shows photo ``i % num_subjects(split)``."""
    return len(split_photos(split))


def _record(video, caption, fps, index, photo, motion) -> dict[str, Any]:
    return {
        "video": video,
        "caption": caption,
        "fps": np.float32(fps),
        "index": np.int64(index),
        "photo": photo,
        "motion": motion,
    }


@dataclasses.dataclass(eq=False)
class PhotoMotionConfig(SyntheticClipConfig):
    """A prepared photo-motion dataset: clip shape, sizes and motion speeds."""

    SPEC: ClassVar[type] = PhotoMotionSpec
    pan_speed: float = PhotoMotionSpec.pan_speed
    zoom_speed: float = PhotoMotionSpec.zoom_speed
    rotate_speed: float = PhotoMotionSpec.rotate_speed


class PhotoMotion(SyntheticClipBuilder):
    """Bundled real photographs (scikit-image, scikit-learn) under camera motion, captioned."""

    def extra_features(self) -> dict[str, Any]:
        import tensorflow_datasets as tfds

        return {"photo": tfds.features.Text(), "motion": tfds.features.Text()}

    def render(self, spec: PhotoMotionSpec, split: str, index: int) -> dict:
        return render(spec, split, index)
