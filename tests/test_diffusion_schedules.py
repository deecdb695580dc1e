"""Log-SNR schedules and alpha/sigma against float64 NumPy references written here."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imagen_video_jax.diffusion import (
    Schedule,
    alpha_sigma,
    cosine_logsnr,
    cosine_t_from_logsnr,
    get_schedule,
    linear_logsnr,
    linear_t_from_logsnr,
    resolution_shift,
)


def ref_cosine(t, lo=-20.0, hi=20.0, shift=0.0):
    """-2 log tan(theta) + shift, theta from atan e^{-(hi-shift)/2} to atan e^{-(lo-shift)/2}."""
    t = np.clip(np.asarray(t, np.float64), 0.0, 1.0)
    start = np.arctan(np.exp(-(hi - shift) / 2))
    end = np.arctan(np.exp(-(lo - shift) / 2))
    return -2.0 * np.log(np.tan(start + (end - start) * t)) + shift


T = np.linspace(0.0, 1.0, 1001)


@pytest.mark.parametrize(("lo", "hi", "shift"), [(-20, 20, 0), (-15, 10, 0), (-20, 20, -2.77)])
def test_cosine_matches_reference_and_hits_endpoints(lo, hi, shift):
    got = np.asarray(cosine_logsnr(T, lo, hi, shift), np.float64)
    np.testing.assert_allclose(got, ref_cosine(T, lo, hi, shift), rtol=1e-5, atol=2e-5)
    assert got[0] == pytest.approx(hi, abs=1e-5)
    assert got[-1] == pytest.approx(lo, abs=1e-5)


def test_cosine_unclipped_middle_is_the_plain_formula():
    t = np.linspace(0.2, 0.8, 7)
    plain = -2.0 * np.log(np.tan(np.pi * t / 2))
    np.testing.assert_allclose(cosine_logsnr(t), plain, atol=2e-4)


def test_cosine_strictly_decreasing_and_confined():
    fine = np.asarray(cosine_logsnr(np.linspace(0, 1, 100001)), np.float64)
    assert np.all(np.diff(fine) < 0)
    outside = np.asarray(cosine_logsnr(np.array([-0.5, -1e-3, 1.0 + 1e-3, 3.0])))
    np.testing.assert_allclose(outside, [20, 20, -20, -20], atol=1e-5)


def test_cosine_derivative_matches_closed_form():
    start, end = np.arctan(np.exp(-10.0)), np.arctan(np.exp(10.0))
    t = np.array([0.1, 0.37, 0.5, 0.9])
    theta = start + (end - start) * t
    expected = -4.0 * (end - start) / np.sin(2 * theta)
    got = jax.vmap(jax.grad(lambda t: cosine_logsnr(t)))(jnp.asarray(t, jnp.float32))
    np.testing.assert_allclose(got, expected, rtol=1e-4)


@pytest.mark.parametrize("shift", [0.0, -2.0 * np.log(4.0), 1.5])
def test_cosine_inverse_round_trip(shift):
    t = np.linspace(0, 1, 257)
    back = cosine_t_from_logsnr(cosine_logsnr(t, shift=shift), shift=shift)
    np.testing.assert_allclose(back, t, atol=2e-6)
    # Near t = 1 a float32 t cannot resolve log-SNR finer than ~1e-2, so compare within +-15.
    logsnr = np.linspace(-15, 19.9, 101)
    np.testing.assert_allclose(
        cosine_logsnr(cosine_t_from_logsnr(logsnr, shift=shift), shift=shift), logsnr, atol=1e-3
    )
    np.testing.assert_allclose(cosine_t_from_logsnr(np.array([25.0, -25.0])), [0.0, 1.0])


def test_resolution_shift_moves_the_schedule_middle():
    shift = resolution_shift(64, 256)
    assert shift == pytest.approx(2 * np.log(64 / 256), rel=1e-12)
    t = np.linspace(0.3, 0.7, 5)
    np.testing.assert_allclose(cosine_logsnr(t, shift=shift) - cosine_logsnr(t), shift, atol=1e-3)
    with pytest.raises(ValueError, match="positive"):
        resolution_shift(0, 64)


def test_linear_schedule_and_inverse():
    np.testing.assert_allclose(linear_logsnr(T, -10, 12), 12 - 22 * T, atol=1e-5)
    np.testing.assert_allclose(linear_t_from_logsnr(12 - 22 * T, -10, 12), T, atol=1e-6)
    np.testing.assert_allclose(linear_logsnr(np.array([-1.0, 2.0])), [20.0, -20.0])


def test_alpha_sigma_identities():
    logsnr = np.linspace(-40, 40, 801)
    alpha, sigma = (np.asarray(a, np.float64) for a in alpha_sigma(logsnr))
    np.testing.assert_allclose(alpha**2 + sigma**2, 1.0, atol=1e-6)
    np.testing.assert_allclose(alpha**2, 1 / (1 + np.exp(-logsnr)), rtol=1e-5)
    np.testing.assert_allclose(sigma**2, 1 / (1 + np.exp(logsnr)), rtol=1e-5)
    inner = np.abs(logsnr) <= 30
    np.testing.assert_allclose(np.log(alpha**2 / sigma**2)[inner], logsnr[inner], atol=2e-4)
    assert np.all(alpha > 0) and np.all(sigma > 0)


def test_alpha_sigma_computes_in_float32_for_bfloat16():
    alpha, sigma = alpha_sigma(jnp.asarray([-3.0, 0.5], jnp.bfloat16))
    assert alpha.dtype == jnp.float32 and sigma.dtype == jnp.float32


def test_schedule_object_and_errors():
    schedule = get_schedule("cosine", shift=-1.0, logsnr_max=15)
    assert schedule == Schedule("cosine", -20.0, 15.0, -1.0) and hash(schedule)
    np.testing.assert_allclose(schedule(T), ref_cosine(T, -20, 15, -1.0), rtol=1e-5, atol=2e-5)
    np.testing.assert_allclose(schedule.t_from_logsnr(schedule(T)), T, atol=2e-6)
    np.testing.assert_allclose(get_schedule("linear")(T), 20 - 40 * T, atol=1e-5)
    with pytest.raises(ValueError, match="one of"):
        get_schedule("sigmoid")
    with pytest.raises(ValueError, match="logsnr_min < logsnr_max"):
        get_schedule("cosine", logsnr_min=5, logsnr_max=5)
    with pytest.raises(ValueError, match="unknown schedule options"):
        get_schedule("cosine", logsnr_maximum=3)
    with pytest.raises(ValueError, match="no shift"):
        get_schedule("linear", shift=1.0)
