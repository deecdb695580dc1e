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
    channels: tuple[int, ...] = (32, 64, 128)
    hidden: int = 128


class CaptionClassifier(nn.Module):
    """Early temporal fusion, conv blocks, then digit and motion logits.

    Input ``[B, frames, size, size, 1]`` in [-1, 1]. The frames enter the first convolution as
    channels, so every filter sees the whole clip and motion is read from the first layer on.
    Each block is a 3x3 convolution, a group norm, a ReLU and 2x2 max pooling; the last
    feature map is flattened, so where the digit is, early and late, reaches the heads.
    """

    config: ClassifierConfig

    @nn.compact
    def __call__(self, videos: jax.Array) -> tuple[jax.Array, jax.Array]:
        h = jnp.moveaxis(videos[..., 0], 1, -1)  # [B, size, size, frames]
        for width in self.config.channels:
            h = nn.Conv(width, (3, 3), padding="SAME")(h)
            h = nn.relu(nn.GroupNorm(num_groups=8)(h))
            h = nn.max_pool(h, (2, 2), strides=(2, 2))
        h = nn.relu(nn.Dense(self.config.hidden)(h.reshape(h.shape[0], -1)))
        return nn.Dense(NUM_DIGITS, name="digit")(h), nn.Dense(len(MOTIONS), name="motion")(h)


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
        config = {**dataclasses.asdict(self.config), "channels": list(self.config.channels)}
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
    config = ClassifierConfig(**{**stored, "channels": tuple(stored["channels"])})
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
