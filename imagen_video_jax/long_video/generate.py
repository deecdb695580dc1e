"""Long videos from an MTD model: diffusion over diffusion (NUWA-XL) or the autoregressive
sliding-window baseline, in the T-KLVAE latent space (or in pixels), then decoded.

Both run a :class:`~imagen_video_jax.long_video.planning.FramePlan` round by round: every
round is ONE batched call of the segment sampler (all segments of one depth together), the
known frames of each call are read from what earlier rounds made, and only the made frames are
written back. Prompts: a call with no known frame (the global call) sees all prompts, their
tokens concatenated; a call with known frames sees the prompt of the part of the video where
it starts (prompt ``i`` of ``P`` covers frames ``[i N / P, (i+1) N / P)``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import flax.serialization
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from imagen_video_jax.long_video.mtd import SamplingOptions, SegmentSampler
from imagen_video_jax.long_video.planning import (
    FramePlan,
    Round,
    plan_autoregressive,
    plan_long_video,
)
from imagen_video_jax.models.tklvae import TKLVAE
from imagen_video_jax.models.unet import VideoUNet
from imagen_video_jax.train.objective import diffusion_schedule, video_to_uint8

SampleFn = Callable[..., np.ndarray]
METHODS = ("diffusion_over_diffusion", "autoregressive")
CONFIG_FILE = "config.json"
PARAMS_FILE = "params.msgpack"
# Where launch/nuwa_xl_long_video.py keeps the trained model inside its workdir.
WORKDIR_MODEL = "model"


def call_keys(seed: int, round_index: int, calls: int) -> np.ndarray:
    """Raw threefry key data [calls, 2] uint32, one key per call, a pure function of (seed,
    round, call): the same segment gets the same noise however the calls are batched."""
    return np.stack(
        [
            np.random.SeedSequence([seed, round_index, call]).generate_state(2, np.uint32)
            for call in range(calls)
        ]
    )


def prompt_index(starts: np.ndarray, num_frames: int, num_prompts: int) -> np.ndarray:
    """Prompt of a call starting at frame ``start``: prompt i covers [i N / P, (i+1) N / P)."""
    return np.minimum(starts * num_prompts // num_frames, num_prompts - 1)


def round_text(
    text: np.ndarray | None, text_mask: np.ndarray | None, rnd: Round, num_frames: int
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Text [calls, tokens, D] and mask of a round's calls (see the module docstring)."""
    if text is None:
        return None, None
    text, text_mask = np.asarray(text), np.asarray(text_mask)
    if not rnd.known.any():
        joined = text.reshape(1, -1, text.shape[-1])
        joined_mask = text_mask.reshape(1, -1)
        return joined.repeat(rnd.num_calls, 0), joined_mask.repeat(rnd.num_calls, 0)
    index = prompt_index(rnd.positions[:, 0], num_frames, text.shape[0])
    return text[index], text_mask[index]


def run_plan(
    sample_fn: SampleFn,
    plan: FramePlan,
    frame_shape: Sequence[int],
    seed: int,
    text: np.ndarray | None = None,
    text_mask: np.ndarray | None = None,
    progress: bool = False,
    desc: str = "long video",
    unit: str = "round",
) -> np.ndarray:
    """Frames [num_frames, *frame_shape] (float32) made by ``plan``, one ``sample_fn(key_data,
    known, known_mask, text, text_mask)`` call per round (a tqdm bar over the rounds with
    ``progress``). The frames live on the host between rounds: each round reads its known
    frames and writes back only the frames it made."""
    buffer = np.zeros((plan.buffer_frames, *frame_shape), np.float32)
    bar = _bar(progress, len(plan.rounds), desc, unit)
    for index, rnd in enumerate(plan.rounds):
        known = buffer[rnd.positions] * rnd.known[:, :, None, None, None]
        texts = round_text(text, text_mask, rnd, plan.num_frames)
        keys = call_keys(seed, index, rnd.num_calls)
        made = np.asarray(sample_fn(keys, known, rnd.known, *texts))
        buffer[rnd.new_positions()] = made[rnd.keep]
        if bar is not None:
            bar.set_postfix(calls=rnd.num_calls)
            bar.update(1)
    if bar is not None:
        bar.close()
    return buffer[: plan.num_frames]


def _bar(enabled: bool, total: int, desc: str, unit: str):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit)


def make_plan(
    method: str, num_frames: int, frames_per_call: int, depth: int | None, context: int
) -> FramePlan:
    """The frame plan of ``method`` ('diffusion_over_diffusion' or 'autoregressive')."""
    if method == "diffusion_over_diffusion":
        return plan_long_video(num_frames, frames_per_call, depth)
    if method == "autoregressive":
        return plan_autoregressive(num_frames, frames_per_call, context)
    raise ValueError(f"method must be one of {METHODS}; got {method!r}")


# ----------------------------------------------------------------------------- the model


@dataclasses.dataclass
class LongVideoModel:
    """A trained MTD model (and its T-KLVAE, or None for pixel space), ready to sample.

    ``config`` is a ``configs/nuwa_xl.py`` config; latents are the VAE posterior means times
    ``latent_scale``. Compiled samplers and the decoder are cached on the object.
    """

    config: ml_collections.ConfigDict
    mtd_params: Any
    vae_params: Any = None
    latent_scale: float = 1.0
    _cache: dict = dataclasses.field(default_factory=dict, repr=False)

    @functools.cached_property
    def mtd(self) -> VideoUNet:
        return VideoUNet.from_config(self.config.model)

    @functools.cached_property
    def vae(self) -> TKLVAE | None:
        return None if self.vae_params is None else TKLVAE.from_config(self.config.vae)

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        """(height, width, channels) of one frame where diffusion runs."""
        data = self.config.data
        if self.vae is None:
            return (data.height, data.width, self.config.model.in_channels)
        f = self.vae.downsample_factor
        return (data.height // f, data.width // f, self.vae.latent_channels)

    def segment_sampler(
        self, options: SamplingOptions, devices: Sequence[jax.Device] | None = None
    ) -> SegmentSampler:
        """The (cached) batched segment sampler for these options."""
        key = ("sampler", options, None if devices is None else tuple(devices))
        if key not in self._cache:
            self._cache[key] = SegmentSampler(
                self.mtd,
                self.mtd_params,
                schedule=diffusion_schedule(self.config.diffusion),
                prediction=str(self.config.diffusion.prediction),
                options=options,
                devices=devices,
            )
        return self._cache[key]

    def decode(self, latents: np.ndarray) -> np.ndarray:
        """uint8 frames [N, H, W, 3] from diffusion-space frames [N, h, w, c]: the T-KLVAE
        decodes chunks of ``config.vae_train.clip_frames`` frames (its training length), all
        chunks batched (at most ``config.long_video.decode_batch`` a call)."""
        if self.vae is None:
            return np.asarray(video_to_uint8(jnp.asarray(latents)))
        chunk = int(self.config.vae_train.clip_frames)
        frames = latents.shape[0]
        padded = -(-frames // chunk) * chunk
        z = np.concatenate([latents, np.repeat(latents[-1:], padded - frames, 0)])
        z = z.reshape(padded // chunk, chunk, *latents.shape[1:]) / self.latent_scale
        if "decode" not in self._cache:
            self._cache["decode"] = jax.jit(
                lambda p, z: video_to_uint8(self.vae.apply({"params": p}, z, method="decode"))
            )
        decode = self._cache["decode"]
        step = int(self.config.long_video.decode_batch)
        videos = [
            np.asarray(decode(self.vae_params, z[i : i + step])) for i in range(0, len(z), step)
        ]
        return np.concatenate(videos).reshape(padded, *videos[0].shape[2:])[:frames]

    def save(self, path: str | Path) -> None:
        """Write config.json and params.msgpack (MTD, VAE, latent scale) into ``path``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / CONFIG_FILE).write_text(self.config.to_json_best_effort(indent=2))
        payload = {
            "mtd": self.mtd_params,
            "vae": {} if self.vae_params is None else self.vae_params,
            "latent_scale": np.float32(self.latent_scale),
        }
        (path / PARAMS_FILE).write_bytes(flax.serialization.msgpack_serialize(payload))

    @classmethod
    def load(cls, path: str | Path) -> LongVideoModel:
        """A model saved by :meth:`save` in ``path``, or in ``path/model`` (the workdir of
        launch/nuwa_xl_long_video.py)."""
        found = find_model_dir(path)
        if found is None:
            raise FileNotFoundError(
                f"no long-video model in {path}: expected {CONFIG_FILE} and {PARAMS_FILE} "
                f"(written by LongVideoModel.save) in it or in {Path(path) / WORKDIR_MODEL}"
            )
        config = ml_collections.ConfigDict(json.loads((found / CONFIG_FILE).read_text()))
        payload = flax.serialization.msgpack_restore((found / PARAMS_FILE).read_bytes())
        vae = payload["vae"] or None
        return cls(config, payload["mtd"], vae, float(payload["latent_scale"]))


def find_model_dir(path: str | Path) -> Path | None:
    """The folder holding a saved LongVideoModel: ``path`` itself or ``path/model``; None if
    neither does."""
    path = Path(path).expanduser()
    for folder in (path, path / WORKDIR_MODEL):
        if all((folder / name).is_file() for name in (CONFIG_FILE, PARAMS_FILE)):
            return folder
    return None


def encode_prompts(
    model: LongVideoModel, prompts: str | Sequence[str], text_encoder: Any = None
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(text [P, tokens, D], mask [P, tokens]) of the prompts, or (None, None) for a model
    without text."""
    from imagen_video_jax.cascade.cascade import check_prompts, shared_text_encoder

    prompts = check_prompts(prompts)
    if not model.mtd.use_text:
        return None, None
    encoder = text_encoder or shared_text_encoder(
        str(model.config.text_encoder.name), int(model.config.text_encoder.max_length)
    )
    text, mask = encoder.encode(prompts)
    if text.shape[-1] != model.mtd.text_dim:
        raise ValueError(
            f"the MTD model takes text of width {model.mtd.text_dim}; the text encoder makes "
            f"width {text.shape[-1]}"
        )
    return np.asarray(text, np.float32), np.asarray(mask, bool)


def sample_long_latents(
    model: LongVideoModel,
    text: np.ndarray | None,
    text_mask: np.ndarray | None,
    num_frames: int,
    *,
    frames_per_call: int | None = None,
    depth: int | None = None,
    method: str = "diffusion_over_diffusion",
    context: int | None = None,
    seed: int = 0,
    options: SamplingOptions | None = None,
    devices: Sequence[jax.Device] | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Diffusion-space frames [num_frames, h, w, c] (float32) from encoded prompts."""
    long_video = model.config.long_video
    frames_per_call = int(frames_per_call or long_video.frames_per_call)
    context = int(context or long_video.context)
    depth = int(depth or long_video.depth)
    plan = make_plan(method, num_frames, frames_per_call, depth, context)
    options = options or SamplingOptions.from_config(model.config.sample)
    sampler = model.segment_sampler(options, devices)
    unit = "depth" if method == "diffusion_over_diffusion" else "window"
    desc = method.replace("_", " ")
    return run_plan(sampler, plan, model.frame_shape, seed, text, text_mask, progress, desc, unit)


def generate_long_video(
    model: LongVideoModel,
    prompts: str | Sequence[str],
    num_frames: int,
    frames_per_call: int | None = None,
    depth: int | None = None,
    *,
    method: str = "diffusion_over_diffusion",
    context: int | None = None,
    seed: int = 0,
    num_steps: int | None = None,
    guidance_weight: float | None = None,
    sampler: str | None = None,
    text_encoder: Any = None,
    devices: Sequence[jax.Device] | None = None,
    progress: bool = True,
) -> np.ndarray:
    """A uint8 video [num_frames, H, W, 3] from prompts (one, or a storyline of several).

    ``method``: 'diffusion_over_diffusion' (NUWA-XL, ``depth`` m: num_frames <= (L-1)^m + 1;
    the frames beyond num_frames are not made) or 'autoregressive' (sliding windows knowing the
    last ``context`` frames). ``frames_per_call`` (L), ``depth``, ``context``, ``num_steps``,
    ``guidance_weight`` and ``sampler`` default to the model's config. Progress by depth.
    """
    text, text_mask = encode_prompts(model, prompts, text_encoder)
    options = SamplingOptions.from_config(
        model.config.sample,
        num_steps=num_steps,
        guidance_weight=guidance_weight,
        sampler=sampler,
    )
    latents = sample_long_latents(
        model,
        text,
        text_mask,
        num_frames,
        frames_per_call=frames_per_call,
        depth=depth,
        method=method,
        context=context,
        seed=seed,
        options=options,
        devices=devices,
        progress=progress,
    )
    return model.decode(latents)
