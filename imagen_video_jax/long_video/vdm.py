"""Video Diffusion Models (Ho et al. 2022): conditional generation from a video model trained
without the condition, and long videos by autoregressive extension.

Three tasks share one sampler: video prediction (the first frames are known), temporal
interpolation (every ``stride``-th frame is known) and spatial super-resolution (a
low-resolution video is known). Each samples by one of two ``METHODS``:

- ``replacement``: at every step the known part of ``z_t`` is drawn from ``q(z_t | x_a)`` and the
  model's ``x_hat`` gets the known data imposed; the rest follows the unconditional model.
- ``reconstruction``: reconstruction guidance, ``x~_b = x_hat_b - (w_r alpha_t / 2)
  grad_{z_b} ||x_a - x_hat_a(z_t)||^2``, the gradient taken through the model, on top of the
  replacement of the known part (for a known low-resolution video, replacing is optional).

Extension keeps the last ``context_frames`` frames of the video so far as the known first frames
of the next window and generates the rest, window after window, to any length.

Model functions are ``fn(z, logsnr) -> prediction`` (``unet_model_fn`` makes one of a VideoUNet);
:class:`WindowSampler` compiles the sampling of one window shape once, with params, text, keys
and known frames as arguments, and :func:`extend_stage_video` extends from a stage's config and
params (what ``imagen-video sample --extend-to N`` runs).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.typing import ArrayLike

from imagen_video_jax.diffusion.conditioning import (
    Conditioning,
    Observation,
    known_lowres,
    known_mask,
    reconstruction_guidance,
    replacement,
)
from imagen_video_jax.diffusion.guidance import cfg_model_fn
from imagen_video_jax.diffusion.samplers import SAMPLERS, get_sampler
from imagen_video_jax.diffusion.schedules import DEFAULT_SCHEDULE, Schedule
from imagen_video_jax.models import VideoUNet
from imagen_video_jax.train.objective import (
    diffusion_schedule,
    null_text,
    video_to_float,
    video_to_uint8,
)

METHODS = ("reconstruction", "replacement")

ModelFn = Callable[[Array, Array], Array]
Progress = Callable[[int, int], None]
WindowFn = Callable[[Array, Array | None, Array | None], Array]
"""``(key, known [B, W, H, W, C] or None, known_frames [W] bool or None) -> window``: one window
of W frames, its ``known_frames`` equal to ``known``'s; None samples it unconditionally."""


@dataclasses.dataclass(frozen=True)
class VDMSampling:
    """How conditional samples are drawn (hashable: one compile per setting)."""

    sampler: str = "ddim"  # ddim | ancestral | stochastic | pc
    num_steps: int = 128  # model evaluations (pc: plus its corrector calls)
    method: str = "reconstruction"  # reconstruction | replacement
    weight: float = 2.0  # w_r of reconstruction guidance (0: replacement alone)
    clip_x: bool = True  # clip x_hat to [-1, 1] at every step (known data stays exact)
    schedule: Schedule = DEFAULT_SCHEDULE  # the model's log-SNR schedule
    prediction: str = "v"  # what the model predicts: v | eps | x

    def __post_init__(self):
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {sorted(SAMPLERS)}, got {self.sampler!r}")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {list(METHODS)}, got {self.method!r}")
        if not isinstance(self.num_steps, int) or self.num_steps < 1:
            raise ValueError(f"num_steps must be a positive int, got {self.num_steps!r}")
        if not np.isfinite(self.weight) or self.weight < 0:
            raise ValueError(f"reconstruction weight w_r must be >= 0, got {self.weight!r}")


# ----------------------------------------------------------------------------- what is known


def frames_observation(known: ArrayLike, known_frames: ArrayLike) -> Observation:
    """Known frames of a video: ``known`` [B, T, H, W, C] where ``known_frames`` ([T] or [B, T],
    bool) is True; the other frames of ``known`` are ignored."""
    known = jnp.asarray(known, jnp.float32)
    frames = jnp.asarray(known_frames)
    if known.ndim != 5 or frames.shape[-1] != known.shape[1] or frames.ndim not in (1, 2):
        raise ValueError(
            f"expected known [B, T, H, W, C] and known_frames [T] or [B, T]; got shapes "
            f"{known.shape} and {frames.shape}"
        )
    mask = jnp.broadcast_to(frames.astype(jnp.float32), known.shape[:2])
    return known_mask(known, mask[:, :, None, None, None])


def prediction_frames(num_frames: int, num_known: int) -> np.ndarray:
    """[num_frames] bool: the first ``num_known`` frames are known (video prediction)."""
    if not 0 < num_known < num_frames:
        raise ValueError(
            f"video prediction needs 0 < known frames < frames; got {num_known} of {num_frames}"
        )
    return np.arange(num_frames) < num_known


def interpolation_frames(num_frames: int, stride: int = 2) -> np.ndarray:
    """[num_frames] bool: every ``stride``-th frame from the first is known (interpolation)."""
    if stride < 2 or num_frames % stride:
        raise ValueError(
            f"temporal interpolation needs a stride >= 2 dividing the frames; got stride "
            f"{stride} for {num_frames} frames"
        )
    return np.arange(num_frames) % stride == 0


# ----------------------------------------------------------------------------- sampling


def make_conditioning(
    observation: Observation, method: str, weight: float, *, replace: bool = True
) -> Conditioning:
    """The sampler hook of ``method``: replacement, or reconstruction guidance with weight w_r
    (``replace``: also replace the known part, as for known frames)."""
    if method == "replacement":
        return replacement(observation)
    if method == "reconstruction":
        return reconstruction_guidance(observation, weight, replace=replace)
    raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")


def conditional_sample(
    model_fn: ModelFn,
    observation: Observation | None,
    key: Array,
    shape: Sequence[int],
    options: VDMSampling = VDMSampling(),
    *,
    replace: bool = True,
    progress: Progress | None = None,
) -> Array:
    """A float32 sample [B, T, H, W, C] in about [-1, 1] given ``observation`` (None: an
    unconditional sample; the same key gives the same noise either way)."""
    noise_key, sample_key = jax.random.split(key)
    z_T = jax.random.normal(noise_key, tuple(shape), jnp.float32)
    conditioning = None
    if observation is not None:
        conditioning = make_conditioning(
            observation, options.method, options.weight, replace=replace
        )
    return get_sampler(options.sampler)(
        model_fn,
        z_T,
        sample_key,
        num_steps=options.num_steps,
        schedule=options.schedule,
        prediction=options.prediction,
        conditioning=conditioning,
        x_transform=(lambda x: jnp.clip(x, -1.0, 1.0)) if options.clip_x else None,
        progress=progress,
    )


def predict_video(
    model_fn: ModelFn,
    first_frames: ArrayLike,
    num_frames: int,
    key: Array,
    options: VDMSampling = VDMSampling(),
    progress: Progress | None = None,
) -> Array:
    """Video prediction: ``first_frames`` [B, k, H, W, C] continued to ``num_frames`` frames
    (the model's window); the result's first k frames are ``first_frames``."""
    first = jnp.asarray(first_frames, jnp.float32)
    frames = prediction_frames(num_frames, first.shape[1])
    pad = jnp.zeros((first.shape[0], num_frames - first.shape[1], *first.shape[2:]))
    known = jnp.concatenate([first, pad], axis=1)
    observation = frames_observation(known, frames)
    return conditional_sample(model_fn, observation, key, known.shape, options, progress=progress)


def interpolate_video(
    model_fn: ModelFn,
    frames: ArrayLike,
    key: Array,
    options: VDMSampling = VDMSampling(),
    *,
    stride: int = 2,
    progress: Progress | None = None,
) -> Array:
    """Temporal interpolation: ``frames`` [B, T, H, W, C] become frames 0, stride, 2 stride, ...
    of a video of ``stride * T`` frames; the frames between are generated."""
    frames = jnp.asarray(frames, jnp.float32)
    num_frames = stride * frames.shape[1]
    known_frames = interpolation_frames(num_frames, stride)
    shape = (frames.shape[0], num_frames, *frames.shape[2:])
    known = jnp.zeros(shape).at[:, ::stride].set(frames)
    observation = frames_observation(known, known_frames)
    return conditional_sample(model_fn, observation, key, shape, options, progress=progress)


def super_resolve_video(
    model_fn: ModelFn,
    lowres: ArrayLike,
    key: Array,
    options: VDMSampling = VDMSampling(),
    *,
    factor: int = 2,
    replace: bool = False,
    progress: Progress | None = None,
) -> Array:
    """Spatial super-resolution: a video whose ``factor`` x ``factor`` block means are
    ``lowres`` [B, T, h, w, C], sampled at [B, T, factor h, factor w, C]. Reconstruction guidance
    steers by the block-mean error (VDM); ``replace`` also imposes the block means on z_t and
    x_hat (replacement always does)."""
    lowres = jnp.asarray(lowres, jnp.float32)
    if lowres.ndim != 5 or factor < 2:
        raise ValueError(
            f"expected lowres [B, T, h, w, C] and factor >= 2; got {lowres.shape}, {factor}"
        )
    b, t, h, w, c = lowres.shape
    observation = known_lowres(lowres, (1, factor, factor))
    shape = (b, t, factor * h, factor * w, c)
    return conditional_sample(
        model_fn, observation, key, shape, options, replace=replace, progress=progress
    )


# ----------------------------------------------------------------------------- a VideoUNet


def unet_model_fn(
    model: VideoUNet,
    params: Any,
    *,
    text: Array | None = None,
    text_mask: Array | None = None,
    guidance_weight: ArrayLike | None = None,
) -> ModelFn:
    """``fn(z, logsnr)`` of a VideoUNet, on ``text`` when the model takes text; with a
    ``guidance_weight`` w, classifier-free guided, (1 + w) cond - w null, both branches in one
    batched call (the null text is the one used in training)."""
    variables = {"params": params}
    if not model.use_text:
        return lambda z, logsnr: model.apply(variables, z, logsnr)
    if text is None or text_mask is None:
        raise ValueError("this VideoUNet takes text (model.use_text): pass text and text_mask")
    text_mask = jnp.asarray(text_mask).astype(bool)
    if guidance_weight is None:
        return lambda z, logsnr: model.apply(variables, z, logsnr, text=text, text_mask=text_mask)
    null, null_mask = null_text(text, text_mask)
    both_text = jnp.concatenate([text, null])
    both_mask = jnp.concatenate([text_mask, null_mask])
    return cfg_model_fn(
        lambda z, logsnr: model.apply(variables, z, logsnr, text=both_text, text_mask=both_mask),
        guidance_weight,
    )


class WindowSampler:
    """Windows ``[B, *window]`` of a VideoUNet, unconditional or given known frames.

    Each kind (batch size, with or without known frames, guided or not) compiles once; params,
    text, the guidance weight, keys and known frames are arguments, so new ones never recompile.
    ``progress(step, num_steps)`` hears the sampling steps when given at construction (the
    attribute may then be swapped for another callable).
    """

    _shared: ClassVar[dict[tuple, WindowSampler]] = {}

    def __init__(
        self,
        model: VideoUNet,
        window: Sequence[int],
        options: VDMSampling = VDMSampling(),
        progress: Progress | None = None,
    ):
        if len(window) != 4:
            raise ValueError(f"window must be (frames, height, width, channels); got {window}")
        self.model, self.window, self.options = model, tuple(int(v) for v in window), options
        self.progress = progress
        self._jitted = jax.jit(self._sample, static_argnames=("batch", "conditional", "guided"))

    @classmethod
    def shared(cls, config: Mapping[str, Any], **options: Any) -> WindowSampler:
        """The sampler of a stage config (``config.stage`` shape, ``config.model``,
        ``config.diffusion``, ``config.sample``), made once per process with its compiled
        loops; ``options`` override VDMSampling fields."""
        sampling = sampling_from_config(config, **options)
        sections = {k: _plain(config[k]) for k in ("stage", "model")}
        key = (json.dumps(sections, sort_keys=True), sampling)
        if key not in cls._shared:
            model = VideoUNet.from_config(config["model"])
            stage = config["stage"]
            window = (stage["frames"], stage["height"], stage["width"], model.out_channels)
            cls._shared[key] = cls(model, window, sampling)
        return cls._shared[key]

    def _report(self, step: int, num_steps: int) -> None:
        if self.progress is not None:
            self.progress(step, num_steps)

    def _sample(
        self,
        params: Any,
        key: Array,
        text: Array | None,
        text_mask: Array | None,
        weight: Array,
        known: Array | None,
        known_frames: Array | None,
        *,
        batch: int,
        conditional: bool,
        guided: bool,
    ) -> Array:
        fn = unet_model_fn(
            self.model,
            params,
            text=text,
            text_mask=text_mask,
            guidance_weight=weight if guided else None,
        )
        observation = frames_observation(known, known_frames) if conditional else None
        shape = (batch, *self.window)
        report = None if self.progress is None else self._report
        return conditional_sample(fn, observation, key, shape, self.options, progress=report)

    def __call__(
        self,
        params: Any,
        key: Array,
        *,
        batch: int | None = None,
        text: Array | None = None,
        text_mask: Array | None = None,
        guidance_weight: float = 0.0,
        known: Array | None = None,
        known_frames: ArrayLike | None = None,
    ) -> Array:
        """A float32 window [B, *window]: ``known`` [B, *window] counts where ``known_frames``
        [frames] is True (both None: unconditional); B from ``batch``, ``text`` or ``known``."""
        if (known is None) != (known_frames is None):
            raise ValueError("pass known and known_frames together (or neither)")
        sizes = {len(a) for a in (text, known) if a is not None} | (
            set() if batch is None else {batch}
        )
        if len(sizes) != 1:
            raise ValueError(f"batch, text and known disagree on (or lack) a batch size: {sizes}")
        batch = sizes.pop()
        if known is not None and tuple(known.shape[1:]) != self.window:
            raise ValueError(f"known must be [B, *{self.window}]; got {tuple(known.shape)}")
        guided = text is not None and self.model.use_text and guidance_weight != 0
        return self._jitted(
            params,
            key,
            text if self.model.use_text else None,
            text_mask if self.model.use_text else None,
            jnp.float32(guidance_weight),
            None if known is None else jnp.asarray(known, jnp.float32),
            None if known_frames is None else jnp.asarray(known_frames, bool),
            batch=batch,
            conditional=known is not None,
            guided=guided,
        )

    def bind(
        self,
        params: Any,
        *,
        batch: int | None = None,
        text: Array | None = None,
        text_mask: Array | None = None,
        guidance_weight: float = 0.0,
    ) -> WindowFn:
        """This sampler as a WindowFn of fixed params, text and guidance (for extend_video)."""

        def window(key: Array, known: Array | None, known_frames: Array | None) -> Array:
            return self(
                params,
                key,
                batch=batch,
                text=text,
                text_mask=text_mask,
                guidance_weight=guidance_weight,
                known=known,
                known_frames=known_frames,
            )

        return window


# ----------------------------------------------------------------------------- extension


def extension_windows(num_frames: int, start_frames: int, window: int, context: int) -> int:
    """How many conditional windows extend ``start_frames`` frames to ``num_frames``."""
    if not 0 < context < window:
        raise ValueError(f"need 0 < context_frames < window frames; got {context} and {window}")
    if start_frames < context or num_frames < start_frames:
        raise ValueError(
            f"extension needs context_frames ({context}) <= start frames ({start_frames}) <= "
            f"num_frames ({num_frames})"
        )
    return -(-(num_frames - start_frames) // (window - context))


def extend_video(
    sample_window: WindowFn,
    key: Array,
    *,
    num_frames: int,
    window_frames: int,
    context_frames: int,
    start: ArrayLike | None = None,
    progress: Progress | None = None,
) -> Array:
    """A video [B, num_frames, H, W, C] grown window by window: each window of
    ``window_frames`` frames gets the last ``context_frames`` frames so far as its known first
    frames and adds the rest (the last window's surplus frames are dropped). ``start``
    [B, >= context_frames, ...] is the video to extend; None samples a first window
    unconditionally. Window i uses ``fold_in(key, i)``; ``progress(frames, num_frames)`` is
    called once each window is made."""
    if start is None:
        video = sample_window(jax.random.fold_in(key, 0), None, None)
        if video.shape[1] != window_frames:
            raise ValueError(f"sample_window gave {video.shape[1]} frames, not {window_frames}")
    else:
        video = jnp.asarray(start, jnp.float32)
    count = extension_windows(num_frames, video.shape[1], window_frames, context_frames)
    if progress is not None:
        progress(video.shape[1], num_frames)
    known_frames = jnp.asarray(prediction_frames(window_frames, context_frames))
    for i in range(1, count + 1):
        tail = video[:, -context_frames:]
        pad = jnp.zeros((tail.shape[0], window_frames - context_frames, *tail.shape[2:]))
        known = jnp.concatenate([tail, pad], axis=1)
        window = sample_window(jax.random.fold_in(key, i), known, known_frames)
        video = jnp.concatenate([video, window[:, context_frames:]], axis=1)
        if progress is not None:
            progress(min(video.block_until_ready().shape[1], num_frames), num_frames)
    return video[:, :num_frames]


def _plain(section: Any) -> Any:
    """A config section as plain JSON-able data (ConfigDict or dict)."""
    return section.to_dict() if hasattr(section, "to_dict") else dict(section)


def sampling_from_config(config: Mapping[str, Any], **overrides: Any) -> VDMSampling:
    """VDMSampling of a stage config: ``config.sample`` (sampler, num_steps, and where present
    conditioning, reconstruction_weight, clip_x) and the diffusion schedule and prediction;
    ``overrides`` (VDMSampling field names, None ignored) win."""
    sample, diffusion = config["sample"], config["diffusion"]
    defaults = VDMSampling()
    values = {
        "sampler": str(sample["sampler"]),
        "num_steps": int(sample["num_steps"]),
        "method": str(sample.get("conditioning", defaults.method)),
        "weight": float(sample.get("reconstruction_weight", defaults.weight)),
        "clip_x": bool(sample.get("clip_x", defaults.clip_x)),
        "schedule": diffusion_schedule(diffusion),
        "prediction": str(diffusion["prediction"]),
    }
    fields = {f.name for f in dataclasses.fields(VDMSampling)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown sampling option(s) {unknown}; expected some of {sorted(fields)}")
    values.update({k: v for k, v in overrides.items() if v is not None})
    return VDMSampling(**values)


def default_context_frames(config: Mapping[str, Any]) -> int:
    """Known frames per extension window of a stage config: ``config.sample.context_frames``,
    or half the window."""
    return int(config["sample"].get("context_frames", int(config["stage"]["frames"]) // 2))


def extend_stage_video(
    config: Mapping[str, Any],
    params: Any,
    num_frames: int,
    *,
    seed: int = 0,
    batch: int | None = None,
    text: Array | None = None,
    text_mask: Array | None = None,
    guidance_weight: float | None = None,
    context_frames: int | None = None,
    start: ArrayLike | None = None,
    progress: Progress | None = None,
    **options: Any,
) -> np.ndarray:
    """uint8 video [B, num_frames, H, W, 3] from a stage's ``config`` and (EMA) ``params``:
    a first window from the stage, then autoregressive extension (see :func:`extend_video`).

    ``text``/``text_mask`` [B, ...] for text models (B from them, else ``batch``, default 1);
    ``guidance_weight`` (default ``config.sample.guidance_weight``) is classifier-free;
    ``context_frames`` defaults to ``config.sample.context_frames`` or half the window;
    ``start`` (uint8, or float in [-1, 1]) replaces the first window; ``options`` override
    VDMSampling fields (sampler, num_steps, method, weight, clip_x).
    """
    sampler = WindowSampler.shared(config, **options)
    window_frames = sampler.window[0]
    if context_frames is None:
        context_frames = default_context_frames(config)
    if guidance_weight is None:
        guidance_weight = float(config["sample"].get("guidance_weight", 0.0))
    if batch is None and text is None:
        batch = 1
    window_fn = sampler.bind(
        params, batch=batch, text=text, text_mask=text_mask, guidance_weight=guidance_weight
    )
    video = extend_video(
        window_fn,
        jax.random.key(seed),
        num_frames=num_frames,
        window_frames=window_frames,
        context_frames=context_frames,
        start=None if start is None else placed_like(params, video_to_float(jnp.asarray(start))),
        progress=progress,
    )
    return np.asarray(video_to_uint8(video))


def placed_like(params: Any, video: Array) -> Array:
    """``video`` on the devices of ``params``, as the windows sampled from them are: a window
    sampler called with known frames placed otherwise would compile a second time."""
    sharding = getattr(jax.tree_util.tree_leaves(params)[0], "sharding", None)
    return video if sharding is None else jax.device_put(video, sharding)
