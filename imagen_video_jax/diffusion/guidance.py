"""Classifier-free guidance, the oscillating guidance-weight schedule and dynamic thresholding."""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.typing import ArrayLike

from imagen_video_jax.diffusion._arrays import as_float, expand_to, result_dtype
from imagen_video_jax.diffusion.schedules import Schedule

ModelFn = Callable[[Array, Array], Array]
Weight = ArrayLike | Callable[[Array], Array]


def cfg_combine(pred_cond: ArrayLike, pred_uncond: ArrayLike, w: ArrayLike) -> Array:
    """Guided prediction (1 + w) * cond - w * uncond; w is [] or [B] (w = 0: no guidance)."""
    dtype = result_dtype(pred_cond, pred_uncond)
    cond, uncond = as_float(pred_cond), as_float(pred_uncond)
    w = expand_to(w, cond.ndim)
    return ((1.0 + w) * cond - w * uncond).astype(dtype)


def cfg_model_fn(fn_cond_uncond: ModelFn, w: Weight) -> ModelFn:
    """Classifier-free guided model fn(z, logsnr) from ONE batched call per evaluation.

    `fn_cond_uncond(z2, logsnr2)` sees a batch of 2B: the first B rows are evaluated with the
    conditioning, the last B with the null conditioning (the caller stacks its conditioning that
    way once, e.g. concatenate([text, null_text])). `w` is a number, a [B] array, or a callable
    logsnr[B] -> w (such as `per_step_weights`) for weights that change over sampling.
    """

    def guided(z: Array, logsnr: Array) -> Array:
        batch = z.shape[0]
        logsnr = jnp.broadcast_to(logsnr, (batch,))
        both = fn_cond_uncond(jnp.concatenate([z, z]), jnp.concatenate([logsnr, logsnr]))
        weight = w(logsnr) if callable(w) else w
        return cfg_combine(both[:batch], both[batch:], weight)

    return guided


def oscillating_weights(
    num_steps: int, *, num_constant: int, w_high: float = 15.0, w_low: float = 1.0
) -> np.ndarray:
    """Per-step guidance weights [num_steps] of oscillating guidance (Imagen Video).

    The paper applies a constant high weight for a number of initial sampling steps, then
    alternates between a high and a low weight (e.g. 15 and 1), without giving the count. Here:
    steps k < num_constant use w_high; later steps alternate starting with w_low
    (w_low, w_high, w_low, ...). Weights use the convention (1 + w) cond - w uncond.
    """
    if num_steps < 1 or not 0 <= num_constant <= num_steps:
        raise ValueError(
            "need num_steps >= 1 and 0 <= num_constant <= num_steps, "
            f"got num_steps={num_steps}, num_constant={num_constant}"
        )
    steps = np.arange(num_steps)
    high = (steps < num_constant) | ((steps - num_constant) % 2 == 1)
    return np.where(high, w_high, w_low).astype(np.float32)


def per_step_weights(weights: ArrayLike, schedule: Schedule) -> Callable[[Array], Array]:
    """Map a sampler's model-call log-SNR back to its step k and return weights[k].

    Samplers evaluate the model at t = i / N, i = N, ..., 1 (N = len(weights)); step k = N - i.
    Levels between grid points (e.g. Langevin corrector calls at t = (i-1)/N) use the weight of
    the step that starts at that level.
    """
    weights = as_float(weights)
    num_steps = weights.shape[0]

    def weight_at(logsnr: Array) -> Array:
        t = schedule.t_from_logsnr(logsnr)
        step = num_steps - jnp.round(t * num_steps).astype(jnp.int32)
        return weights[jnp.clip(step, 0, num_steps - 1)]

    return weight_at


def dynamic_threshold(x_hat: ArrayLike, percentile: float = 0.995) -> Array:
    """Imagen dynamic thresholding: per example, s = max(1, quantile(|x_hat|, percentile));
    clip x_hat to [-s, s] and divide by s, so predictions stay in [-1, 1] without saturating."""
    if not 0.0 < percentile <= 1.0:
        raise ValueError(f"percentile must be in (0, 1], got {percentile}")
    dtype = result_dtype(x_hat)
    x = as_float(x_hat)
    flat = jnp.abs(x.reshape(x.shape[0], -1))
    s = jnp.maximum(jnp.quantile(flat, percentile, axis=1), 1.0)
    s = expand_to(s, x.ndim)
    return (jnp.clip(x, -s, s) / s).astype(dtype)
