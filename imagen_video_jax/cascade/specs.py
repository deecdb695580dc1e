"""What each cascade stage is and how it samples, read from its config, and the checks that
the stages chain (each super-resolution stage takes exactly what the stage before makes).

The conditioning resize (bilinear in space, frame repetition in time) happens inside the
model; the cascade hands each stage the previous stage's output as it is.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from imagen_video_jax.diffusion.guidance import oscillating_weights
from imagen_video_jax.diffusion.samplers import SAMPLERS
from imagen_video_jax.stages import StageSpec

# Oscillating guidance keeps the high weight for this share of the first sampling steps before
# alternating (the paper gives no count).
OSCILLATING_CONSTANT_FRACTION = 0.25
# The low weight of oscillating guidance (the paper alternates between w and 1).
OSCILLATING_LOW_WEIGHT = 1.0


def spec_from_config(config: Mapping[str, Any]) -> StageSpec:
    """The StageSpec of ``config.stage`` (role, output shape, fps, scale factors)."""
    stage = config["stage"]
    return StageSpec(
        name=str(stage["name"]),
        role=str(stage["role"]),
        frames=int(stage["frames"]),
        height=int(stage["height"]),
        width=int(stage["width"]),
        fps=float(stage["fps"]),
        temporal_factor=int(stage.get("temporal_factor", 1)),
        spatial_factor=int(stage.get("spatial_factor", 1)),
        fully_convolutional=bool(stage.get("fully_convolutional", False)),
    )


def is_distilled(config: Mapping[str, Any]) -> bool:
    """Distilled students take the guidance weight as a model input (one call per step)."""
    return bool(config["model"].get("guidance_input", False))


@dataclasses.dataclass(frozen=True)
class SamplingSettings:
    """How one stage samples: sampler, steps, guidance, thresholding, conditioning noise."""

    sampler: str
    num_steps: int
    guidance_weight: float
    oscillating: bool
    dynamic_threshold: float  # percentile; 0 disables
    cond_aug_logsnr: float  # log-SNR at which the conditioning video is noised

    def __post_init__(self):
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {sorted(SAMPLERS)}, got {self.sampler!r}")
        if not isinstance(self.num_steps, int) or self.num_steps < 1:
            raise ValueError(f"num_steps must be a positive int, got {self.num_steps!r}")
        if not np.isfinite(self.guidance_weight) or self.guidance_weight < 0:
            raise ValueError(
                f"guidance_weight must be a finite number >= 0, got {self.guidance_weight!r}"
            )

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> SamplingSettings:
        sample = config["sample"]
        return cls(
            sampler=str(sample["sampler"]),
            num_steps=int(sample["num_steps"]),
            guidance_weight=float(sample["guidance_weight"]),
            oscillating=bool(sample.get("oscillating", False)),
            dynamic_threshold=float(sample.get("dynamic_threshold", 0.0)),
            cond_aug_logsnr=float(config["diffusion"]["cond_aug_logsnr_sample"]),
        )

    def guidance_weights(self) -> np.ndarray:
        """Guidance weight of each sampling step [num_steps] (oscillating where configured;
        a weight at or below the low weight stays constant)."""
        w = self.guidance_weight
        if not self.oscillating or w <= OSCILLATING_LOW_WEIGHT:
            return np.full((self.num_steps,), w, np.float32)
        num_constant = max(1, int(round(OSCILLATING_CONSTANT_FRACTION * self.num_steps)))
        return oscillating_weights(
            self.num_steps, num_constant=num_constant, w_high=w, w_low=OSCILLATING_LOW_WEIGHT
        )


Override = Any  # None, one value for every stage, or a {stage name: value} mapping


def per_stage(value: Override, names: Sequence[str], what: str) -> dict[str, Any]:
    """``{stage: value}`` for the stages in ``names`` (stages not in a mapping get None)."""
    if value is None:
        return dict.fromkeys(names)
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - set(names))
        if unknown:
            raise ValueError(
                f"{what} names stage(s) {unknown} that this cascade does not run; "
                f"expected some of {list(names)}"
            )
        return {name: value.get(name) for name in names}
    return dict.fromkeys(names, value)


def apply_overrides(
    settings: SamplingSettings,
    *,
    sampler: str | None = None,
    num_steps: int | None = None,
    guidance_weight: float | None = None,
) -> SamplingSettings:
    """``settings`` with the given fields replaced (None keeps the stage's own)."""
    changes = {
        "sampler": sampler,
        "num_steps": num_steps,
        "guidance_weight": None if guidance_weight is None else float(guidance_weight),
    }
    return dataclasses.replace(settings, **{k: v for k, v in changes.items() if v is not None})


def check_chain(specs: Sequence[StageSpec]) -> None:
    """One clear error if the stages do not form a cascade: the first makes video from text,
    every later one takes exactly the previous stage's output shape and frame rate."""
    if not specs:
        raise ValueError("a cascade needs at least one stage; got none")
    first = specs[0]
    if first.role != "base":
        raise ValueError(
            f"a cascade starts with a base (text -> video) stage; its first stage "
            f"{first.name!r} has role {first.role!r}"
        )
    for previous, stage in zip(specs, specs[1:]):
        if stage.role == "base":
            raise ValueError(
                f"stage {stage.name!r} is a base stage but follows {previous.name!r}; only the "
                "first stage of a cascade makes video from text alone"
            )
        if stage.input_shape != previous.shape:
            raise ValueError(
                f"stage {stage.name!r} takes video of shape (frames, height, width) = "
                f"{stage.input_shape}, but the stage before it, {previous.name!r}, makes "
                f"{previous.shape}: the stages do not chain"
            )
        if not np.isclose(stage.input_fps, previous.fps):
            raise ValueError(
                f"stage {stage.name!r} takes video at {stage.input_fps:g} fps, but the stage "
                f"before it, {previous.name!r}, makes {previous.fps:g} fps"
            )


def check_video_shape(spec: StageSpec, video: Any, what: str) -> None:
    """A clear error if ``video`` [batch, frames, height, width, 3] is not what stage ``spec``
    takes as its conditioning input."""
    shape = tuple(np.shape(video))
    expected = spec.input_shape
    if len(shape) != 5 or shape[1:4] != expected or shape[4] != 3:
        raise ValueError(
            f"stage {spec.name!r} takes {what} of shape [batch, frames, height, width, 3] = "
            f"[batch, {expected[0]}, {expected[1]}, {expected[2]}, 3]; got {list(shape)}"
        )
