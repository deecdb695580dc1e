"""The training loss of one cascade stage: base (text -> video), TSR and SSR (low-res video ->
video), with noise-conditioning augmentation, text dropout for guidance and joint image-video
batches.

The null text used for classifier-free guidance is all-zero embeddings with an all-False mask
(:func:`null_text`): the U-Net's pooled text is then zero and its cross-attention sees no valid
token. Samplers must build their unconditional branch with the same function.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from imagen_video_jax.diffusion.losses import diffusion_loss, noise_augment
from imagen_video_jax.diffusion.schedules import Schedule, get_schedule

ApplyFn = Callable[..., jax.Array]


def video_to_float(video: jax.Array) -> jax.Array:
    """uint8 [0, 255] -> float32 [-1, 1]; float videos are taken as already in [-1, 1]."""
    if jnp.issubdtype(video.dtype, jnp.integer):
        return video.astype(jnp.float32) / 127.5 - 1.0
    return video.astype(jnp.float32)


def video_to_uint8(video: jax.Array) -> jax.Array:
    """float [-1, 1] -> uint8 [0, 255] (clipped, rounded)."""
    return jnp.round((jnp.clip(video, -1.0, 1.0) + 1.0) * 127.5).astype(jnp.uint8)


def null_text(text: jax.Array, text_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The null text of classifier-free guidance: zero embeddings, no valid token."""
    return jnp.zeros_like(text), jnp.zeros(text_mask.shape, bool)


def drop_text(
    text: jax.Array, text_mask: jax.Array, key: jax.Array, prob: float
) -> tuple[jax.Array, jax.Array]:
    """Replace each example's text by the null text with probability ``prob``."""
    drop = jax.random.bernoulli(key, prob, (text.shape[0],))
    null, null_mask = null_text(text, text_mask)
    text = jnp.where(drop[:, None, None], null, text)
    return text, jnp.where(drop[:, None], null_mask, text_mask.astype(bool))


def diffusion_schedule(diffusion: Mapping) -> Schedule:
    """The stage's log-SNR schedule from ``config.diffusion`` (resolution shift for cosine)."""
    name = diffusion["schedule"]
    shift = float(diffusion.get("resolution_shift", 0.0)) if name == "cosine" else 0.0
    return get_schedule(
        name,
        logsnr_min=diffusion["logsnr_min"],
        logsnr_max=diffusion["logsnr_max"],
        shift=shift,
    )


@dataclasses.dataclass(frozen=True)
class StageObjective:
    """What the loss needs to know about a stage (hashable, read once from the config)."""

    prediction: str = "v"
    schedule: Schedule = Schedule()
    use_text: bool = True
    text_drop_prob: float = 0.1
    conditional: bool = False  # SR stages: conditioned on a low-res video
    cond_augmentation: bool = True
    cond_aug_logsnr_range: tuple[float, float] = (0.0, 10.0)

    @classmethod
    def from_config(cls, config: Mapping) -> StageObjective:
        model, diffusion = config["model"], config["diffusion"]
        conditional = int(model.get("cond_channels", 0)) > 0
        return cls(
            prediction=diffusion["prediction"],
            schedule=diffusion_schedule(diffusion),
            use_text=bool(model.get("use_text", True)),
            text_drop_prob=float(diffusion["text_drop_prob"]),
            conditional=conditional,
            cond_augmentation=conditional and bool(model.get("cond_augmentation", True)),
            cond_aug_logsnr_range=tuple(float(v) for v in diffusion["cond_aug_logsnr_range"]),
        )


def model_inputs(
    objective: StageObjective, batch: Mapping[str, jax.Array], key: jax.Array
) -> dict[str, jax.Array]:
    """Conditioning inputs of the model for a training batch: text (randomly dropped to the
    null text), the noise-augmented low-res video and its level, the image-frame mask."""
    text_key, aug_key = jax.random.split(key)
    inputs = {}
    if objective.use_text:
        inputs["text"], inputs["text_mask"] = drop_text(
            batch["text"], batch["text_mask"], text_key, objective.text_drop_prob
        )
    if objective.conditional:
        cond = video_to_float(batch["cond"])
        if objective.cond_augmentation:
            cond, inputs["cond_logsnr"] = noise_augment(
                cond, aug_key, logsnr_range=objective.cond_aug_logsnr_range
            )
        inputs["cond"] = cond
    if "frame_mask" in batch:
        inputs["frame_mask"] = batch["frame_mask"]
    return inputs


def stage_loss(
    apply_fn: ApplyFn,
    params: Any,
    batch: Mapping[str, jax.Array],
    key: jax.Array,
    objective: StageObjective,
) -> jax.Array:
    """Mean over the batch (every frame, image frames included) of the diffusion loss."""
    input_key, loss_key, dropout_key = jax.random.split(key, 3)
    inputs = model_inputs(objective, batch, input_key)

    def model_fn(z: jax.Array, logsnr: jax.Array) -> jax.Array:
        return apply_fn(
            {"params": params}, z, logsnr, train=True, rngs={"dropout": dropout_key}, **inputs
        )

    per_example = diffusion_loss(
        model_fn,
        video_to_float(batch["video"]),
        loss_key,
        prediction=objective.prediction,
        schedule=objective.schedule,
    )
    return jnp.mean(per_example)
