"""FVD and KVD: distances between I3D feature distributions of real and generated videos.

FVD (Unterthiner et al. 2018) is the Frechet distance between Gaussians fitted to the features;
KVD is the unbiased polynomial-kernel MMD^2 between them, defined as KID is for images
(Binkowski et al. 2018). Both are computed in float64 on the host.

:func:`fvd` works from the feature samples with an exact factored form that stays accurate
(and fast) when there are fewer clips than feature dimensions; :func:`frechet_distance` takes
moments, as cached reference statistics give them, and uses ``scipy.linalg.sqrtm``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import scipy.linalg

from imagen_video_jax.eval.i3d import i3d_features

SQRTM_EPS = 1e-6  # added to the covariance diagonals when their product has no finite sqrt
CACHE_ENV = "IMAGEN_VIDEO_CACHE"


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``[D]`` and sample covariance ``[D, D]`` (float64) of features ``[N, D]``, N >= 2."""
    features = np.asarray(features, np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"expected features [N >= 2, D], got shape {features.shape}")
    return features.mean(axis=0), np.atleast_2d(np.cov(features, rowvar=False))


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """``|mu1 - mu2|^2 + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2))`` in float64.

    Near-singular covariances (fewer samples than dimensions) can make the matrix square root
    non-finite; then ``SQRTM_EPS * I`` is added to both covariances. Round-off gives the square
    root a tiny imaginary part, which is dropped.
    """
    mu1, mu2 = (np.atleast_1d(np.asarray(m, np.float64)) for m in (mu1, mu2))
    sigma1, sigma2 = (np.atleast_2d(np.asarray(s, np.float64)) for s in (sigma1, sigma2))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(
            f"statistics differ in shape: mu {mu1.shape} vs {mu2.shape}, "
            f"sigma {sigma1.shape} vs {sigma2.shape}"
        )
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = SQRTM_EPS * np.eye(len(sigma1))
        covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    diff = mu1 - mu2
    trace = np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(np.real(covmean))
    return float(diff @ diff + trace)


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """KID's kernel ``(x . y / d + 1)^3`` between rows of ``x [M, D]`` and ``y [N, D]``."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def polynomial_mmd(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 estimate with the polynomial kernel between samples ``x`` and ``y``."""
    m, n = len(x), len(y)
    k_xx, k_yy, k_xy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    within_x = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
    within_y = (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
    return float(within_x + within_y - 2.0 * k_xy.mean())


def kernel_distance(
    real: np.ndarray,
    fake: np.ndarray,
    subset_size: int | None = None,
    num_subsets: int = 100,
    seed: int = 0,
) -> float:
    """Polynomial-kernel MMD^2 of two feature sets, optionally averaged over random subsets.

    With ``subset_size`` set (and smaller than a set), ``num_subsets`` subsets of that many rows
    are drawn without replacement from each set, as KID does for large sample sets.
    """
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"expected features [M, D] and [N, D], got {real.shape}, {fake.shape}")
    if min(len(real), len(fake)) < 2:
        raise ValueError(f"need at least 2 samples per set, got {len(real)} and {len(fake)}")
    if subset_size is None or subset_size >= min(len(real), len(fake)):
        return polynomial_mmd(real, fake)
    rng = np.random.default_rng(seed)
    estimates = [
        polynomial_mmd(
            real[rng.choice(len(real), subset_size, replace=False)],
            fake[rng.choice(len(fake), subset_size, replace=False)],
        )
        for _ in range(num_subsets)
    ]
    return float(np.mean(estimates))


def frechet_distance_of_features(real: np.ndarray, fake: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to feature sets ``[M, D]`` and ``[N, D]``.

    Exact in float64 also when M or N is below D (singular covariances): with the centred,
    scaled features ``A`` and ``B`` (so ``sigma1 = A^T A``, ``sigma2 = B^T B``), the trace of
    ``(sigma1 sigma2)^(1/2)`` is the sum of the singular values of ``A B^T``, which equal those
    of ``R_A R_B^T`` for the triangular factors of ``A`` and ``B``. No square root of a
    near-singular matrix is taken, so identical sets give 0 to round-off.
    """
    (mu1, sigma1), (mu2, sigma2) = feature_stats(real), feature_stats(fake)
    r_real, r_fake = _scaled_triangular_factor(real), _scaled_triangular_factor(fake)
    trace_sqrt = np.linalg.svd(r_real @ r_fake.T, compute_uv=False).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt)


def _scaled_triangular_factor(features: np.ndarray) -> np.ndarray:
    """``R`` with ``R^T R`` = the sample covariance of ``features`` (QR of centred rows)."""
    features = np.asarray(features, np.float64)
    centred = (features - features.mean(axis=0)) / np.sqrt(len(features) - 1)
    return np.linalg.qr(centred, mode="r")


def fvd(real: np.ndarray, fake: np.ndarray) -> float:
    """Frechet Video Distance between uint8 video sets ``[N, T, H, W, 3]`` (N >= 2 each)."""
    real_features, fake_features = _features_of_both(real, fake)
    return frechet_distance_of_features(real_features, fake_features)


def kvd(real: np.ndarray, fake: np.ndarray, subset_size: int | None = None) -> float:
    """Kernel Video Distance (unbiased polynomial MMD^2 of I3D features) of uint8 video sets."""
    real_features, fake_features = _features_of_both(real, fake)
    return kernel_distance(real_features, fake_features, subset_size=subset_size)


def _features_of_both(real: np.ndarray, fake: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Features of both sets from one batched pass when their shapes agree."""
    real, fake = np.asarray(real), np.asarray(fake)
    if real.shape[1:] != fake.shape[1:]:
        return i3d_features(real), i3d_features(fake)
    features = i3d_features(np.concatenate([real, fake]))
    return features[: len(real)], features[len(real) :]


def default_cache_dir() -> Path:
    """``$IMAGEN_VIDEO_CACHE/fvd`` if set, else ``~/.cache/imagen_video_jax/fvd``."""
    root = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "imagen_video_jax"
    return Path(root) / "fvd"


def reference_cache_path(
    dataset: str, count: int, shape: tuple[int, int, int], cache_dir: str | Path | None = None
) -> Path:
    """Where the statistics of ``count`` real clips of ``shape`` (frames, height, width) live."""
    frames, height, width = shape
    name = f"{dataset}_n{count}_{frames}x{height}x{width}.npz"
    return Path(cache_dir or default_cache_dir()) / name


def reference_features(
    dataset: str,
    count: int,
    shape: tuple[int, int, int],
    make_videos: Callable[[], np.ndarray],
    cache_dir: str | Path | None = None,
) -> np.ndarray:
    """I3D features of a dataset's real clips, computed once and cached as npz.

    The cache file (keyed by dataset, count and clip shape) holds ``features``, ``mu`` and
    ``sigma``. ``make_videos()`` is only called on a cache miss and must return uint8 videos
    ``[count, *shape, 3]``.
    """
    path = reference_cache_path(dataset, count, shape, cache_dir)
    if path.exists():
        with np.load(path) as cached:
            return cached["features"]
    videos = np.asarray(make_videos())
    expected = (count, *shape, 3)
    if videos.shape != expected:
        raise ValueError(f"make_videos() for {dataset!r} gave {videos.shape}, expected {expected}")
    features = i3d_features(videos)
    mu, sigma = feature_stats(features)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(temporary, features=features, mu=mu, sigma=sigma)
    temporary.replace(path)
    return features
