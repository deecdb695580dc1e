"""Cheap sample videos from the EMA params during training (DDIM, few steps, guided)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from imagen_video_jax.diffusion.guidance import cfg_model_fn, dynamic_threshold
from imagen_video_jax.diffusion.losses import noise_augment
from imagen_video_jax.diffusion.samplers import ddim_sample
from imagen_video_jax.parallel import Rules, batch_sharding
from imagen_video_jax.train.objective import (
    ApplyFn,
    StageObjective,
    null_text,
    video_to_float,
    video_to_uint8,
)
from imagen_video_jax.train.step import Batch, embed_text

PreviewFn = Callable[[Any, Batch, Any, jax.Array], jax.Array]


def _conditioning(objective: StageObjective, batch: Batch, key: jax.Array, aug_logsnr: float):
    """The model's conditioning inputs for sampling (cond noised at the fixed sampling level)."""
    inputs = {}
    if objective.conditional:
        cond = video_to_float(batch["cond"])
        if objective.cond_augmentation:
            cond, inputs["cond_logsnr"] = noise_augment(cond, key, logsnr=aug_logsnr)
        inputs["cond"] = cond
    if "frame_mask" in batch:  # image packs of joint training are sampled as images
        inputs["frame_mask"] = batch["frame_mask"]
    return inputs


def make_preview_sampler(
    apply_fn: ApplyFn, config: Mapping, rules: Rules, *, text_encoder: Any = None
) -> PreviewFn:
    """``preview(params, batch, encoder_params, key) -> uint8 [n, T, H, W, 3]`` for the first
    ``config.train.num_samples`` examples of ``batch`` (their text and low-res videos),
    with ``config.train.sample_steps`` DDIM steps and constant guidance
    ``config.sample.guidance_weight``."""
    objective = StageObjective.from_config(config)
    count, steps = int(config["train"]["num_samples"]), int(config["train"]["sample_steps"])
    weight = float(config["sample"]["guidance_weight"])
    threshold = float(config["sample"].get("dynamic_threshold", 0.0))
    aug_logsnr = float(config["diffusion"]["cond_aug_logsnr_sample"])
    x_transform = (lambda x: dynamic_threshold(x, threshold)) if threshold > 0 else None

    def preview(params: Any, batch: Batch, encoder_params: Any, key: jax.Array) -> jax.Array:
        with nn.logical_axis_rules(rules):
            batch = {
                k: v[:count] for k, v in embed_text(batch, text_encoder, encoder_params).items()
            }
            aug_key, noise_key, sample_key = jax.random.split(key, 3)
            inputs = _conditioning(objective, batch, aug_key, aug_logsnr)
            if objective.use_text:
                null, null_mask = null_text(batch["text"], batch["text_mask"])
                text = jnp.concatenate([batch["text"], null])
                mask = jnp.concatenate([batch["text_mask"].astype(bool), null_mask])
                both = {k: jnp.concatenate([v, v]) for k, v in inputs.items()}

                def both_branches(z: jax.Array, logsnr: jax.Array) -> jax.Array:
                    return apply_fn(
                        {"params": params}, z, logsnr, text=text, text_mask=mask, **both
                    )

                model_fn = cfg_model_fn(both_branches, weight)
            else:

                def model_fn(z: jax.Array, logsnr: jax.Array) -> jax.Array:
                    return apply_fn({"params": params}, z, logsnr, **inputs)

            z_T = jax.random.normal(noise_key, batch["video"].shape, jnp.float32)
            x = ddim_sample(
                model_fn,
                z_T,
                sample_key,
                num_steps=steps,
                schedule=objective.schedule,
                prediction=objective.prediction,
                x_transform=x_transform,
            )
        return video_to_uint8(x)

    return preview


def jit_preview_sampler(
    preview: PreviewFn, param_shardings: Any, encoder_shardings: Any, mesh: Mesh, rules: Rules
) -> PreviewFn:
    """``preview`` compiled with the output replicated, so every process can read it."""
    replicated = NamedSharding(mesh, PartitionSpec())
    return jax.jit(
        preview,
        in_shardings=(param_shardings, batch_sharding(mesh, rules), encoder_shardings, replicated),
        out_shardings=replicated,
    )
