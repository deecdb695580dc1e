"""Samplers: DDIM, ancestral (VDM gamma), N-step stochastic (Meng et al.) and predictor-corrector.

Each runs `num_steps` model evaluations as one `lax.scan` over a model `fn(z, logsnr[B]) -> pred`
(v by default), so a single compile serves every prompt. The time grid is t_i = i / N of the
given schedule; the scan moves z from t = 1 down to t = 1/N and the sample is the model's x_hat
there. Optional per-evaluation hooks compose with every sampler: `conditioning` (replacement or
reconstruction guidance, see conditioning.py) and `x_transform` (e.g. dynamic thresholding);
after them eps_hat is recomputed from z and the final x_hat. `progress(step, num_steps)` is called
from inside jit (unordered host callback). Samplers compute and return float32.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import Array, lax
from jax.typing import ArrayLike

from imagen_video_jax.diffusion._arrays import result_dtype
from imagen_video_jax.diffusion.conditioning import Conditioning
from imagen_video_jax.diffusion.parameterization import diffuse, eps_from_x, to_x_eps
from imagen_video_jax.diffusion.schedules import DEFAULT_SCHEDULE, Schedule, alpha_sigma

ModelFn = Callable[[Array, Array], Array]
Denoise = Callable[[Array, Array, Array], tuple[Array, Array]]
Progress = Callable[[int, int], None]


def ddim_step(z_t: ArrayLike, v_hat: ArrayLike, logsnr_t: ArrayLike, logsnr_s: ArrayLike) -> Array:
    """One deterministic DDIM step from a v prediction: z_s = alpha_s x_hat + sigma_s eps_hat."""
    x_hat, eps_hat = to_x_eps("v", z_t, v_hat, logsnr_t)
    return diffuse(x_hat, eps_hat, logsnr_s).astype(result_dtype(z_t, v_hat))


def make_denoiser(
    fn: ModelFn,
    *,
    prediction: str = "v",
    conditioning: Conditioning | None = None,
    x_transform: Callable[[Array], Array] | None = None,
) -> Denoise:
    """`denoise(z, logsnr, key) -> (x_hat, eps_hat)` in float32, hooks applied, with
    z_used = alpha x_hat + sigma eps_hat (z_used is z after any replacement)."""

    def denoise(z: Array, logsnr: Array, key: Array) -> tuple[Array, Array]:
        logsnr = jnp.broadcast_to(logsnr, z.shape[:1])

        def predict(z: Array) -> tuple[Array, Array]:
            x_hat, eps_hat = to_x_eps(prediction, z, fn(z, logsnr), logsnr)
            return x_hat.astype(jnp.float32), eps_hat.astype(jnp.float32)

        if conditioning is None and x_transform is None:
            return predict(z)
        if conditioning is None:
            x_hat, _ = predict(z)
        else:
            z, x_hat = conditioning(predict, z, logsnr, key)
        if x_transform is not None:
            x_hat = x_transform(x_hat).astype(jnp.float32)
        return x_hat, eps_from_x(z, x_hat, logsnr)

    return denoise


def _report(progress: Progress | None, step: Array, num_steps: int) -> None:
    if progress is not None:
        jax.debug.callback(lambda s: progress(int(s), num_steps), step, ordered=False)


Update = Callable[[Denoise, Array, Array, Array, Array], Array]


def _sample(
    update: Update,
    keys_per_step: int,
    fn: ModelFn,
    z_T: ArrayLike,
    key: Array,
    *,
    num_steps: int,
    schedule: Schedule,
    prediction: str,
    conditioning: Conditioning | None,
    x_transform: Callable[[Array], Array] | None,
    progress: Progress | None,
) -> Array:
    """Scan `update(denoise, z, grid, k, keys)` over k = 0..N-2, then return x_hat at t = 1/N.

    All keys are split up front ([N, keys_per_step]), which keeps key splitting out of the loop.
    """
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive int, got {num_steps!r}")
    denoise = make_denoiser(
        fn, prediction=prediction, conditioning=conditioning, x_transform=x_transform
    )
    grid = schedule(jnp.linspace(1.0, 0.0, num_steps + 1))
    keys = jax.random.split(key, (num_steps, keys_per_step))

    def body(z: Array, inputs: tuple[Array, Array]) -> tuple[Array, None]:
        k, step_keys = inputs
        z = update(denoise, z, grid, k, step_keys)
        _report(progress, k + 1, num_steps)
        return z, None

    z = jnp.asarray(z_T, jnp.float32)
    z, _ = lax.scan(body, z, (jnp.arange(num_steps - 1), keys[:-1]))
    x_hat, _ = denoise(z, grid[num_steps - 1], keys[-1, 0])
    _report(progress, jnp.asarray(num_steps), num_steps)
    return x_hat


def _ancestral_move(
    x: Array, eps: Array, logsnr_t: Array, logsnr_s: Array, gamma: float, key: Array
) -> Array:
    """z_s ~ N(mu_{s|t}, sigma2tilde_{s|t}^(1-gamma) sigma2_{t|s}^gamma) with
    mu_{s|t} = alpha_s x + (alpha_t sigma_s^2 / (sigma_t alpha_s)) eps (the VDM posterior mean
    written with z_t = alpha_t x + sigma_t eps)."""
    alpha_t, sigma_t = alpha_sigma(logsnr_t)
    alpha_s, sigma_s = alpha_sigma(logsnr_s)
    one_minus_r = -jnp.expm1(logsnr_t - logsnr_s)
    mean = alpha_s * x + (alpha_t * sigma_s**2 / (sigma_t * alpha_s)) * eps
    std = jnp.sqrt(one_minus_r) * sigma_s ** (1.0 - gamma) * sigma_t**gamma
    return mean + std * jax.random.normal(key, x.shape, x.dtype)


def _forward_noise(z_u: Array, logsnr_u: Array, logsnr_s: Array, key: Array) -> Array:
    """Sample q(z_s | z_u) for a noisier level s (logsnr_s < logsnr_u)."""
    alpha_u, _ = alpha_sigma(logsnr_u)
    alpha_s, sigma_s = alpha_sigma(logsnr_s)
    std = sigma_s * jnp.sqrt(-jnp.expm1(logsnr_s - logsnr_u))
    return (alpha_s / alpha_u) * z_u + std * jax.random.normal(key, z_u.shape, z_u.dtype)


def ddim_sample(
    fn: ModelFn,
    z_T: ArrayLike,
    key: Array,
    *,
    num_steps: int,
    schedule: Schedule = DEFAULT_SCHEDULE,
    prediction: str = "v",
    conditioning: Conditioning | None = None,
    x_transform: Callable[[Array], Array] | None = None,
    progress: Progress | None = None,
) -> Array:
    """Deterministic DDIM: z_s = alpha_s x_hat + sigma_s eps_hat (key used by conditioning only)."""

    def update(denoise: Denoise, z: Array, grid: Array, k: Array, keys: Array) -> Array:
        x, eps = denoise(z, grid[k], keys[0])
        return diffuse(x, eps, grid[k + 1])

    return _sample(
        update,
        1,
        fn,
        z_T,
        key,
        num_steps=num_steps,
        schedule=schedule,
        prediction=prediction,
        conditioning=conditioning,
        x_transform=x_transform,
        progress=progress,
    )


def ancestral_sample(
    fn: ModelFn,
    z_T: ArrayLike,
    key: Array,
    *,
    num_steps: int,
    gamma: float = 0.0,
    schedule: Schedule = DEFAULT_SCHEDULE,
    prediction: str = "v",
    conditioning: Conditioning | None = None,
    x_transform: Callable[[Array], Array] | None = None,
    progress: Progress | None = None,
) -> Array:
    """Ancestral sampling with VDM's variance interpolation: gamma = 0 uses the true posterior
    variance sigma2tilde_{s|t}, gamma = 1 the forward-process variance sigma2_{t|s}."""

    def update(denoise: Denoise, z: Array, grid: Array, k: Array, keys: Array) -> Array:
        x, eps = denoise(z, grid[k], keys[0])
        return _ancestral_move(x, eps, grid[k], grid[k + 1], gamma, keys[1])

    return _sample(
        update,
        2,
        fn,
        z_T,
        key,
        num_steps=num_steps,
        schedule=schedule,
        prediction=prediction,
        conditioning=conditioning,
        x_transform=x_transform,
        progress=progress,
    )


def stochastic_sample(
    fn: ModelFn,
    z_T: ArrayLike,
    key: Array,
    *,
    num_steps: int,
    schedule: Schedule = DEFAULT_SCHEDULE,
    prediction: str = "v",
    conditioning: Conditioning | None = None,
    x_transform: Callable[[Array], Array] | None = None,
    progress: Progress | None = None,
) -> Array:
    """Meng et al.'s N-step stochastic sampler: from t, a deterministic DDIM step to t - 2/N, then
    forward noise back up to t - 1/N with fresh noise; N model calls in all, the last returns x_hat.
    """

    def update(denoise: Denoise, z: Array, grid: Array, k: Array, keys: Array) -> Array:
        x, eps = denoise(z, grid[k], keys[0])
        z_far = diffuse(x, eps, grid[k + 2])
        return _forward_noise(z_far, grid[k + 2], grid[k + 1], keys[1])

    return _sample(
        update,
        2,
        fn,
        z_T,
        key,
        num_steps=num_steps,
        schedule=schedule,
        prediction=prediction,
        conditioning=conditioning,
        x_transform=x_transform,
        progress=progress,
    )


def pc_sample(
    fn: ModelFn,
    z_T: ArrayLike,
    key: Array,
    *,
    num_steps: int,
    gamma: float = 0.0,
    num_corrector: int = 1,
    corrector_step: float = 0.1,
    schedule: Schedule = DEFAULT_SCHEDULE,
    prediction: str = "v",
    conditioning: Conditioning | None = None,
    x_transform: Callable[[Array], Array] | None = None,
    progress: Progress | None = None,
) -> Array:
    """Predictor-corrector: an ancestral predictor step t -> s, then `num_corrector` Langevin steps
    at level s, z <- z - (delta sigma_s / 2) eps_hat + sqrt(delta) sigma_s noise (VDM), with
    delta = `corrector_step`. Model calls: (1 + num_corrector) per step, 1 at the end."""
    if num_corrector < 0 or corrector_step <= 0:
        raise ValueError(
            f"need num_corrector >= 0 and corrector_step > 0, got {num_corrector}, {corrector_step}"
        )

    def langevin(
        denoise: Denoise, z: Array, logsnr: Array, denoise_key: Array, noise_key: Array
    ) -> Array:
        x, eps = denoise(z, logsnr, denoise_key)
        alpha, sigma = alpha_sigma(logsnr)
        z = alpha * x + sigma * eps
        noise = jax.random.normal(noise_key, z.shape, z.dtype)
        return z - 0.5 * corrector_step * sigma * eps + jnp.sqrt(corrector_step) * sigma * noise

    def update(denoise: Denoise, z: Array, grid: Array, k: Array, keys: Array) -> Array:
        x, eps = denoise(z, grid[k], keys[0])
        z = _ancestral_move(x, eps, grid[k], grid[k + 1], gamma, keys[1])
        for i in range(num_corrector):
            z = langevin(denoise, z, grid[k + 1], keys[2 + 2 * i], keys[3 + 2 * i])
        return z

    return _sample(
        update,
        2 + 2 * num_corrector,
        fn,
        z_T,
        key,
        num_steps=num_steps,
        schedule=schedule,
        prediction=prediction,
        conditioning=conditioning,
        x_transform=x_transform,
        progress=progress,
    )


SAMPLERS = {
    "ddim": ddim_sample,
    "ancestral": ancestral_sample,
    "stochastic": stochastic_sample,
    "pc": pc_sample,
}


def get_sampler(name: str) -> Callable[..., Array]:
    """The sampler function called `name` ('ddim', 'ancestral', 'stochastic' or 'pc')."""
    if name not in SAMPLERS:
        raise ValueError(f"sampler must be one of {sorted(SAMPLERS)}, got {name!r}")
    return SAMPLERS[name]
