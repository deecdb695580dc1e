"""Noise schedules in log-SNR form and the variance-preserving (alpha, sigma) they imply.

Time t runs from 0 (clean data, logsnr_max) to 1 (pure noise, logsnr_min); every schedule here is
strictly decreasing in t and hits both endpoints exactly.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from imagen_video_jax.diffusion._arrays import as_float

LOGSNR_MIN = -20.0
LOGSNR_MAX = 20.0
SCHEDULE_NAMES = ("cosine", "linear")


def _cosine_angles(logsnr_min: float, logsnr_max: float, shift: float) -> tuple[float, float]:
    """Angles (theta at t=0, theta span) of the arctan form logsnr = -2 log tan(theta) + shift."""
    theta_start = math.atan(math.exp(-0.5 * (logsnr_max - shift)))
    theta_end = math.atan(math.exp(-0.5 * (logsnr_min - shift)))
    return theta_start, theta_end - theta_start


def cosine_logsnr(
    t: ArrayLike,
    logsnr_min: float = LOGSNR_MIN,
    logsnr_max: float = LOGSNR_MAX,
    shift: float = 0.0,
) -> Array:
    """Cosine schedule -2 log tan(pi t / 2) + shift, confined to [logsnr_min, logsnr_max].

    The confinement maps t linearly into the angle interval whose endpoints give exactly logsnr_max
    at t=0 and logsnr_min at t=1 (no hard clipping, so the derivative stays smooth). A nonzero
    `shift` (see `resolution_shift`) moves the middle of the schedule while keeping both endpoints.
    t outside [0, 1] is clipped.
    """
    theta_start, theta_span = _cosine_angles(logsnr_min, logsnr_max, shift)
    t = jnp.clip(as_float(t), 0.0, 1.0)
    theta = theta_start + theta_span * t
    # phi = pi/2 - theta, computed without cancellation; tan is evaluated on whichever of the two
    # angles is at most pi/4, where it is well conditioned (both clamped: no branch overflows).
    phi = math.atan(math.exp(0.5 * (logsnr_min - shift))) + theta_span * (1.0 - t)
    quarter = 0.25 * math.pi
    low = theta <= quarter
    logsnr = jnp.where(
        low,
        -2.0 * jnp.log(jnp.tan(jnp.where(low, theta, quarter))),
        2.0 * jnp.log(jnp.tan(jnp.where(low, quarter, phi))),
    )
    return logsnr + shift


def cosine_t_from_logsnr(
    logsnr: ArrayLike,
    logsnr_min: float = LOGSNR_MIN,
    logsnr_max: float = LOGSNR_MAX,
    shift: float = 0.0,
) -> Array:
    """Inverse of `cosine_logsnr`: the t in [0, 1] with the given log-SNR (clipped to the range)."""
    theta_start, theta_span = _cosine_angles(logsnr_min, logsnr_max, shift)
    logsnr = jnp.clip(as_float(logsnr), logsnr_min, logsnr_max)
    theta = jnp.arctan(jnp.exp(-0.5 * (logsnr - shift)))
    return jnp.clip((theta - theta_start) / theta_span, 0.0, 1.0)


def linear_logsnr(
    t: ArrayLike, logsnr_min: float = LOGSNR_MIN, logsnr_max: float = LOGSNR_MAX
) -> Array:
    """Log-SNR falling linearly from logsnr_max at t=0 to logsnr_min at t=1 (t clipped)."""
    t = jnp.clip(as_float(t), 0.0, 1.0)
    return logsnr_max + (logsnr_min - logsnr_max) * t


def linear_t_from_logsnr(
    logsnr: ArrayLike, logsnr_min: float = LOGSNR_MIN, logsnr_max: float = LOGSNR_MAX
) -> Array:
    """Inverse of `linear_logsnr` (log-SNR clipped to the range)."""
    logsnr = jnp.clip(as_float(logsnr), logsnr_min, logsnr_max)
    return (logsnr_max - logsnr) / (logsnr_max - logsnr_min)


def resolution_shift(base_resolution: float, resolution: float) -> float:
    """Log-SNR shift 2 log(base / res) that gives a `resolution` stage the noise level per pixel
    block of a `base_resolution` stage (negative for higher resolutions: more noise)."""
    if base_resolution <= 0 or resolution <= 0:
        raise ValueError(
            f"resolutions must be positive, got base={base_resolution}, res={resolution}"
        )
    return 2.0 * math.log(base_resolution / resolution)


def alpha_sigma(logsnr: ArrayLike) -> tuple[Array, Array]:
    """(alpha, sigma): alpha^2 = sigmoid(logsnr), sigma^2 = sigmoid(-logsnr); alpha^2 + sigma^2 = 1.

    Computed as exp(log_sigmoid / 2), which stays accurate (and nonzero) at extreme log-SNR.
    """
    logsnr = as_float(logsnr)
    return jnp.exp(0.5 * jax.nn.log_sigmoid(logsnr)), jnp.exp(0.5 * jax.nn.log_sigmoid(-logsnr))


@dataclasses.dataclass(frozen=True)
class Schedule:
    """A named log-SNR schedule: call it on t to get logsnr; `t_from_logsnr` inverts it.

    Hashable, so it can be a static argument or a closed-over constant of jitted samplers/trainers.
    """

    name: str = "cosine"
    logsnr_min: float = LOGSNR_MIN
    logsnr_max: float = LOGSNR_MAX
    shift: float = 0.0

    def __post_init__(self):
        if self.name not in SCHEDULE_NAMES:
            raise ValueError(f"schedule name must be one of {SCHEDULE_NAMES}, got {self.name!r}")
        if not self.logsnr_min < self.logsnr_max:
            raise ValueError(
                f"need logsnr_min < logsnr_max, got {self.logsnr_min} and {self.logsnr_max}"
            )
        if self.name == "linear" and self.shift != 0.0:
            raise ValueError(f"the linear schedule takes no shift, got shift={self.shift}")

    def __call__(self, t: ArrayLike) -> Array:
        if self.name == "cosine":
            return cosine_logsnr(t, self.logsnr_min, self.logsnr_max, self.shift)
        return linear_logsnr(t, self.logsnr_min, self.logsnr_max)

    def t_from_logsnr(self, logsnr: ArrayLike) -> Array:
        if self.name == "cosine":
            return cosine_t_from_logsnr(logsnr, self.logsnr_min, self.logsnr_max, self.shift)
        return linear_t_from_logsnr(logsnr, self.logsnr_min, self.logsnr_max)


def get_schedule(name: str = "cosine", **kwargs: float) -> Schedule:
    """The schedule `name` ('cosine' or 'linear') ; keywords logsnr_min, logsnr_max, shift."""
    fields = {f.name for f in dataclasses.fields(Schedule)} - {"name"}
    unknown = sorted(set(kwargs) - fields)
    if unknown:
        raise ValueError(f"unknown schedule options {unknown}; expected some of {sorted(fields)}")
    return Schedule(name, **{k: float(v) for k, v in kwargs.items()})


DEFAULT_SCHEDULE = Schedule()
