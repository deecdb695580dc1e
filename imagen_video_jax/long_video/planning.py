"""Frame planning of diffusion over diffusion (NUWA-XL) and of the autoregressive baseline.

Every model call makes ``L`` frames (``frames_per_call``). Diffusion over diffusion of depth
``m``: the global call makes ``L`` keyframes ``stride_1 = (L-1)^(m-1)`` frames apart; at depth
``d = 2..m`` each pair of adjacent frames made so far (``stride_{d-1}`` apart) is the first and
last frame of one local call that makes the ``L-2`` frames between them, ``stride_d =
(L-1)^(m-d)`` apart. After depth ``d`` there are ``(L-1)^d + 1`` frames, so depth ``m`` gives

    lattice_frames(L, m) = (L-1)^m + 1      (L=16, m=3: 3376 frames),

made by ``1 + sum_{d=2..m} (L-1)^(d-1)`` calls in ``m`` rounds, one batched round per depth.
A video of ``num_frames`` below the lattice keeps frames ``0..num_frames-1`` and runs only the
local calls whose span reaches into them: ``ceil((num_frames-1) / stride_{d-1})`` at depth d.

Frame positions are indices into the final video. The autoregressive baseline slides a window
of ``L`` frames whose first ``context`` frames are known (the last ones made so far) and makes
the next ``L - context``.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np


@dataclasses.dataclass(frozen=True)
class Round:
    """One batched model call: ``positions[s]`` are the frames of call ``s`` (in order),
    ``known[s]`` marks the ones given as the mask condition, ``keep[s]`` the made frames that
    are written to the video (default: all that are not known)."""

    positions: np.ndarray  # [calls, L] int64 frame indices
    known: np.ndarray  # [calls, L] bool
    keep: np.ndarray | None = None  # [calls, L] bool

    def __post_init__(self):
        if self.keep is None:
            object.__setattr__(self, "keep", ~self.known)

    @property
    def num_calls(self) -> int:
        return int(self.positions.shape[0])

    def new_positions(self) -> np.ndarray:
        """Indices of the frames this round writes, call by call."""
        return self.positions[self.keep]


@dataclasses.dataclass(frozen=True)
class FramePlan:
    """Rounds of model calls that make a video of ``num_frames`` frames, in execution order."""

    frames_per_call: int
    num_frames: int
    rounds: tuple[Round, ...]

    @property
    def buffer_frames(self) -> int:
        """Frames of the working buffer: every position any round touches."""
        return int(max(r.positions.max() for r in self.rounds)) + 1

    @property
    def num_calls(self) -> int:
        return sum(r.num_calls for r in self.rounds)

    def order(self) -> np.ndarray:
        """Frame indices below num_frames in the order they are made (each exactly once)."""
        made = np.concatenate([r.new_positions() for r in self.rounds])
        return made[made < self.num_frames]


def _check_call_size(frames_per_call: int, minimum: int) -> None:
    if not isinstance(frames_per_call, (int, np.integer)) or frames_per_call < minimum:
        raise ValueError(
            f"frames_per_call (L) must be an int >= {minimum}; got {frames_per_call!r}"
        )


def lattice_frames(frames_per_call: int, depth: int) -> int:
    """(L-1)^m + 1: the frames of diffusion over diffusion with L frames a call, depth m."""
    _check_call_size(frames_per_call, 3)
    if not isinstance(depth, (int, np.integer)) or depth < 1:
        raise ValueError(f"depth (m) must be an int >= 1; got {depth!r}")
    return (frames_per_call - 1) ** depth + 1


def smallest_depth(num_frames: int, frames_per_call: int) -> int:
    """The smallest depth m whose lattice holds num_frames frames."""
    _check_call_size(frames_per_call, 3)
    depth = 1
    while lattice_frames(frames_per_call, depth) < num_frames:
        depth += 1
    return depth


def _depth_round(frames_per_call: int, depth: int, d: int, num_frames: int) -> Round:
    """The calls of depth d (1 = global) that reach into frames 0..num_frames-1."""
    steps = frames_per_call - 1
    stride = steps ** (depth - d)
    if d == 1:
        starts = np.zeros(1, np.int64)
    else:
        span = steps * stride
        starts = np.arange(math.ceil((num_frames - 1) / span), dtype=np.int64) * span
    positions = starts[:, None] + stride * np.arange(frames_per_call, dtype=np.int64)[None]
    known = np.zeros(positions.shape, bool)
    if d > 1:
        known[:, [0, -1]] = True
    return Round(positions, known)


def plan_long_video(num_frames: int, frames_per_call: int, depth: int | None = None) -> FramePlan:
    """Diffusion over diffusion making exactly ``num_frames`` frames (depth: the smallest that
    holds them, unless given)."""
    _check_call_size(frames_per_call, 3)
    if not isinstance(num_frames, (int, np.integer)) or num_frames < 2:
        raise ValueError(f"num_frames must be an int >= 2; got {num_frames!r}")
    depth = smallest_depth(num_frames, frames_per_call) if depth is None else depth
    most = lattice_frames(frames_per_call, depth)
    if num_frames > most:
        raise ValueError(
            f"num_frames={num_frames} exceeds the (L-1)^m + 1 = {most} frames of L="
            f"{frames_per_call}, m={depth}; use a larger depth or frames_per_call"
        )
    rounds = tuple(_depth_round(frames_per_call, depth, d, num_frames) for d in range(1, depth + 1))
    return FramePlan(frames_per_call, int(num_frames), rounds)


def plan_frames(frames_per_call: int, depth: int) -> FramePlan:
    """The full NUWA-XL lattice of L frames a call and depth m: (L-1)^m + 1 frames."""
    return plan_long_video(lattice_frames(frames_per_call, depth), frames_per_call, depth)


def plan_autoregressive(num_frames: int, frames_per_call: int, context: int) -> FramePlan:
    """Sliding windows: frame 0 comes from a global call (its keyframe 0 is kept), the first
    window knows it and makes frames 1..L-1, every later window knows the last ``context``
    frames and makes the next ``L - context``; one call per round."""
    _check_call_size(frames_per_call, 2)
    if not 1 <= context < frames_per_call:
        raise ValueError(f"context must be in [1, L-1] = [1, {frames_per_call - 1}]; got {context}")
    if not isinstance(num_frames, (int, np.integer)) or num_frames < 2:
        raise ValueError(f"num_frames must be an int >= 2; got {num_frames!r}")
    keep_first = np.zeros((1, frames_per_call), bool)
    keep_first[0, 0] = True
    positions = np.arange(frames_per_call, dtype=np.int64)[None]
    rounds = [Round(positions, np.zeros_like(keep_first), keep_first)]
    start, known_count = 0, 1
    while start + known_count < num_frames:
        positions = start + np.arange(frames_per_call, dtype=np.int64)[None]
        known = np.zeros(positions.shape, bool)
        known[:, :known_count] = True
        rounds.append(Round(positions, known))
        start += frames_per_call - context
        known_count = context
    return FramePlan(frames_per_call, int(num_frames), tuple(rounds))
