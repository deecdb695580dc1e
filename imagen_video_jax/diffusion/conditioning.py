"""Conditional sampling from an unconditional model given known data (VDM): replacement and
reconstruction guidance, for known frames/pixels (a mask) or a known low-resolution video.

Known data is an `Observation`: y = A(x) for a linear operator A with right inverse A+ (A A+ = I,
A+ A the orthogonal projection onto what is observed). A conditioning is a callable
`(predict, z, logsnr, key) -> (z_used, x_hat)` that samplers call at every model evaluation,
where `predict(z) -> (x_hat, eps_hat)` runs the model at the current log-SNR; so it composes
with every sampler.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from imagen_video_jax.diffusion._arrays import as_float, expand_to
from imagen_video_jax.diffusion.schedules import alpha_sigma

Predict = Callable[[Array], tuple[Array, Array]]
Conditioning = Callable[[Predict, Array, Array, Array], tuple[Array, Array]]


@dataclasses.dataclass(frozen=True)
class Observation:
    """Known data `y = forward(x)`, with `pinv` the right inverse of the linear map `forward`."""

    y: Array
    forward: Callable[[Array], Array]
    pinv: Callable[[Array], Array]

    def impose(self, x: Array, y: Array) -> Array:
        """x with its observed component replaced so that forward(result) = y."""
        return x + self.pinv(y - self.forward(x))


def known_mask(x_known: ArrayLike, mask: ArrayLike) -> Observation:
    """Known entries of x where `mask` is 1 (mask broadcasts against x: e.g. [B, T, 1, 1, 1] for
    known frames, or a full pixel mask); entries where it is 0 are generated. The mask holds
    only 0s and 1s (a projection)."""
    mask = as_float(mask)
    select = lambda x: x * mask
    return Observation(select(as_float(x_known)), select, select)


def _block_mean(x: Array, factors: Sequence[int]) -> Array:
    """Average over non-overlapping blocks of `factors` along axes 1..len(factors)."""
    shape = [x.shape[0]]
    for axis, factor in enumerate(factors, start=1):
        shape += [x.shape[axis] // factor, factor]
    shape += list(x.shape[len(factors) + 1 :])
    block_axes = tuple(range(2, 2 * len(factors) + 1, 2))
    return jnp.mean(x.reshape(shape), axis=block_axes)


def _repeat_blocks(y: Array, factors: Sequence[int]) -> Array:
    """Nearest-neighbour upsampling by `factors` along axes 1..len(factors)."""
    for axis, factor in enumerate(factors, start=1):
        y = jnp.repeat(y, factor, axis=axis)
    return y


def known_lowres(y_lowres: ArrayLike, factors: Sequence[int]) -> Observation:
    """A known low-resolution version of x: y = block mean of x by `factors` along the axes after
    batch (e.g. (1, 4, 4) for [B, T, H, W, C] spatial x4, (2, 1, 1) for temporal x2)."""
    factors = tuple(int(f) for f in factors)
    if not factors or min(factors) < 1:
        raise ValueError(f"factors must be positive integers, got {factors}")
    forward = lambda x: _block_mean(x, factors)
    pinv = lambda y: _repeat_blocks(y, factors)
    return Observation(as_float(y_lowres), forward, pinv)


def _replace_noisy(observation: Observation, z: Array, logsnr: Array, key: Array) -> Array:
    """z with its observed component drawn from q(z_t | y): alpha_t y + sigma_t A(fresh noise)."""
    alpha, sigma = alpha_sigma(expand_to(logsnr, z.ndim))
    noise = jax.random.normal(key, z.shape, z.dtype)
    return observation.impose(z, alpha * observation.y + sigma * observation.forward(noise))


def replacement(observation: Observation) -> Conditioning:
    """Replacement method: at each step the observed part of z_t is resampled from q(z_t | y) and
    the model's x_hat gets the known data imposed; the rest follows the unconditional model."""

    def condition(predict: Predict, z: Array, logsnr: Array, key: Array) -> tuple[Array, Array]:
        z = _replace_noisy(observation, z, logsnr, key)
        x_hat, _ = predict(z)
        return z, observation.impose(x_hat, observation.y)

    return condition


def reconstruction_guidance(
    observation: Observation, weight: float = 2.0, *, replace: bool = True
) -> Conditioning:
    """Reconstruction guidance (VDM):
    x~ = x_hat - (weight * alpha_t / 2) grad_z ||y - A x_hat(z)||^2, the gradient taken through
    the model (summed over the batch, which gives each example its own gradient since the model
    treats examples independently).

    With `replace` (known frames/pixels that are part of the sampled video) the observed part of
    z_t is also resampled from q(z_t | y) as in `replacement`, and x~ gets the known data imposed,
    so the guidance acts on the unobserved part. Without it (e.g. a known low-resolution video that
    is not part of the sampled state) the guided x~ is used as is.
    """

    def condition(predict: Predict, z: Array, logsnr: Array, key: Array) -> tuple[Array, Array]:
        if replace:
            z = _replace_noisy(observation, z, logsnr, key)

        def reconstruction_error(z: Array) -> tuple[Array, Array]:
            x_hat, _ = predict(z)
            return jnp.sum(jnp.square(observation.y - observation.forward(x_hat))), x_hat

        grad, x_hat = jax.grad(reconstruction_error, has_aux=True)(z)
        alpha, _ = alpha_sigma(expand_to(logsnr, z.ndim))
        x_tilde = x_hat - 0.5 * weight * alpha * grad
        return z, observation.impose(x_tilde, observation.y) if replace else x_tilde

    return condition
