"""Progressive-distillation targets against float64 NumPy references written here."""

import jax
import jax.numpy as jnp
import numpy as np

from imagen_video_jax.diffusion import (
    ddim_step,
    diffuse,
    distillation_target,
    teacher_target,
    v_from_x,
)

RNG = np.random.default_rng(4)
B = 6
SHAPE = (B, 2, 4, 4, 3)
Z_T = RNG.standard_normal(SHAPE).astype(np.float32)
Z_S = RNG.standard_normal(SHAPE).astype(np.float32)
LOGSNR_T = np.linspace(-6, 4, B).astype(np.float32)
LOGSNR_S = LOGSNR_T + np.linspace(0.3, 2.0, B).astype(np.float32)


def ref_alpha_sigma(logsnr):
    logsnr = np.asarray(logsnr, np.float64).reshape(-1, 1, 1, 1, 1)
    return np.sqrt(1 / (1 + np.exp(-logsnr))), np.sqrt(1 / (1 + np.exp(logsnr)))


def ref_ddim(z, x_hat, logsnr_t, logsnr_s):
    alpha_t, sigma_t = ref_alpha_sigma(logsnr_t)
    alpha_s, sigma_s = ref_alpha_sigma(logsnr_s)
    return alpha_s * x_hat + sigma_s * (z - alpha_t * x_hat) / sigma_t


def test_target_matches_reference_formula():
    alpha_t, sigma_t = ref_alpha_sigma(LOGSNR_T)
    alpha_s, sigma_s = ref_alpha_sigma(LOGSNR_S)
    z_t, z_s = Z_T.astype(np.float64), Z_S.astype(np.float64)
    ratio = sigma_s / sigma_t
    expected = (z_s - ratio * z_t) / (alpha_s - ratio * alpha_t)
    got = distillation_target(Z_T, Z_S, LOGSNR_T, LOGSNR_S)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_one_student_ddim_step_lands_on_z_s():
    x_target = distillation_target(Z_T, Z_S, LOGSNR_T, LOGSNR_S)
    student_v = v_from_x(Z_T, x_target, LOGSNR_T)
    landed = jax.jit(ddim_step)(Z_T, student_v, LOGSNR_T, LOGSNR_S)
    np.testing.assert_allclose(landed, Z_S, atol=1e-5)
    np.testing.assert_allclose(
        ref_ddim(Z_T, np.asarray(x_target, np.float64), LOGSNR_T, LOGSNR_S), Z_S, atol=1e-5
    )


def teacher(z, logsnr):
    """A nonlinear toy v-predictor."""
    return jnp.tanh(z) * (1 + 0.1 * logsnr.reshape(-1, 1, 1, 1, 1)) - 0.2 * z


def ref_teacher_x(z, logsnr):
    alpha, sigma = ref_alpha_sigma(logsnr)
    v = np.tanh(z) * (1 + 0.1 * np.asarray(logsnr, np.float64).reshape(-1, 1, 1, 1, 1)) - 0.2 * z
    return alpha * z - sigma * v


def test_teacher_target_is_two_teacher_ddim_steps():
    logsnr_mid = (LOGSNR_T + LOGSNR_S) / 2
    z_t = Z_T.astype(np.float64)
    z_mid = ref_ddim(z_t, ref_teacher_x(z_t, LOGSNR_T), LOGSNR_T, logsnr_mid)
    z_s = ref_ddim(z_mid, ref_teacher_x(z_mid, logsnr_mid), logsnr_mid, LOGSNR_S)
    alpha_t, sigma_t = ref_alpha_sigma(LOGSNR_T)
    alpha_s, sigma_s = ref_alpha_sigma(LOGSNR_S)
    ratio = sigma_s / sigma_t
    expected = (z_s - ratio * z_t) / (alpha_s - ratio * alpha_t)
    got = teacher_target(teacher, Z_T, LOGSNR_T, logsnr_mid, LOGSNR_S)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_teacher_target_of_an_oracle_teacher_is_the_data():
    x = RNG.uniform(-1, 1, SHAPE).astype(np.float32)
    eps = RNG.standard_normal(SHAPE).astype(np.float32)
    z_t = diffuse(x, eps, LOGSNR_T)

    def oracle(z, logsnr):
        return v_from_x(z, x, logsnr)

    logsnr_mid = (LOGSNR_T + LOGSNR_S) / 2
    np.testing.assert_allclose(
        teacher_target(oracle, z_t, LOGSNR_T, logsnr_mid, LOGSNR_S), x, atol=1e-4
    )
