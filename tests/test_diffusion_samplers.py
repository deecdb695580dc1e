"""Samplers with oracle models, hooks (progress, thresholding, conditioning) and their errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imagen_video_jax.diffusion import (
    Schedule,
    alpha_sigma,
    ancestral_sample,
    ddim_sample,
    ddim_step,
    dynamic_threshold,
    eps_from_x,
    get_sampler,
    known_lowres,
    known_mask,
    pc_sample,
    reconstruction_guidance,
    replacement,
    stochastic_sample,
    v_from_x,
    x_from_v,
)

RNG = np.random.default_rng(5)
SHAPE = (2, 4, 4, 4, 1)  # [B, T, H, W, C]
X = RNG.uniform(-1, 1, SHAPE).astype(np.float32)
Z_T = RNG.standard_normal(SHAPE).astype(np.float32)


def oracle_v(z, logsnr):
    """The v-predictor of a model that knows the data is X."""
    return v_from_x(z, X, logsnr)


def ref_alpha_sigma(logsnr):
    logsnr = np.asarray(logsnr, np.float64)
    return np.sqrt(1 / (1 + np.exp(-logsnr))), np.sqrt(1 / (1 + np.exp(logsnr)))


def test_one_ddim_step_of_an_oracle_returns_x_from_any_z():
    z_t = RNG.standard_normal(SHAPE).astype(np.float32) * 3
    for logsnr_t, logsnr_s in [(-8.0, -7.0), (-1.0, 0.5), (2.0, 6.0)]:
        v_hat = oracle_v(z_t, logsnr_t)
        np.testing.assert_allclose(x_from_v(z_t, v_hat, logsnr_t), X, atol=1e-6)
        alpha_t, sigma_t = ref_alpha_sigma(logsnr_t)
        alpha_s, sigma_s = ref_alpha_sigma(logsnr_s)
        expected = alpha_s * X + sigma_s * (z_t - alpha_t * X) / sigma_t
        np.testing.assert_allclose(ddim_step(z_t, v_hat, logsnr_t, logsnr_s), expected, atol=1e-5)


def test_full_ddim_run_follows_the_grid_lands_on_x_and_reports_progress():
    seen, reported = [], []

    def recording_oracle(z, logsnr):
        jax.debug.callback(lambda s: seen.append(float(s[0])), logsnr, ordered=True)
        return oracle_v(z, logsnr)

    schedule = Schedule(shift=-1.0)
    sample = jax.jit(
        lambda z, key: ddim_sample(
            recording_oracle,
            z,
            key,
            num_steps=8,
            schedule=schedule,
            progress=lambda i, n: reported.append((i, n)),
        )
    )
    np.testing.assert_allclose(sample(Z_T, jax.random.key(0)), X, atol=1e-5)
    jax.effects_barrier()
    np.testing.assert_allclose(seen, schedule(np.arange(8, 0, -1) / 8), rtol=1e-5)
    assert float(alpha_sigma(seen[0])[0]) < 1e-4  # sampling starts from (almost) pure noise
    assert sorted(reported) == [(i, 8) for i in range(1, 9)]


def test_ancestral_with_an_eps_oracle_lands_on_x():
    """eps-prediction (its x_hat divides by alpha, so checked with the last call at t = 1/30)."""

    def oracle_eps(z, logsnr):
        return eps_from_x(z, X, logsnr)

    x = jax.jit(
        lambda z, key: ancestral_sample(
            oracle_eps, z, key, num_steps=30, gamma=0.3, prediction="eps"
        )
    )(Z_T, jax.random.key(1))
    np.testing.assert_allclose(x, X, atol=1e-4)


def test_dynamic_threshold_hook_keeps_predictions_in_range():
    def overshooting_x(z, logsnr):
        return v_from_x(z, 3.0 * jnp.tanh(z) + 0.5, logsnr)

    x = jax.jit(
        lambda z, key: stochastic_sample(
            overshooting_x, z, key, num_steps=6, x_transform=dynamic_threshold
        )
    )(Z_T, jax.random.key(2))
    assert float(jnp.max(jnp.abs(x))) <= 1.0 + 1e-6
    assert float(jnp.max(jnp.abs(x))) > 0.9  # rescaled, not collapsed


def ref_block_mean(x, factors):
    b, t, h, w, c = x.shape
    ft, fh, fw = factors
    return x.reshape(b, t // ft, ft, h // fh, fh, w // fw, fw, c).mean(axis=(2, 4, 6))


def test_lowres_observation_operator():
    obs = known_lowres(ref_block_mean(X, (2, 2, 1)), (2, 2, 1))
    np.testing.assert_allclose(obs.forward(X), ref_block_mean(X, (2, 2, 1)), atol=1e-6)
    y = RNG.standard_normal((2, 2, 2, 4, 1)).astype(np.float32)
    np.testing.assert_allclose(obs.forward(obs.pinv(y)), y, atol=1e-6)  # A A+ = I
    up = np.repeat(np.repeat(y, 2, axis=1), 2, axis=2)
    np.testing.assert_allclose(obs.pinv(y), up)
    z = RNG.standard_normal(SHAPE).astype(np.float32)
    imposed = obs.impose(z, y)
    np.testing.assert_allclose(obs.forward(imposed), y, atol=1e-6)
    # Only the observed (block-mean) component changes.
    np.testing.assert_allclose(
        imposed - z, up - np.repeat(np.repeat(obs.forward(z), 2, 1), 2, 2), atol=1e-6
    )
    with pytest.raises(ValueError, match="positive"):
        known_lowres(y, (0, 2, 2))


def test_replacement_with_known_frames_keeps_them_exactly():
    frames_known = np.array([1, 0, 0, 1], np.float32).reshape(1, 4, 1, 1, 1)
    other = RNG.uniform(-1, 1, SHAPE).astype(np.float32)  # what the model believes
    obs = known_mask(X, frames_known)

    def model(z, logsnr):
        return v_from_x(z, other, logsnr)

    x = jax.jit(
        lambda z, key: pc_sample(model, z, key, num_steps=5, conditioning=replacement(obs))
    )(Z_T, jax.random.key(3))
    known = np.broadcast_to(frames_known, SHAPE).astype(bool)
    np.testing.assert_allclose(np.asarray(x)[known], X[known], atol=1e-6)
    np.testing.assert_allclose(np.asarray(x)[~known], other[~known], atol=1e-5)


def test_reconstruction_guidance_through_a_downsampling_operator():
    """Data x ~ N(0, I) (exact denoiser x_hat = alpha z, i.e. v = 0) observed through a 2x2
    spatial block mean, guided without replacement (the low-res video is not in the state): the
    samples' block means land on y (unguided they would miss it by ~0.4 on average)."""
    y = ref_block_mean(X, (1, 2, 2))
    guidance = reconstruction_guidance(known_lowres(y, (1, 2, 2)), 4.0, replace=False)
    x = jax.jit(
        lambda z, key: ancestral_sample(
            lambda z, logsnr: jnp.zeros_like(z), z, key, num_steps=32, conditioning=guidance
        )
    )(Z_T, jax.random.key(4))
    np.testing.assert_allclose(ref_block_mean(np.asarray(x), (1, 2, 2)), y, atol=0.02)
    assert np.asarray(x).std() > 0.5  # the unobserved detail is still sampled, not collapsed


def test_sampler_argument_errors():
    with pytest.raises(ValueError, match="num_steps"):
        ddim_sample(oracle_v, Z_T, jax.random.key(0), num_steps=0)
    with pytest.raises(ValueError, match="corrector"):
        pc_sample(oracle_v, Z_T, jax.random.key(0), num_steps=2, corrector_step=0.0)
    with pytest.raises(ValueError, match="sampler must be one of"):
        get_sampler("euler")
    assert get_sampler("stochastic") is stochastic_sample
    with pytest.raises(ValueError, match="prediction"):
        ddim_sample(oracle_v, Z_T, jax.random.key(0), num_steps=2, prediction="score")
