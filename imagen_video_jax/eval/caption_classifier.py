"""Caption accuracy for moving_digits: a small video classifier reads which digit moves which way.

The classifier sees every video at one fixed size (``frames`` x ``size`` x ``size``, gray): the
frames are picked evenly from first to last, the pixels resized with antialiasing, so a 4x16x16
base-stage sample and a 32x512x512 final-stage sample are judged alike. Two heads predict the
digit (10 classes) and the motion (the 8 directions and bouncing, in the order of
:data:`imagen_video_jax.data.captions.MOTIONS`). A generated video is right when both match
its one-digit prompt; this is the project's analogue of CLIP R-precision.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from pathlib import Path

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np

from imagen_video_jax.data.captions import MOTIONS, parse_caption

DEFAULT_WEIGHTS = Path(__file__).resolve().parent.parent / "assets" / "caption_classifier.msgpack"
NUM_DIGITS = 10


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
    """Input size and widths of the caption classifier (stored with its weights)."""

    frames: int = 4
    size: int = 16
    digit_channels: tuple[int, ...] = (32, 64, 128)
    motion_channels: tuple[int, ...] = (16, 32, 64)
    hidden: int = 128


class ConvFeatures(nn.Module):
    """3x3 conv blocks (group norm, ReLU; 2x2 max pooling between blocks), global average and
    max pooling, then a hidden dense layer: a feature vector that ignores where things are."""

    channels: tuple[int, ...]
    hidden: int

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        h = images
        for index, width in enumerate(self.channels):
            if index:
                h = nn.max_pool(h, (2, 2), strides=(2, 2))
            h = nn.Conv(width, (3, 3), padding="SAME")(h)
            h = nn.relu(nn.GroupNorm(num_groups=8)(h))
        pooled = jnp.concatenate([h.mean(axis=(1, 2)), h.max(axis=(1, 2))], axis=-1)
        return nn.relu(nn.Dense(self.hidden)(pooled))


class CaptionClassifier(nn.Module):
    """Digit logits from each frame alone, averaged over frames; motion logits from the clip.

    Input ``[B, T, size, size, 1]`` in [-1, 1]. The digit branch is a 2D CNN shared by all
    frames (the digit is the same in each, wherever it is). The motion branch fuses time
    early: the frames enter its first convolution as channels, so every filter sees the whole
    clip.
    """

    config: ClassifierConfig

    def setup(self):
        self.digit_features = ConvFeatures(self.config.digit_channels, self.config.hidden)
        self.motion_features = ConvFeatures(self.config.motion_channels, self.config.hidden)
        self.digit_head = nn.Dense(NUM_DIGITS)
        self.motion_head = nn.Dense(len(MOTIONS))

    def __call__(self, videos: jax.Array) -> tuple[jax.Array, jax.Array]:
        return self.digit_logits(videos), self.motion_logits(videos)

    def digit_logits(self, videos: jax.Array) -> jax.Array:
        """``[B, 10]``: per-frame logits of any number of frames, averaged."""
        batch, frames = videos.shape[:2]
        images = videos.reshape(batch * frames, *videos.shape[2:])
        per_frame = self.digit_head(self.digit_features(images))
        return per_frame.reshape(batch, frames, -1).mean(axis=1)

    def motion_logits(self, videos: jax.Array) -> jax.Array:
        """``[B, len(MOTIONS)]`` from all ``config.frames`` frames fused as channels."""
        return self.motion_head(self.motion_features(jnp.moveaxis(videos[..., 0], 1, -1)))


def classifier_inputs(videos, frames: int, size: int) -> jax.Array:
    """uint8 ``[B, T, H, W, C]`` -> gray float ``[B, frames, size, size, 1]`` in [-1, 1].

    ``frames`` frames are taken evenly from the first to the last (repeated when T is smaller),
    then resized to ``size`` x ``size`` with an antialiased bilinear filter.
    """
    videos = jnp.asarray(videos)
    picks = np.round(np.linspace(0, videos.shape[1] - 1, frames)).astype(int)
    gray = videos[:, picks].astype(jnp.float32).mean(axis=-1, keepdims=True)
    if gray.shape[2:4] != (size, size):
        gray = jax.image.resize(gray, (gray.shape[0], frames, size, size, 1), method="bilinear")
    return gray / 127.5 - 1.0


def prompt_labels(prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(digit, motion index) arrays of one-digit clip prompts; ValueError names a bad one."""
    digits, motions = [], []
    for prompt in prompts:
        digit, motion = parse_caption(prompt)
        if motion is None:
            raise ValueError(f"prompt {prompt!r} names no motion; expected a clip caption")
        digits.append(digit)
        motions.append(MOTIONS.index(motion))
    return np.array(digits), np.array(motions)


@dataclasses.dataclass(frozen=True)
class TrainedClassifier:
    """A caption classifier's configuration and parameters."""

    config: ClassifierConfig
    params: dict

    def predict(self, videos: np.ndarray, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """Predicted (digit, motion index) of uint8 videos ``[N, T, H, W, C]``, N >= 1."""
        videos = np.asarray(videos)
        if videos.ndim != 5 or len(videos) == 0:
            raise ValueError(f"expected videos [N >= 1, T, H, W, C], got shape {videos.shape}")
        predict = _predict_fn(self.config)
        batch_size = min(batch_size, len(videos))
        digits, motions = [], []
        for start in range(0, len(videos), batch_size):
            chunk = videos[start : start + batch_size]
            padded = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - len(chunk), 0)])
            digit, motion = predict(self.params, padded)
            digits.append(np.asarray(digit)[: len(chunk)])
            motions.append(np.asarray(motion)[: len(chunk)])
        return np.concatenate(digits), np.concatenate(motions)

    def save(self, path: str | Path) -> None:
        config = {
            **dataclasses.asdict(self.config),
            "digit_channels": list(self.config.digit_channels),
            "motion_channels": list(self.config.motion_channels),
        }
        payload = {"config": config, "params": self.params}
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(flax.serialization.msgpack_serialize(payload))


@functools.cache
def _predict_fn(config: ClassifierConfig):
    model = CaptionClassifier(config)

    @jax.jit
    def predict(params, videos):
        digit_logits, motion_logits = model.apply(
            {"params": params}, classifier_inputs(videos, config.frames, config.size)
        )
        return digit_logits.argmax(-1), motion_logits.argmax(-1)

    return predict


def load_classifier(path: str | Path | None = None) -> TrainedClassifier:
    """A saved caption classifier (by default the one bundled with the package)."""
    path = Path(path or DEFAULT_WEIGHTS)
    if not path.is_file():
        raise FileNotFoundError(
            f"caption classifier weights {str(path)!r} not found; train them with "
            "launch/train_caption_classifier.py --out PATH"
        )
    payload = flax.serialization.msgpack_restore(path.read_bytes())
    stored = payload["config"]
    channels = {key: tuple(stored[key]) for key in ("digit_channels", "motion_channels")}
    config = ClassifierConfig(**{**stored, **channels})
    return TrainedClassifier(config, payload["params"])


@functools.cache
def _default_classifier() -> TrainedClassifier:
    return load_classifier()


def caption_accuracy(
    videos: np.ndarray, prompts: Sequence[str], classifier: TrainedClassifier | None = None
) -> float:
    """Share of videos whose predicted digit and motion both match their one-digit prompt."""
    if len(videos) != len(prompts):
        raise ValueError(f"got {len(videos)} videos but {len(prompts)} prompts")
    digits, motions = prompt_labels(prompts)
    predicted_digits, predicted_motions = (classifier or _default_classifier()).predict(videos)
    return float(np.mean((predicted_digits == digits) & (predicted_motions == motions)))
