"""One stage's sampling loop: text (+ the previous stage's video) -> video, as one jitted call.

The loop runs each example with its own random key (vmapped), so a batch of prompts gives the
same videos as the prompts one by one with the same seeds. Classifier-free guidance evaluates
the conditional and the null-text branch as one batched model call; distilled students take the
guidance weight as an input instead. Compiled functions are cached per (sampler, steps,
guidance mode) and shared by every stage with the same model, shape and diffusion config (a
cascade loaded again reuses them); guidance weights are a runtime input, so new prompts, seeds
or weights never recompile. Stages too large for device memory run their model over frame chunks
(``sample.frame_chunk``, ``sample.layer_chunk``: see chunked.py), with the same result.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from imagen_video_jax.cascade.chunked import FrameChunking
from imagen_video_jax.cascade.specs import SamplingSettings, is_distilled, spec_from_config
from imagen_video_jax.diffusion.guidance import cfg_model_fn, dynamic_threshold, per_step_weights
from imagen_video_jax.diffusion.losses import noise_augment
from imagen_video_jax.diffusion.samplers import get_sampler
from imagen_video_jax.models import VideoUNet
from imagen_video_jax.train.objective import (
    diffusion_schedule,
    null_text,
    video_to_float,
    video_to_uint8,
)

Progress = Callable[[int, int], None]
ModelFn = Callable[[jax.Array, jax.Array], jax.Array]


def guidance_mode(config: Mapping[str, Any], weights: np.ndarray) -> str:
    """'input' (distilled student: w is a model input), 'cfg' (two branches in one call) or
    'none' (no text, or every weight 0: the conditional branch alone)."""
    if not config["model"].get("use_text", True):
        return "none"
    if is_distilled(config):
        return "input"
    return "cfg" if np.any(weights != 0) else "none"


class StageSampler:
    """Samples one stage: ``sampler(params, keys, text, text_mask, cond, settings)``.

    ``keys`` holds one PRNG key per example; ``cond`` is the previous stage's video, uint8 or
    float in [-1, 1] (None for the base stage). Returns uint8 video [B, T, H, W, 3].
    ``trace_count`` counts how often the loop was traced (compiled), for tests and benchmarks.
    Use :meth:`shared` to get the one sampler (and its compiled loops) of a config.
    """

    _shared: ClassVar[dict[str, StageSampler]] = {}

    def __init__(self, config: Mapping[str, Any], model: VideoUNet | None = None):
        self.config = config
        self.spec = spec_from_config(config)
        self.model = VideoUNet.from_config(config["model"]) if model is None else model
        self.chunking = FrameChunking.from_config(config)
        self.chunking.check(self.model, self.spec.frames)
        self.schedule = diffusion_schedule(config["diffusion"])
        self.prediction = str(config["diffusion"]["prediction"])
        self.progress: Progress | None = None
        self.trace_count = 0
        self._compiled: dict[tuple, Callable] = {}

    @classmethod
    def shared(cls, config: Mapping[str, Any]) -> StageSampler:
        """The sampler of this stage/model/diffusion config and frame chunking, made once per
        process."""
        parts = {k: config[k] for k in ("stage", "model", "diffusion")}
        parts["chunking"] = dataclasses.asdict(FrameChunking.from_config(config))
        key = json.dumps(parts, sort_keys=True)
        if key not in cls._shared:
            cls._shared[key] = cls(config)
        return cls._shared[key]

    def __call__(
        self,
        params: Any,
        keys: jax.Array,
        text: jax.Array | None,
        text_mask: jax.Array | None,
        cond: jax.Array | None,
        settings: SamplingSettings,
    ) -> jax.Array:
        fn, args = self._loop_and_args(params, keys, text, text_mask, cond, settings)
        return fn(*args)

    def compile(self, params, keys, text, text_mask, cond, settings) -> tuple[Any, tuple]:
        """The loop compiled ahead of time for these inputs, and the arguments to call it
        with: ``compiled(*args)`` samples as ``self(...)`` does (benchmarks time compiling
        and sampling apart, and read ``compiled.memory_analysis()``)."""
        fn, args = self._loop_and_args(params, keys, text, text_mask, cond, settings)
        return fn.lower(*args).compile(), args

    def _loop_and_args(self, params, keys, text, text_mask, cond, settings) -> tuple:
        weights = settings.guidance_weights()
        mode = guidance_mode(self.config, weights)
        if not self.model.use_text:
            text = text_mask = None
        args = (params, keys, text, text_mask, cond, jnp.asarray(weights))
        return self._loop(settings, mode), args

    def _loop(self, settings: SamplingSettings, mode: str) -> Callable:
        """The jitted batch loop for these static settings (built once, then reused). Only
        while a progress listener is set does the loop call back to the host at every step:
        on a GPU each callback synchronises with the host, milliseconds a step that would
        dominate a small stage's 8 steps."""
        reports = self.progress is not None
        static = (
            settings.sampler,
            settings.num_steps,
            settings.dynamic_threshold,
            settings.cond_aug_logsnr,
            mode,
            reports,
        )
        if static not in self._compiled:
            self._compiled[static] = jax.jit(self._batch_loop(settings, mode, reports))
        return self._compiled[static]

    def _report(self, step: int, num_steps: int) -> None:
        """Host side of the samplers' progress callback: forwards to ``self.progress``."""
        if self.progress is not None:
            self.progress(step, num_steps)

    def _batch_loop(self, settings: SamplingSettings, mode: str, reports: bool) -> Callable:
        one = self._example_loop(settings, mode, reports)

        def loop(params, keys, text, text_mask, cond, weights):
            self.trace_count += 1
            return jax.vmap(one, in_axes=(None, 0, 0, 0, 0, None))(
                params, keys, text, text_mask, cond, weights
            )

        return loop

    def _example_loop(self, settings: SamplingSettings, mode: str, reports: bool) -> Callable:
        """Sampling of one example (arrays without a batch axis; the model sees batch 1), with
        a progress callback at every step when ``reports``."""
        sample = get_sampler(settings.sampler)
        percentile = settings.dynamic_threshold
        x_transform = (lambda x: dynamic_threshold(x, percentile)) if percentile > 0 else None
        shape = (1, *self.spec.shape, self.model.out_channels)

        def one(params, key, text, text_mask, cond, weights):
            noise_key, aug_key, sample_key = jax.random.split(key, 3)
            inputs = self._conditioning(cond, aug_key, settings.cond_aug_logsnr)
            if text is not None:
                inputs["text"], inputs["text_mask"] = text[None], text_mask[None].astype(bool)
            model_fn = self._model_fn(
                params, inputs, per_step_weights(weights, self.schedule), mode
            )
            x = sample(
                model_fn,
                jax.random.normal(noise_key, shape, jnp.float32),
                sample_key,
                num_steps=settings.num_steps,
                schedule=self.schedule,
                prediction=self.prediction,
                x_transform=x_transform,
                progress=self._report if reports else None,
            )
            return video_to_uint8(x[0])

        return one

    def _conditioning(self, cond: jax.Array | None, key: jax.Array, aug_logsnr: float) -> dict:
        """The previous stage's video (batch 1), noised at the fixed sampling level when the
        stage was trained with noise-conditioning augmentation."""
        if cond is None:
            return {}
        cond = jnp.clip(video_to_float(cond[None]), -1.0, 1.0)
        if not self.model.cond_augmentation:
            return {"cond": cond}
        cond, cond_logsnr = noise_augment(cond, key, logsnr=aug_logsnr)
        return {"cond": cond, "cond_logsnr": cond_logsnr}

    def _model_fn(self, params: Any, inputs: dict, weight_at: Callable, mode: str) -> ModelFn:
        """``fn(z, logsnr) -> prediction`` with guidance applied as ``mode`` says."""
        variables = {"params": params}
        apply = self.chunking.wrap(self.model)

        if mode == "input":
            return lambda z, logsnr: apply(
                variables, z, logsnr, guidance=weight_at(logsnr), **inputs
            )
        if mode == "none":
            return lambda z, logsnr: apply(variables, z, logsnr, **inputs)

        null, null_mask = null_text(inputs["text"], inputs["text_mask"])
        both = {k: jnp.concatenate([v, v]) for k, v in inputs.items()}
        both["text"] = jnp.concatenate([inputs["text"], null])
        both["text_mask"] = jnp.concatenate([inputs["text_mask"], null_mask])
        return cfg_model_fn(lambda z, logsnr: apply(variables, z, logsnr, **both), weight_at)
