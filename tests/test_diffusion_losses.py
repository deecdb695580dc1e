"""Training loss and noise-conditioning augmentation against NumPy references written here."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imagen_video_jax.diffusion import (
    SAMPLE_AUG_LOGSNR,
    Schedule,
    diffusion_loss,
    noise_augment,
    sample_times,
)

# One data shape throughout, so eagerly compiled random-number kernels are shared between tests.
X = np.random.default_rng(1).uniform(-1, 1, (16, 3, 4, 4, 2)).astype(np.float32)


def ref_alpha_sigma(logsnr):
    logsnr = np.asarray(logsnr, np.float64).reshape(-1, 1, 1, 1, 1)
    return np.sqrt(1 / (1 + np.exp(-logsnr))), np.sqrt(1 / (1 + np.exp(logsnr)))


def _alpha_sigma(logsnr):
    return jnp.sqrt(jax.nn.sigmoid(logsnr)), jnp.sqrt(jax.nn.sigmoid(-logsnr))


def assert_standard_normal(samples):
    """Mean 0 and std 1 within 4 standard errors (1/sqrt(n) and 1/sqrt(2n))."""
    n = samples.size
    assert abs(samples.mean()) < 4 / np.sqrt(n)
    assert abs(samples.std() - 1) < 4 / np.sqrt(2 * n)


class Recorder:
    """A model returning a fixed guess, remembering the (z, logsnr) it was called with."""

    def __init__(self, guess):
        self.guess = guess

    def __call__(self, z, logsnr):
        self.z, self.logsnr = np.asarray(z, np.float64), np.asarray(logsnr, np.float64)
        return jnp.asarray(self.guess)


@pytest.mark.parametrize("prediction", ["v", "eps", "x"])
def test_loss_is_mse_of_the_chosen_target(prediction):
    guess = np.random.default_rng(2).standard_normal(X.shape).astype(np.float32)
    model = Recorder(guess)
    loss = diffusion_loss(model, X, jax.random.key(0), prediction=prediction)
    alpha, sigma = ref_alpha_sigma(model.logsnr)
    x = X.astype(np.float64)
    eps = (model.z - alpha * x) / sigma
    target = {"v": alpha * eps - sigma * x, "eps": eps, "x": x}[prediction]
    expected = np.mean((guess - target) ** 2, axis=(1, 2, 3, 4))
    assert loss.shape == (16,)
    np.testing.assert_allclose(loss, expected, rtol=1e-4)
    assert_standard_normal(eps)  # z really is alpha x + sigma * N(0, 1) noise


@pytest.mark.parametrize("prediction", ["v", "eps", "x"])
def test_oracle_model_has_zero_loss(prediction):
    def oracle(z, logsnr):
        alpha, sigma = (a.reshape(-1, 1, 1, 1, 1) for a in _alpha_sigma(logsnr))
        eps = (z - alpha * X) / sigma
        return {"v": alpha * eps - sigma * X, "eps": eps, "x": jnp.asarray(X)}[prediction]

    schedule = Schedule(logsnr_min=-8.0, logsnr_max=8.0)  # keeps the oracle's division stable
    loss = diffusion_loss(oracle, X, jax.random.key(3), prediction=prediction, schedule=schedule)
    np.testing.assert_allclose(loss, 0.0, atol=1e-9)


def test_loss_is_jittable_and_differentiable():
    def loss_of_scale(scale, key):
        return jnp.mean(diffusion_loss(lambda z, logsnr: scale * z, X, key))

    value, grad = jax.jit(jax.value_and_grad(loss_of_scale))(0.5, jax.random.key(8))
    eager = jnp.mean(diffusion_loss(lambda z, logsnr: 0.5 * z, X, jax.random.key(8)))
    np.testing.assert_allclose(value, eager, rtol=1e-5)
    assert np.isfinite(grad) and grad != 0


def test_frame_weights_give_weighted_mean():
    guess = np.zeros_like(X)
    model = Recorder(guess)
    weights = np.array([[1, 1, 0]] * 8 + [[0, 0, 1]] * 7 + [[0, 0, 0]], np.float32)
    loss = diffusion_loss(model, X, jax.random.key(4), weights=weights)
    alpha, sigma = ref_alpha_sigma(model.logsnr)
    eps = (model.z - alpha * X) / sigma
    per_frame = np.mean((alpha * eps - sigma * X) ** 2, axis=(2, 3, 4))
    expected = (per_frame * weights).sum(1) / np.maximum(weights.sum(1), 1e-30)
    np.testing.assert_allclose(loss, expected, rtol=1e-4)
    assert loss[-1] == 0.0


def test_loss_rejects_wrong_output_shape():
    with pytest.raises(ValueError, match="model output shape"):
        diffusion_loss(lambda z, logsnr: z[:, :1], X, jax.random.key(0))


def test_low_discrepancy_times_fill_strata():
    t = np.sort(np.asarray(sample_times(jax.random.key(5), 64, low_discrepancy=True)))
    np.testing.assert_allclose(np.diff(t), 1 / 64, atol=1e-6)
    plain = np.asarray(sample_times(jax.random.key(5), 4096))
    assert plain.min() >= 0 and plain.max() < 1 and abs(plain.mean() - 0.5) < 0.02


def test_noise_augment_fixed_level():
    cond = X
    noisy, logsnr = noise_augment(cond, jax.random.key(6), logsnr=SAMPLE_AUG_LOGSNR)
    assert pytest.approx(math.log(3.0)) == SAMPLE_AUG_LOGSNR
    np.testing.assert_allclose(logsnr, np.full(16, math.log(3.0)), rtol=1e-6)
    alpha, sigma = math.sqrt(0.75), math.sqrt(0.25)  # SNR 3: alpha^2 = 3/4, sigma^2 = 1/4
    noise = (np.asarray(noisy, np.float64) - alpha * cond) / sigma
    assert_standard_normal(noise)


def test_noise_augment_random_levels_and_dtype():
    cond = jnp.asarray(X, jnp.bfloat16)
    noisy, logsnr = noise_augment(cond, jax.random.key(7), logsnr_range=(-2.0, 4.0))
    assert noisy.dtype == jnp.bfloat16 and logsnr.shape == (16,)
    assert float(logsnr.min()) >= -2 and float(logsnr.max()) <= 4 and np.ptp(logsnr) > 1
    alpha, sigma = ref_alpha_sigma(logsnr)
    noise = (np.asarray(noisy, np.float64) - alpha * np.asarray(cond, np.float64)) / sigma
    assert_standard_normal(noise)
    with pytest.raises(ValueError, match="low <= high"):
        noise_augment(cond, jax.random.key(0), logsnr_range=(3.0, 1.0))
