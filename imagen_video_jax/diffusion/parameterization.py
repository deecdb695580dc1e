"""Conversions between the x (data), eps (noise) and v parameterizations of a diffusion model.

Conventions: z = alpha * x + sigma * eps and v = alpha * eps - sigma * x, so
x = alpha * z - sigma * v and eps = sigma * z + alpha * v. `logsnr` is [] or [B] and broadcasts
over the trailing axes.
Math runs in at least float32; results come back in the (promoted) dtype of the array inputs.
"""

from __future__ import annotations

from jax import Array
from jax.typing import ArrayLike

from imagen_video_jax.diffusion._arrays import as_float, expand_to, result_dtype
from imagen_video_jax.diffusion.schedules import alpha_sigma

PREDICTION_TYPES = ("v", "eps", "x")


def _coefficients(logsnr: ArrayLike, ndim: int) -> tuple[Array, Array]:
    alpha, sigma = alpha_sigma(logsnr)
    return expand_to(alpha, ndim), expand_to(sigma, ndim)


def _linear(a: ArrayLike, b: ArrayLike, logsnr: ArrayLike, combine) -> Array:
    """combine(a, b, alpha, sigma) in float32, cast back to the dtype of a and b."""
    dtype = result_dtype(a, b)
    a, b = as_float(a), as_float(b)
    alpha, sigma = _coefficients(logsnr, max(a.ndim, b.ndim))
    return combine(a, b, alpha, sigma).astype(dtype)


def diffuse(x: ArrayLike, eps: ArrayLike, logsnr: ArrayLike) -> Array:
    """The noisy sample z = alpha * x + sigma * eps."""
    return _linear(x, eps, logsnr, lambda x, e, a, s: a * x + s * e)


def v_from_x_eps(x: ArrayLike, eps: ArrayLike, logsnr: ArrayLike) -> Array:
    """v = alpha * eps - sigma * x."""
    return _linear(x, eps, logsnr, lambda x, e, a, s: a * e - s * x)


def x_from_v(z: ArrayLike, v: ArrayLike, logsnr: ArrayLike) -> Array:
    """x = alpha * z - sigma * v."""
    return _linear(z, v, logsnr, lambda z, v, a, s: a * z - s * v)


def eps_from_v(z: ArrayLike, v: ArrayLike, logsnr: ArrayLike) -> Array:
    """eps = sigma * z + alpha * v."""
    return _linear(z, v, logsnr, lambda z, v, a, s: s * z + a * v)


def x_from_eps(z: ArrayLike, eps: ArrayLike, logsnr: ArrayLike) -> Array:
    """x = (z - sigma * eps) / alpha (ill-conditioned at very low log-SNR, where alpha -> 0)."""
    return _linear(z, eps, logsnr, lambda z, e, a, s: (z - s * e) / a)


def eps_from_x(z: ArrayLike, x: ArrayLike, logsnr: ArrayLike) -> Array:
    """eps = (z - alpha * x) / sigma (ill-conditioned at very high log-SNR, where sigma -> 0)."""
    return _linear(z, x, logsnr, lambda z, x, a, s: (z - a * x) / s)


def v_from_x(z: ArrayLike, x: ArrayLike, logsnr: ArrayLike) -> Array:
    """v given z and x: (alpha * z - x) / sigma."""
    return _linear(z, x, logsnr, lambda z, x, a, s: (a * z - x) / s)


def v_from_eps(z: ArrayLike, eps: ArrayLike, logsnr: ArrayLike) -> Array:
    """v given z and eps: (eps - sigma * z) / alpha."""
    return _linear(z, eps, logsnr, lambda z, e, a, s: (e - s * z) / a)


def _check_prediction(prediction: str) -> None:
    if prediction not in PREDICTION_TYPES:
        raise ValueError(f"prediction must be one of {PREDICTION_TYPES}, got {prediction!r}")


def to_x_eps(
    prediction: str, z: ArrayLike, pred: ArrayLike, logsnr: ArrayLike
) -> tuple[Array, Array]:
    """(x_hat, eps_hat) from a model output `pred` of type 'v', 'eps' or 'x' at the noisy `z`."""
    _check_prediction(prediction)
    if prediction == "v":
        return x_from_v(z, pred, logsnr), eps_from_v(z, pred, logsnr)
    if prediction == "eps":
        return x_from_eps(z, pred, logsnr), as_float(pred).astype(result_dtype(z, pred))
    return as_float(pred).astype(result_dtype(z, pred)), eps_from_x(z, pred, logsnr)


def prediction_target(prediction: str, x: ArrayLike, eps: ArrayLike, logsnr: ArrayLike) -> Array:
    """The regression target of a `prediction`-type model for clean `x` and noise `eps`."""
    _check_prediction(prediction)
    if prediction == "v":
        return v_from_x_eps(x, eps, logsnr)
    return as_float(eps if prediction == "eps" else x).astype(result_dtype(x, eps))
