"""The seven stages of the Imagen Video cascade: roles, shapes and frame rates.

Pure data with no JAX dependency, so every layer (data, models, train, cascade) can read it.
Shapes are ``(frames, height, width)``. Each stage names the stage whose output it conditions
on; a temporal super-resolution (TSR) stage multiplies the frame count and frame rate, a
spatial super-resolution (SSR) stage multiplies height and width.
"""

from __future__ import annotations

import dataclasses

STAGE_ORDER = ("base", "tsr1", "ssr1", "ssr2", "tsr2", "tsr3", "ssr3")


@dataclasses.dataclass(frozen=True)
class StageSpec:
    """One cascade stage: what it makes and what it is conditioned on."""

    name: str
    role: str  # 'base' | 'tsr' | 'ssr'
    frames: int
    height: int
    width: int
    fps: float
    temporal_factor: int = 1  # output frames / input frames (TSR)
    spatial_factor: int = 1  # output height / input height (SSR)
    fully_convolutional: bool = False

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.frames, self.height, self.width)

    @property
    def input_shape(self) -> tuple[int, int, int] | None:
        """The shape of the conditioning video (the previous stage's output); None for base."""
        if self.role == "base":
            return None
        return (
            self.frames // self.temporal_factor,
            self.height // self.spatial_factor,
            self.width // self.spatial_factor,
        )

    @property
    def input_fps(self) -> float:
        return self.fps / self.temporal_factor


# (role, temporal factor, spatial factor) of each stage, as in the paper (Imagen Video, Fig. 6).
_FACTORS = {
    "base": ("base", 1, 1),
    "tsr1": ("tsr", 2, 1),
    "ssr1": ("ssr", 1, 2),
    "ssr2": ("ssr", 1, 4),
    "tsr2": ("tsr", 2, 1),
    "tsr3": ("tsr", 2, 1),
    "ssr3": ("ssr", 1, 4),
}

# Base-stage (frames, height, width, fps) per size; every later stage follows from the factors.
BASE_SHAPES = {
    "paper": (16, 24, 40, 3.0),  # final output 128 x 768 x 1280 at 24 fps
    "mini": (4, 16, 16, 3.0),  # final output 32 x 512 x 512 at 24 fps
    "tiny": (2, 8, 8, 3.0),  # final output 16 x 256 x 256 at 24 fps
}

# Stages at or above this many pixels per frame are fully convolutional by default (the paper
# makes its SR models fully convolutional "at certain resolutions"; 192x320 and up here).
FULLY_CONV_MIN_PIXELS = {"paper": 192 * 320, "mini": 128 * 128, "tiny": 64 * 64}


def cascade_stages(size: str = "paper") -> dict[str, StageSpec]:
    """All seven stages for a size ('paper', 'mini' or 'tiny'), in sampling order."""
    if size not in BASE_SHAPES:
        raise ValueError(f"unknown cascade size {size!r}; expected one of {sorted(BASE_SHAPES)}")
    frames, height, width, fps = BASE_SHAPES[size]
    stages = {}
    for name in STAGE_ORDER:
        role, tf, sf = _FACTORS[name]
        frames, height, width, fps = frames * tf, height * sf, width * sf, fps * tf
        stages[name] = StageSpec(
            name=name,
            role=role,
            frames=frames,
            height=height,
            width=width,
            fps=fps,
            temporal_factor=tf,
            spatial_factor=sf,
            fully_convolutional=role != "base" and height * width >= FULLY_CONV_MIN_PIXELS[size],
        )
    return stages


def stage_spec(name: str, size: str = "paper") -> StageSpec:
    """One stage by name; a clear error for an unknown name."""
    stages = cascade_stages(size)
    if name not in stages:
        raise ValueError(f"unknown stage {name!r}; expected one of {list(STAGE_ORDER)}")
    return stages[name]


# Imagen Video (Ho et al. 2022): parameters of the seven diffusion models.
PAPER_PARAMS = {
    "base": 5.6e9,
    "tsr1": 1.7e9,
    "ssr1": 1.4e9,
    "ssr2": 1.2e9,
    "tsr2": 780e6,
    "tsr3": 630e6,
    "ssr3": 340e6,
}
