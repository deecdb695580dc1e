"""The diffusion training loss and noise-conditioning augmentation."""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from imagen_video_jax.diffusion._arrays import as_float, expand_to, result_dtype
from imagen_video_jax.diffusion.parameterization import diffuse, prediction_target
from imagen_video_jax.diffusion.schedules import DEFAULT_SCHEDULE, Schedule

ModelFn = Callable[[Array, Array], Array]

# Noise-conditioning augmentation levels (log-SNR of the conditioning video). Training draws a
# level uniformly from this range; sampling uses a fixed level, log(3) or log(5) for the paper's
# "SNR 3 or 5" read as alpha^2 / sigma^2 = SNR.
AUG_LOGSNR_RANGE = (0.0, 10.0)
SAMPLE_AUG_LOGSNR = math.log(3.0)


def sample_times(key: Array, batch: int, *, low_discrepancy: bool = False) -> Array:
    """t ~ U(0, 1) of shape [batch]; low-discrepancy puts one t in each 1/batch stratum (VDM),
    sharing one random offset, which lowers the loss variance across the batch."""
    if not low_discrepancy:
        return jax.random.uniform(key, (batch,))
    offset = jax.random.uniform(key, ())
    return jnp.mod(offset + jnp.arange(batch) / batch, 1.0)


def _masked_mean(values: Array, weights: ArrayLike | None) -> Array:
    """Per-example mean over all non-batch axes; `weights` broadcast over the leading axes
    ([B] or e.g. [B, T] frame weights) give a weighted mean instead (zero total weight -> 0)."""
    axes = tuple(range(1, values.ndim))
    if weights is None:
        return jnp.mean(values, axis=axes)
    weights = jnp.broadcast_to(expand_to(weights, values.ndim), values.shape)
    total = jnp.sum(weights, axis=axes)
    return jnp.sum(weights * values, axis=axes) / jnp.maximum(total, jnp.finfo(values.dtype).tiny)


def diffusion_loss(
    model_fn: ModelFn,
    x: ArrayLike,
    key: Array,
    *,
    prediction: str = "v",
    schedule: Schedule = DEFAULT_SCHEDULE,
    low_discrepancy: bool = False,
    weights: ArrayLike | None = None,
) -> Array:
    """Per-example [B] mean squared error of `model_fn(z_t, logsnr[B])` against its target.

    t ~ U(0, 1), logsnr = schedule(t), z_t = alpha x + sigma eps; the target is v (default), eps or
    x according to `prediction`. `weights` (shape [B] or a prefix of x's shape such as [B, T])
    weight the squared errors, e.g. to ignore padded frames.
    """
    x = as_float(x)
    t_key, eps_key = jax.random.split(key)
    logsnr = schedule(sample_times(t_key, x.shape[0], low_discrepancy=low_discrepancy))
    eps = jax.random.normal(eps_key, x.shape, x.dtype)
    target = prediction_target(prediction, x, eps, logsnr)
    pred = as_float(model_fn(diffuse(x, eps, logsnr), logsnr))
    if pred.shape != x.shape:
        raise ValueError(f"model output shape {pred.shape} must equal the data shape {x.shape}")
    return _masked_mean(jnp.square(pred - target), weights)


def noise_augment(
    cond: ArrayLike,
    key: Array,
    *,
    logsnr: ArrayLike | None = None,
    logsnr_range: tuple[float, float] = AUG_LOGSNR_RANGE,
) -> tuple[Array, Array]:
    """Noise-conditioning augmentation: (alpha cond + sigma eps, logsnr[B]).

    With `logsnr` given ([] or [B]; e.g. SAMPLE_AUG_LOGSNR at sampling time) that level is used;
    otherwise each example draws its level uniformly from `logsnr_range` (training). The model
    receives the returned level as an input.
    """
    batch = jnp.shape(cond)[0]
    level_key, eps_key = jax.random.split(key)
    if logsnr is None:
        low, high = logsnr_range
        if not low <= high:
            raise ValueError(f"logsnr_range must be (low, high), low <= high; got {logsnr_range}")
        logsnr = jax.random.uniform(level_key, (batch,), minval=low, maxval=high)
    logsnr = jnp.broadcast_to(as_float(logsnr), (batch,))
    eps = jax.random.normal(eps_key, jnp.shape(cond), jnp.float32)
    return diffuse(cond, eps, logsnr).astype(result_dtype(cond)), logsnr
