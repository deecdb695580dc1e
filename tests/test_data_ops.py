"""Caption grammar and video array operations of imagen_video_jax.data, against NumPy references."""

import numpy as np
import pytest

from imagen_video_jax.data import captions, video_ops
from imagen_video_jax.data.video_folder import caption_from_folder, cut_clips


def test_caption_round_trip_for_every_digit_and_motion():
    for digit in range(10):
        for motion in (*captions.MOTIONS, None):
            text = captions.digits_caption([(digit, motion)])
            assert captions.parse_caption(text) == (digit, motion)
    pairs = [(3, "up"), (5, "down and to the left")]
    text = captions.digits_caption(pairs)
    assert text == "a handwritten 3 moving up and a handwritten 5 moving down and to the left"
    assert captions.parse_caption_pairs(text) == pairs
    assert captions.parse_caption("a handwritten 7 moving up and to the left") == (
        7,
        "up and to the left",
    )


@pytest.mark.parametrize(
    "text", ["a handwritten 12", "a handwritten 7 moving sideways", "a cat", "a handwritten 7 and"]
)
def test_parse_caption_rejects_other_text(text):
    with pytest.raises(ValueError, match="not a moving-digits caption"):
        captions.parse_caption_pairs(text)


def test_parse_caption_wants_one_digit():
    with pytest.raises(ValueError, match="one-digit"):
        captions.parse_caption("a handwritten 1 moving up and a handwritten 2 moving down")


def test_eight_directions_are_the_unit_compass():
    steps = {captions.DIRECTION_STEPS[d] for d in captions.DIRECTIONS}
    assert len(captions.DIRECTIONS) == 8
    assert steps == {(x, y) for x in (-1, 0, 1) for y in (-1, 0, 1)} - {(0, 0)}


def test_area_downsample_is_the_block_mean():
    rng = np.random.default_rng(0)
    video = rng.integers(0, 256, (3, 8, 12, 3), dtype=np.uint8)
    ref = video.astype(np.float64).reshape(3, 2, 4, 3, 4, 3).mean(axis=(2, 4))
    out = video_ops.area_downsample(video, 4)
    assert out.dtype == np.uint8 and out.shape == (3, 2, 3, 3)
    assert np.max(np.abs(out - ref)) <= 0.5


def test_conditioning_video_subsamples_time_then_space():
    rng = np.random.default_rng(1)
    video = rng.integers(0, 256, (8, 4, 4, 3), dtype=np.uint8)
    assert np.array_equal(video_ops.conditioning_video(video, 2, 1), video[[0, 2, 4, 6]])
    ref = video.astype(np.float64).reshape(8, 2, 2, 2, 2, 3).mean(axis=(2, 4))
    assert np.max(np.abs(video_ops.conditioning_video(video, 1, 2) - ref)) <= 0.5


def test_resize_weights_interpolate_and_antialias():
    up = video_ops.resize_weights(4, 8).astype(np.float64)
    np.testing.assert_allclose(up.sum(axis=1), 1.0, rtol=1e-6)
    ramp = np.arange(4.0)
    # Interior samples of a linear ramp stay on the ramp: centres at (i + 0.5) / 2 - 0.5.
    np.testing.assert_allclose((up @ ramp)[1:-1], (np.arange(1, 7) + 0.5) / 2 - 0.5, atol=1e-6)
    down = video_ops.resize_weights(8, 2).astype(np.float64)
    # Shrinking by 4 averages over a triangle 8 samples wide: every input pixel contributes.
    assert np.all(down.sum(axis=0) > 0)
    np.testing.assert_allclose(down.sum(axis=1), 1.0, rtol=1e-6)


def test_resize_and_center_crop_keeps_the_middle():
    video = np.zeros((1, 10, 20, 3), np.uint8)
    video[:, :, 5:15] = 200  # the middle half of the width
    out = video_ops.resize_and_center_crop(video, 10, 10)
    assert out.shape == (1, 10, 10, 3)
    assert np.all(out[:, :, 1:-1] == 200)


def test_fit_clip_takes_every_kth_frame_and_refuses_bad_rates():
    video = np.arange(16, dtype=np.uint8)[:, None, None, None] * np.ones((1, 4, 4, 3), np.uint8)
    out = video_ops.fit_clip(video, 24.0, 4, 2, 2, 6.0, start=3)
    assert np.array_equal(out[:, 0, 0, 0], [3, 7, 11, 15])
    with pytest.raises(ValueError, match="whole multiple"):
        video_ops.fit_clip(video, 24.0, 4, 4, 4, 10.0, start=0)
    with pytest.raises(ValueError, match="too short"):
        video_ops.fit_clip(video, 24.0, 5, 4, 4, 6.0, start=0)
    with pytest.raises(ValueError, match="prepare the dataset at this size"):
        video_ops.fit_frames(video, 8, 8)


def test_cut_clips_picks_the_frame_showing_at_each_time():
    frames = np.arange(10, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)
    times = np.arange(10) / 10.0  # 10 fps source
    clips = cut_clips(frames, times, length=3, fps=4.0, max_clips=2)
    # Output times 0, .25, .5 then .75, 1.0 (past the last frame at .9): one clip only.
    assert len(clips) == 1
    assert list(clips[0][:, 0, 0, 0]) == [0, 2, 5]
    assert cut_clips(frames[:1], times[:1], length=2, fps=4.0, max_clips=1) == []


def test_caption_from_folder_follows_ucf101_names():
    assert caption_from_folder("ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi") == "apply eye makeup"
    assert caption_from_folder("playing_guitar/clip_003") == "playing guitar"
    assert caption_from_folder("sunset-timelapse.mp4") == "sunset timelapse"
