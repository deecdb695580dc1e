"""Mask Temporal Diffusion (NUWA-XL): one VideoUNet (``mask_condition=True``) for the global
mode (no frame known: L keyframes from text) and the local mode (first and last frame known:
the L-2 frames between them), plus the prefix mode the autoregressive baseline needs (the first
frames known, the rest made).

The known frames and their mask enter the U-Net at every scale (its zero-initialised mask
condition). Sampling also applies the replacement method to the known frames (their part of
z_t is redrawn from q(z_t | known) at every step and the model's x_hat gets them imposed), so
the known frames come out equal to the given ones up to float32 rounding (about 1e-7); the
frames written to a long video are only the made ones, so given frames are kept exactly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from imagen_video_jax.diffusion.conditioning import known_mask as known_frames
from imagen_video_jax.diffusion.conditioning import replacement
from imagen_video_jax.diffusion.guidance import cfg_model_fn
from imagen_video_jax.diffusion.losses import diffusion_loss
from imagen_video_jax.diffusion.samplers import get_sampler
from imagen_video_jax.diffusion.schedules import Schedule
from imagen_video_jax.models.unet import VideoUNet
from imagen_video_jax.train.objective import drop_text, null_text

MASK_MODES = ("global", "local", "prefix")


def mode_mask(mode: str, frames: int, context: int = 1) -> np.ndarray:
    """Known-frame mask [frames] of a mode: global none, local first and last, prefix the first
    ``context``."""
    mask = np.zeros(frames, bool)
    if mode == "local":
        mask[[0, -1]] = True
    elif mode == "prefix":
        if not 1 <= context < frames:
            raise ValueError(f"prefix context must be in [1, {frames - 1}]; got {context}")
        mask[:context] = True
    elif mode != "global":
        raise ValueError(f"mask mode must be one of {MASK_MODES}; got {mode!r}")
    return mask


def mtd_loss(
    apply_fn: Callable[..., jax.Array],
    params: Any,
    batch: Mapping[str, jax.Array],
    key: jax.Array,
    *,
    prediction: str,
    schedule: Schedule,
    text_drop_prob: float,
) -> jax.Array:
    """Mean diffusion loss over the unknown frames of ``batch``: 'video' [B, L, h, w, c] (latents
    or pixels in [-1, 1]), 'known_mask' [B, L] and, for text models, 'text' and 'text_mask'
    (dropped to the null text with ``text_drop_prob`` for classifier-free guidance)."""
    text_key, loss_key, dropout_key = jax.random.split(key, 3)
    video = jnp.asarray(batch["video"], jnp.float32)
    mask = jnp.asarray(batch["known_mask"]).astype(bool)
    inputs = {"known": video * mask[:, :, None, None, None], "known_mask": mask}
    if "text" in batch:
        inputs["text"], inputs["text_mask"] = drop_text(
            batch["text"], batch["text_mask"], text_key, text_drop_prob
        )

    def model_fn(z: jax.Array, logsnr: jax.Array) -> jax.Array:
        return apply_fn(
            {"params": params}, z, logsnr, train=True, rngs={"dropout": dropout_key}, **inputs
        )

    per_example = diffusion_loss(
        model_fn, video, loss_key, prediction=prediction, schedule=schedule, weights=~mask
    )
    return jnp.mean(per_example)


@dataclasses.dataclass(frozen=True)
class SamplingOptions:
    """How MTD calls are sampled (see imagen_video_jax.diffusion.samplers)."""

    sampler: str = "ddim"
    num_steps: int = 50
    guidance_weight: float = 0.0  # classifier-free guidance w (0: the conditional model alone)
    replacement: bool = True  # also impose the known frames by the replacement method

    @classmethod
    def from_config(cls, sample: Mapping[str, Any], **overrides: Any) -> SamplingOptions:
        values = {f.name: sample[f.name] for f in dataclasses.fields(cls) if f.name in sample}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def _pad_rows(x: Any, rows: int) -> Any:
    """Repeat the last row of every (numpy) array of ``x`` until it has ``rows`` rows."""

    def pad(a):
        extra = rows - a.shape[0]
        return a if extra == 0 else np.concatenate([a, np.repeat(a[-1:], extra, axis=0)])

    return jax.tree_util.tree_map(pad, x)


class SegmentSampler:
    """Samples a batch of MTD calls in ONE jitted call: segments stacked on the batch axis.

    ``sampler(key_data [S, 2], known [S, L, h, w, c], known_mask [S, L], text [S, tokens, D] |
    None, text_mask [S, tokens] | None) -> [S, L, h, w, c]`` (float32 numpy); ``key_data`` holds
    raw threefry2x32 keys (uint32). Each segment draws its noise from its own key (the loop runs
    per segment under vmap, the model sees all segments batched), so a segment's result does not
    depend on the others. The segments are sharded over a 1-D 'data' mesh of ``devices``
    (default: all), padded to a multiple of their count. ``calls`` and ``batch_sizes`` record
    every batched call; ``trace_count`` the compilations.
    """

    def __init__(
        self,
        model: VideoUNet,
        params: Any,
        *,
        schedule: Schedule,
        prediction: str = "v",
        options: SamplingOptions = SamplingOptions(),
        devices: Sequence[jax.Device] | None = None,
    ):
        if not model.mask_condition:
            raise ValueError("MTD needs a VideoUNet with mask_condition=True; got False")
        self.model = model
        self.schedule = schedule
        self.prediction = prediction
        self.options = options
        devices = list(jax.devices() if devices is None else devices)
        self.mesh = Mesh(np.array(devices), ("data",))
        self.params = jax.device_put(params, NamedSharding(self.mesh, PartitionSpec()))
        self.calls = 0
        self.batch_sizes: list[int] = []
        self.trace_count = 0
        self._compiled: dict[bool, Callable] = {}

    @property
    def guided(self) -> bool:
        return self.model.use_text and self.options.guidance_weight != 0

    def __call__(
        self,
        key_data: np.ndarray,
        known: np.ndarray,
        known_mask: np.ndarray,
        text: np.ndarray | None = None,
        text_mask: np.ndarray | None = None,
    ) -> np.ndarray:
        segments = int(known.shape[0])
        if self.model.use_text and text is None:
            raise ValueError("this MTD model takes text: pass text and text_mask for every call")
        if not self.model.use_text:
            text = text_mask = None
        self.calls += 1
        self.batch_sizes.append(segments)
        devices = self.mesh.devices.size
        rows = -(-segments // devices) * devices
        batch = (
            np.asarray(key_data, np.uint32),
            np.asarray(known, np.float32),
            np.asarray(known_mask, bool),
        )
        texts = None if text is None else (np.asarray(text), np.asarray(text_mask, bool))
        batch, texts = _pad_rows((batch, texts), rows)
        sharded = NamedSharding(self.mesh, PartitionSpec("data"))
        batch, texts = jax.device_put((batch, texts), sharded)
        weight = jnp.float32(self.options.guidance_weight)
        out = self._loop(texts is not None)(self.params, *batch, texts, weight)
        return np.asarray(out)[:segments]

    def _loop(self, with_text: bool) -> Callable:
        if with_text not in self._compiled:
            self._compiled[with_text] = jax.jit(self._batched())
        return self._compiled[with_text]

    def _batched(self) -> Callable:
        one = self._one_segment()

        def loop(params, key_data, known, known_mask, texts, weight):
            self.trace_count += 1
            keys = jax.random.wrap_key_data(key_data, impl="threefry2x32")
            return jax.vmap(one, in_axes=(None, 0, 0, 0, 0, None))(
                params, keys, known, known_mask, texts, weight
            )

        return loop

    def _one_segment(self) -> Callable:
        options, model = self.options, self.model
        sample = get_sampler(options.sampler)
        guided = self.guided

        def one(params, key, known, known_mask, texts, weight):
            noise_key, sample_key = jax.random.split(key)
            inputs = {"known": known[None], "known_mask": known_mask[None]}
            if texts is not None:
                inputs["text"], inputs["text_mask"] = texts[0][None], texts[1][None]
            fn = _model_fn(model, params, inputs, weight if guided else None)
            frame_mask = known_mask[None, :, None, None, None]
            conditioning = (
                replacement(known_frames(known[None], frame_mask)) if options.replacement else None
            )
            x = sample(
                fn,
                jax.random.normal(noise_key, (1, *known.shape), jnp.float32),
                sample_key,
                num_steps=options.num_steps,
                schedule=self.schedule,
                prediction=self.prediction,
                conditioning=conditioning,
            )
            return x[0]

        return one


def _model_fn(model: VideoUNet, params: Any, inputs: dict, weight: jax.Array | None) -> Callable:
    """fn(z, logsnr) of one segment; with ``weight`` classifier-free guided (both branches in
    one call, the second with the null text)."""
    variables = {"params": params}
    if weight is None:
        return lambda z, logsnr: model.apply(variables, z, logsnr, **inputs)
    both = {k: jnp.concatenate([v, v]) for k, v in inputs.items()}
    null, null_mask = null_text(inputs["text"], inputs["text_mask"])
    both["text"] = jnp.concatenate([inputs["text"], null])
    both["text_mask"] = jnp.concatenate([inputs["text_mask"], null_mask])
    return cfg_model_fn(lambda z, logsnr: model.apply(variables, z, logsnr, **both), weight)
