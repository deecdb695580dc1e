"""The cascade: text -> base video -> each super-resolution stage in turn -> uint8 video.

Text is encoded once per call and shared by every stage. Each stage's sampling loop is compiled
once (per sampler, step count and batch size) and reused for every later prompt, seed and
guidance weight. Example ``i`` of a call draws all its randomness from seed ``seed + i``, folded
by the stage's position, so a batch gives the same videos as its prompts one by one and a
shorter cascade (``stop_after``) gives the same earlier stages.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from imagen_video_jax.cascade import checkpoints
from imagen_video_jax.cascade.sampler import StageSampler
from imagen_video_jax.cascade.specs import (
    Override,
    SamplingSettings,
    apply_overrides,
    check_chain,
    check_video_shape,
    is_distilled,
    per_stage,
)
from imagen_video_jax.stages import STAGE_ORDER, StageSpec

# Standard deviation of the random params that are not kernels or norm scales (biases and the
# like) in ``from_random_init``; init would set them to zero.
RANDOM_INIT_STD = 0.02
_MAX_SEED = 2**32


def default_config_file() -> Path:
    """The bundled configs/imagen_video.py."""
    from imagen_video_jax.config import bundled_config_file

    return bundled_config_file("imagen_video")


def check_prompts(prompts: str | Sequence[str]) -> list[str]:
    """A prompt or a list of prompts as a non-empty list of non-empty str."""
    if isinstance(prompts, str):
        prompts = [prompts]
    elif not isinstance(prompts, (list, tuple)):
        raise ValueError(f"prompts must be a str or a list of str; got {type(prompts).__name__}")
    if not prompts:
        raise ValueError("prompts must be a non-empty list of str; got an empty list")
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise ValueError(
                f"prompts must be a str or a list of str; prompt {i} has type "
                f"{type(prompt).__name__}: {prompt!r:.60}"
            )
        if not prompt.strip():
            raise ValueError(f"prompt {i} is empty; every prompt needs some text")
    return list(prompts)


def example_seeds(seed: int | Sequence[int], batch: int) -> np.ndarray:
    """Seeds of the examples: ``seed + i``, or one given seed per example."""
    seeds = np.asarray(seed if np.ndim(seed) else np.arange(batch) + int(seed), np.int64)
    if seeds.shape != (batch,):
        raise ValueError(f"seed must be an int or one int per prompt ({batch}); got {seed!r}")
    if np.any(seeds < 0) or np.any(seeds >= _MAX_SEED):
        raise ValueError(f"seeds must be in [0, 2**32); got {seed!r}")
    return seeds


def stage_keys(seeds: np.ndarray, position: int) -> jax.Array:
    """One PRNG key per example for the stage at ``position`` in the cascade. One compiled
    call: run eagerly, the vmapped ops cost 2.3 ms a stage on an H200 (docs/PERFORMANCE.md),
    a tenth of a distilled mini stage's 8 steps at batch 1."""
    return _stage_keys(np.asarray(seeds, np.uint32), position)


@functools.partial(jax.jit, static_argnums=1)
def _stage_keys(seeds: jax.Array, position: int) -> jax.Array:
    return jax.vmap(lambda s: jax.random.fold_in(jax.random.key(s), position))(seeds)


@dataclasses.dataclass
class CascadeStage:
    """One stage ready to sample: its config, (EMA) params and compiled-loop cache."""

    config: dict
    params: Any
    sampler: StageSampler

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def spec(self) -> StageSpec:
        return self.sampler.spec

    @property
    def settings(self) -> SamplingSettings:
        return SamplingSettings.from_config(self.config)

    @property
    def distilled(self) -> bool:
        return is_distilled(self.config)

    @property
    def uses_text(self) -> bool:
        return bool(self.config["model"].get("use_text", True))


class _Progress:
    """tqdm bars (when enabled): one over the stages, one over the current stage's steps,
    fed by the samplers' progress callback."""

    def __init__(self, enabled: bool, num_stages: int):
        self.outer = None
        if enabled:
            from tqdm.auto import tqdm

            self.outer = tqdm(total=num_stages, desc="cascade", unit="stage", position=0)

    def close(self) -> None:
        if self.outer is not None:
            self.outer.close()

    @contextlib.contextmanager
    def stage(self, stage: CascadeStage, settings: SamplingSettings) -> Iterator[None]:
        if self.outer is None:
            yield
            return
        from tqdm.auto import tqdm

        spec = stage.spec
        desc = f"{stage.name} {spec.frames}x{spec.height}x{spec.width}"
        bar = tqdm(total=settings.num_steps, desc=desc, unit="step", position=1, leave=False)

        def report(step: int, num_steps: int) -> None:
            if step > bar.n:
                bar.update(step - bar.n)

        stage.sampler.progress = report
        try:
            yield
            jax.effects_barrier()
        finally:
            stage.sampler.progress = None
            bar.close()
            self.outer.update(1)


class Cascade:
    """A text-to-video cascade: a base stage and the super-resolution stages after it."""

    def __init__(self, stages: Sequence[CascadeStage], text_encoder: Any = None):
        check_chain([stage.spec for stage in stages])
        self.stages = {stage.name: stage for stage in stages}
        if len(self.stages) != len(stages):
            raise ValueError(f"stage names must be unique; got {[s.name for s in stages]}")
        self._encoder_config = _shared_encoder_config(stages)
        self._text_encoder = text_encoder

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_configs(
        cls,
        configs: Sequence[Mapping[str, Any]],
        params: Sequence[Any] | None = None,
        *,
        seed: int = 0,
        text_encoder: Any = None,
    ) -> Cascade:
        """Stages from their configs, in sampling order, with the given params (default:
        random weights from ``seed``)."""
        configs = [checkpoints.to_plain(config) for config in configs]
        samplers = [StageSampler.shared(config) for config in configs]
        check_chain([sampler.spec for sampler in samplers])
        if params is None:
            params = [random_params(sampler, (seed, i)) for i, sampler in enumerate(samplers)]
        stages = [CascadeStage(c, p, s) for c, p, s in zip(configs, params, samplers)]
        return cls(stages, text_encoder)

    @classmethod
    def from_checkpoints(
        cls,
        path: str | Path,
        *,
        stop_after: str | None = None,
        step: int | None = None,
        text_encoder: Any = None,
    ) -> Cascade:
        """The cascade saved in ``path`` (one subfolder per stage, from ``base`` on, as
        ``imagen-video train --workdir path`` or :meth:`save` writes them): the EMA params and
        config of each stage present (up to ``stop_after``)."""
        loaded = [
            checkpoints.load_stage(stage_dir, step)
            for stage_dir in checkpoints.stage_dirs(path, stop_after).values()
        ]
        return cls.from_configs(
            [config for _, config in loaded],
            [params for params, _ in loaded],
            text_encoder=text_encoder,
        )

    @classmethod
    def from_random_init(
        cls,
        size: str = "tiny",
        *,
        stop_after: str | None = None,
        overrides: Sequence[str] = (),
        seed: int = 0,
        config_file: str | Path | None = None,
        text_encoder: Any = None,
    ) -> Cascade:
        """The stages of ``configs/imagen_video.py:size=<size>`` (up to ``stop_after``) with
        random weights, for tests and benchmarks. ``overrides`` ('model.dtype=float32', ...)
        apply to every stage."""
        from imagen_video_jax.config import load_config, resolve_config_file

        config_file = resolve_config_file(config_file) if config_file else default_config_file()
        if stop_after is not None and stop_after not in STAGE_ORDER:
            raise ValueError(f"unknown stage {stop_after!r}; expected one of {list(STAGE_ORDER)}")
        names = STAGE_ORDER[: STAGE_ORDER.index(stop_after) + 1] if stop_after else STAGE_ORDER
        configs = [
            load_config(f"{config_file}:stage={name},size={size}", overrides) for name in names
        ]
        return cls.from_configs(configs, seed=seed, text_encoder=text_encoder)

    def save(self, path: str | Path, dtype: str = "float16") -> int:
        """Write every stage's params and config in the compact sampling format (what
        :meth:`from_checkpoints` reads); returns the bytes written."""
        return sum(
            checkpoints.save_stage(Path(path) / name, stage.params, stage.config, dtype)
            for name, stage in self.stages.items()
        )

    # ------------------------------------------------------------------ description

    @property
    def stage_names(self) -> list[str]:
        return list(self.stages)

    def stages_until(self, stop_after: str | None = None) -> list[CascadeStage]:
        """The stages from the first through ``stop_after`` (default: all)."""
        names = self.stage_names
        if stop_after is None:
            return list(self.stages.values())
        if stop_after not in self.stages:
            raise ValueError(
                f"stop_after must be one of this cascade's stages {names}; got {stop_after!r}"
            )
        return [self.stages[n] for n in names[: names.index(stop_after) + 1]]

    def output_spec(self, stop_after: str | None = None) -> StageSpec:
        """Shape and fps of what :meth:`sample` returns with this ``stop_after``."""
        return self.stages_until(stop_after)[-1].spec

    @property
    def trace_counts(self) -> dict[str, int]:
        """How many times each stage's sampling loop was traced (compiled) so far."""
        return {name: stage.sampler.trace_count for name, stage in self.stages.items()}

    # ------------------------------------------------------------------ text

    @property
    def text_encoder(self) -> Any:
        """The frozen text encoder the stages were trained with (loaded on first use)."""
        if self._text_encoder is None and self._encoder_config is not None:
            self._text_encoder = shared_text_encoder(*self._encoder_config)
        return self._text_encoder

    def encode(self, prompts: str | Sequence[str]) -> tuple[jax.Array, jax.Array]:
        """(embeddings [B, L, D], mask [B, L]) of the prompts; warns about truncated ones."""
        prompts = check_prompts(prompts)
        encoder = self.text_encoder
        _, mask = encoder.tokenize(prompts)
        for i in np.flatnonzero(np.asarray(mask)[:, -1]):
            warnings.warn(
                f"prompt {i} fills all {mask.shape[1]} tokens the text encoder "
                f"{encoder.name!r} takes; any text beyond them is cut off: {prompts[i]!r:.80}",
                stacklevel=2,
            )
        return encoder.encode(prompts)

    def _check_text_width(self, stages: Sequence[CascadeStage], text: jax.Array) -> None:
        for stage in stages:
            width = int(stage.config["model"]["text_dim"])
            if stage.uses_text and width != text.shape[-1]:
                raise ValueError(
                    f"stage {stage.name!r} takes text embeddings of width {width}, but the text "
                    f"encoder {self.text_encoder.name!r} makes width {text.shape[-1]}"
                )

    # ------------------------------------------------------------------ sampling

    def sample(
        self,
        prompts: str | Sequence[str],
        seed: int | Sequence[int] = 0,
        stop_after: str | None = None,
        num_steps: Override = None,
        guidance_weight: Override = None,
        return_intermediates: bool = False,
        progress: bool = True,
        sampler: Override = None,
    ) -> np.ndarray | tuple[np.ndarray, dict[str, np.ndarray]]:
        """Videos uint8 [batch, frames, height, width, 3] for the prompts.

        ``num_steps``, ``guidance_weight`` and ``sampler`` override the stages' configs: one
        value for every stage or a ``{stage: value}`` mapping. ``seed``: example ``i`` uses
        ``seed + i`` (or pass one seed per prompt). With ``return_intermediates`` also returns
        ``{stage: uint8 video}`` of every stage run.
        """
        prompts = check_prompts(prompts)
        stages = self.stages_until(stop_after)
        settings = self._settings(stages, num_steps, guidance_weight, sampler)
        seeds = example_seeds(seed, len(prompts))
        text = text_mask = None
        if any(stage.uses_text for stage in stages):
            text, text_mask = self.encode(prompts)
            self._check_text_width(stages, text)
        videos = {}
        video = None
        bars = _Progress(progress, len(stages))
        try:
            for stage in stages:
                with bars.stage(stage, settings[stage.name]):
                    video = self._run(stage, seeds, text, text_mask, video, settings[stage.name])
                    videos[stage.name] = video
        finally:
            bars.close()
        final = np.asarray(video)
        if return_intermediates:
            return final, {name: np.asarray(v) for name, v in videos.items()}
        return final

    def sample_stage(
        self,
        name: str,
        prompts: str | Sequence[str],
        cond: Any = None,
        seed: int | Sequence[int] = 0,
        num_steps: int | None = None,
        guidance_weight: float | None = None,
        sampler: str | None = None,
    ) -> np.ndarray:
        """One stage alone: uint8 video for the prompts from ``cond``, the previous stage's
        video (uint8 or float in [-1, 1]; None for the base stage). Given the cascade's
        intermediate video it reproduces the cascade's output of that stage."""
        prompts = check_prompts(prompts)
        stage = self.stages_until(name)[-1]
        if stage.spec.role == "base" and cond is not None:
            raise ValueError(f"stage {name!r} makes video from text alone; got a cond video")
        if stage.spec.role != "base":
            if cond is None:
                raise ValueError(f"stage {name!r} needs the previous stage's video as cond")
            check_video_shape(stage.spec, cond, "cond")
            if np.shape(cond)[0] != len(prompts):
                raise ValueError(
                    f"cond holds {np.shape(cond)[0]} videos for {len(prompts)} prompts; "
                    "give one video per prompt"
                )
        settings = self._settings([stage], num_steps, guidance_weight, sampler)[name]
        text = text_mask = None
        if stage.uses_text:
            text, text_mask = self.encode(prompts)
            self._check_text_width([stage], text)
        seeds = example_seeds(seed, len(prompts))
        if cond is not None:
            # Placed as the previous stage's output is, so the cascade's compiled loop is reused.
            cond = jax.device_put(jnp.asarray(cond), checkpoints.single_device_sharding())
        return np.asarray(self._run(stage, seeds, text, text_mask, cond, settings))

    def _run(self, stage, seeds, text, text_mask, cond, settings) -> jax.Array:
        position = self.stage_names.index(stage.name)
        keys = stage_keys(seeds, position)
        return stage.sampler(stage.params, keys, text, text_mask, cond, settings)

    @staticmethod
    def _settings(
        stages: Sequence[CascadeStage], num_steps: Override, guidance: Override, sampler: Override
    ) -> dict[str, SamplingSettings]:
        names = [stage.name for stage in stages]
        steps = per_stage(num_steps, names, "num_steps")
        weights = per_stage(guidance, names, "guidance_weight")
        samplers = per_stage(sampler, names, "sampler")
        return {
            stage.name: apply_overrides(
                stage.settings,
                sampler=samplers[stage.name],
                num_steps=steps[stage.name],
                guidance_weight=weights[stage.name],
            )
            for stage in stages
        }


@functools.cache
def shared_text_encoder(name: str, max_length: int) -> Any:
    """The frozen text encoder ``name``, loaded once per process."""
    from imagen_video_jax.models import load_text_encoder

    return load_text_encoder(name, max_length=max_length)


def _shared_encoder_config(stages: Sequence[CascadeStage]) -> tuple[str, int] | None:
    """(name, max_length) of the one text encoder every text-conditioned stage uses."""
    found = {
        stage.name: (str(enc["name"]), int(enc["max_length"]))
        for stage in stages
        if stage.uses_text
        for enc in [stage.config["text_encoder"]]
    }
    if len(set(found.values())) > 1:
        raise ValueError(
            f"the stages use different text encoders {found}; a cascade encodes its prompts "
            "once for all stages, so they must share one (name and max_length)"
        )
    return next(iter(found.values()), None)


def random_params(sampler: StageSampler, seed: Sequence[int]) -> Any:
    """Random float32 params of a stage's model, for tests and benchmarks, drawn on the host
    without compiling the model: kernels N(0, 1/fan_in), norm scales 1, everything else
    (biases and the like) N(0, RANDOM_INIT_STD^2), so random stages depend on every input."""
    from imagen_video_jax.models.params import example_inputs

    inputs = example_inputs(sampler.config["model"])
    z, logsnr = inputs.pop("z"), inputs.pop("logsnr")
    abstract = jax.eval_shape(lambda: sampler.model.init(jax.random.key(0), z, logsnr, **inputs))
    rng = np.random.default_rng(list(seed))

    def draw(path: tuple, leaf: jax.ShapeDtypeStruct) -> np.ndarray:
        kind = str(getattr(path[-1], "key", path[-1]))
        if kind == "scale":
            return np.ones(leaf.shape, np.float32)
        values = rng.standard_normal(leaf.shape, np.float32)
        if kind == "kernel":
            return values / np.sqrt(max(1, int(np.prod(leaf.shape[:-1]))))
        return values * RANDOM_INIT_STD

    params = jax.tree_util.tree_map_with_path(draw, nn.meta.unbox(abstract["params"]))
    return jax.device_put(params, checkpoints.single_device_sharding())
