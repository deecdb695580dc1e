"""Progressive-distillation targets (Salimans & Ho 2022; Meng et al. 2022 for guided teachers)."""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from imagen_video_jax.diffusion._arrays import as_float, expand_to, result_dtype
from imagen_video_jax.diffusion.parameterization import diffuse, to_x_eps
from imagen_video_jax.diffusion.schedules import alpha_sigma

ModelFn = Callable[[Array, Array], Array]


def distillation_target(
    z_t: ArrayLike, z_s: ArrayLike, logsnr_t: ArrayLike, logsnr_s: ArrayLike
) -> Array:
    """The x a student must predict at z_t so that ONE DDIM step t -> s lands on z_s:
    x~ = (z_s - (sigma_s / sigma_t) z_t) / (alpha_s - (sigma_s / sigma_t) alpha_t)."""
    dtype = result_dtype(z_t, z_s)
    z_t, z_s = as_float(z_t), as_float(z_s)
    alpha_t, sigma_t = alpha_sigma(expand_to(logsnr_t, z_t.ndim))
    alpha_s, sigma_s = alpha_sigma(expand_to(logsnr_s, z_t.ndim))
    ratio = sigma_s / sigma_t
    return ((z_s - ratio * z_t) / (alpha_s - ratio * alpha_t)).astype(dtype)


def teacher_target(
    teacher_fn: ModelFn,
    z_t: ArrayLike,
    logsnr_t: ArrayLike,
    logsnr_mid: ArrayLike,
    logsnr_s: ArrayLike,
    *,
    prediction: str = "v",
) -> Array:
    """Student x target from two teacher DDIM steps t -> t' -> s (logsnr_t < logsnr_mid < logsnr_s).

    `teacher_fn(z, logsnr[B])` returns a `prediction`-type output (a guided teacher is wrapped
    beforehand, e.g. with `cfg_model_fn`); all log-SNRs are [] or [B].
    """
    z_t = as_float(z_t)
    batch = z_t.shape[:1]

    def teacher_step(z: Array, logsnr_from: ArrayLike, logsnr_to: ArrayLike) -> Array:
        logsnr_from = jnp.broadcast_to(as_float(logsnr_from), batch)
        x_hat, eps_hat = to_x_eps(prediction, z, teacher_fn(z, logsnr_from), logsnr_from)
        return diffuse(as_float(x_hat), as_float(eps_hat), logsnr_to)

    z_s = teacher_step(teacher_step(z_t, logsnr_t, logsnr_mid), logsnr_mid, logsnr_s)
    return distillation_target(z_t, z_s, logsnr_t, logsnr_s)
