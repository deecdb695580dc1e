"""Training data for NUWA-XL on the bundled moving digits: long videos of bouncing digits,
their T-KLVAE latents, and MTD examples at the strides of every depth.

A long video is clip ``i`` of the moving-digits renderer rendered with many frames and bouncing
digits, so the motion goes on for the whole video. MTD examples take ``L`` frames of a long
video's latents at the stride of one depth of diffusion over diffusion: global mode (no frame
known) at stride (L-1)^(m-1), local mode (first and last known) at stride (L-1)^(m-d) for a
depth d in 2..m, and prefix mode (the first 1..context frames known, for the autoregressive
baseline) at stride 1. Latents are encoded in consecutive chunks of the VAE's clip length, the
same chunks that decoding uses, so every frame has one latent whatever stride reads it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from imagen_video_jax.data.moving_digits import MovingDigitsSpec, render_clip
from imagen_video_jax.long_video.mtd import MASK_MODES, mode_mask
from imagen_video_jax.models.tklvae import TKLVAE


def long_video_spec(data: Mapping, frames: int) -> MovingDigitsSpec:
    """The moving-digits spec of ``config.data`` with ``frames`` frames."""
    return MovingDigitsSpec(
        frames=frames,
        height=int(data["height"]),
        width=int(data["width"]),
        fps=float(data["fps"]),
        speed=float(data["speed"]),
        digit_scale=float(data["digit_scale"]),
        two_digit_prob=float(data["two_digit_prob"]),
        bounce_prob=float(data["bounce_prob"]),
        seed=int(data["seed"]),
    )


def render_long_videos(
    data: Mapping, count: int, frames: int, split: str = "train", start: int = 0
) -> tuple[np.ndarray, list[str]]:
    """uint8 videos [count, frames, H, W, 3] and their captions (records start.. of split)."""
    spec = long_video_spec(data, frames)
    records = [render_clip(spec, split, index) for index in range(start, start + count)]
    return np.stack([r["video"] for r in records]), [str(r["caption"]) for r in records]


def random_clips(
    videos: np.ndarray, rng: np.random.Generator, batch: int, frames: int
) -> np.ndarray:
    """``batch`` clips of ``frames`` consecutive frames from random videos and starts."""
    index = rng.integers(len(videos), size=batch)
    starts = rng.integers(videos.shape[1] - frames + 1, size=batch)
    positions = starts[:, None] + np.arange(frames)[None]
    return videos[index[:, None], positions]


def to_float(video: np.ndarray) -> jax.Array:
    """uint8 [0, 255] -> float32 [-1, 1]."""
    return jnp.asarray(video, jnp.float32) / 127.5 - 1.0


def encode_videos(
    vae: TKLVAE, params, videos: np.ndarray, chunk: int, batch: int = 64
) -> np.ndarray:
    """Posterior means [V, T, h, w, c] of uint8 videos [V, T, H, W, 3], encoded in consecutive
    chunks of ``chunk`` frames (T a multiple of chunk), ``batch`` chunks a call."""
    count, frames = videos.shape[:2]
    if frames % chunk:
        raise ValueError(f"video frames ({frames}) must be a multiple of the chunk ({chunk})")
    chunks = videos.reshape(count * frames // chunk, chunk, *videos.shape[2:])
    encode = jax.jit(lambda p, x: vae.apply({"params": p}, to_float(x), method="encode")[0])
    means = [
        np.asarray(encode(params, chunks[i : i + batch])) for i in range(0, len(chunks), batch)
    ]
    return np.concatenate(means).reshape(count, frames, *means[0].shape[2:])


def mode_strides(frames_per_call: int, depth: int) -> dict[str, list[int]]:
    """Frame strides of the examples of each mode (see the module docstring)."""
    steps = frames_per_call - 1
    return {
        "global": [steps ** (depth - 1)],
        "local": [steps ** (depth - d) for d in range(2, depth + 1)],
        "prefix": [1],
    }


@dataclasses.dataclass
class MTDExamples:
    """Random MTD training batches from a pool of long-video latents [V, T, h, w, c].

    ``text``/``text_mask`` hold each video's encoded caption (None for models without text);
    ``mode_probs`` the probabilities of the global, local and prefix modes.
    """

    latents: np.ndarray
    frames_per_call: int
    depth: int
    mode_probs: tuple[float, float, float]
    max_context: int
    text: np.ndarray | None = None
    text_mask: np.ndarray | None = None
    seed: int = 0

    def __post_init__(self):
        probs = np.asarray(self.mode_probs, np.float64)
        if probs.shape != (len(MASK_MODES),) or probs.min() < 0 or probs.sum() <= 0:
            raise ValueError(f"mode_probs needs one weight >= 0 per mode {MASK_MODES}; got {probs}")
        self.probs = probs / probs.sum()
        self.strides = mode_strides(self.frames_per_call, self.depth)
        longest = max(max(s) for s in self.strides.values()) * (self.frames_per_call - 1) + 1
        if self.latents.shape[1] < longest:
            raise ValueError(
                f"long videos of {self.latents.shape[1]} frames are too short for global "
                f"examples of L={self.frames_per_call}, m={self.depth}: need >= {longest}"
            )
        self.rng = np.random.default_rng(self.seed)

    def batch(self, size: int) -> dict[str, np.ndarray]:
        """'video' [B, L, h, w, c] float32, 'known_mask' [B, L], and text when present."""
        rng, frames = self.rng, self.frames_per_call
        modes = rng.choice(len(MASK_MODES), size=size, p=self.probs)
        strides = np.array([rng.choice(self.strides[MASK_MODES[m]]) for m in modes])
        contexts = rng.integers(1, self.max_context + 1, size=size)
        masks = np.stack([mode_mask(MASK_MODES[m], frames, c) for m, c in zip(modes, contexts)])
        videos = rng.integers(len(self.latents), size=size)
        room = self.latents.shape[1] - strides * (frames - 1)
        starts = (rng.random(size) * room).astype(np.int64)
        positions = starts[:, None] + strides[:, None] * np.arange(frames)[None]
        batch = {"video": self.latents[videos[:, None], positions], "known_mask": masks}
        if self.text is not None:
            batch["text"], batch["text_mask"] = self.text[videos], self.text_mask[videos]
        return batch
