"""Caption classifier: input resampling, prompt parsing, weights round trip, and the bundled
classifier's accuracy on held-out real moving-digits clips."""

import dataclasses

import jax
import numpy as np
import pytest

from imagen_video_jax.data.captions import MOTIONS, digits_caption, parse_caption
from imagen_video_jax.data.moving_digits import MovingDigitsSpec, render_clip
from imagen_video_jax.eval.caption_classifier import (
    TrainedClassifier,
    caption_accuracy,
    classifier_inputs,
    load_classifier,
    prompt_labels,
)
from imagen_video_jax.eval.classifier_training import render_labelled_clips


def test_inputs_at_the_classifier_size_are_gray_and_scaled():
    videos = np.random.default_rng(0).integers(0, 256, (2, 4, 16, 16, 3), dtype=np.uint8)
    expected = videos.astype(np.float64).mean(-1, keepdims=True) / 127.5 - 1.0
    got = np.asarray(classifier_inputs(videos, frames=4, size=16))
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_inputs_take_frames_evenly_from_first_to_last_and_resize():
    levels = np.arange(32, dtype=np.uint8) * 8  # frame t has gray level 8 t
    videos = levels[None, :, None, None, None] * np.ones((1, 32, 64, 48, 3), np.uint8)
    got = np.asarray(classifier_inputs(videos, frames=4, size=16))
    assert got.shape == (1, 4, 16, 16, 1)
    picked = (np.array([0, 10, 21, 31]) * 8) / 127.5 - 1.0
    np.testing.assert_allclose(
        got[0, :, :, :, 0], picked[:, None, None] * np.ones((16, 16)), atol=1e-5
    )
    short = levels[None, :2, None, None, None] * np.ones((1, 2, 16, 16, 3), np.uint8)
    stretched = np.asarray(classifier_inputs(short, frames=4, size=16))[0, :, 0, 0, 0]
    np.testing.assert_allclose(stretched, np.array([0, 0, 8, 8]) / 127.5 - 1.0, atol=1e-6)


def test_prompt_labels_parse_digit_and_motion():
    digits, motions = prompt_labels(
        ["a handwritten 7 moving up and to the left", "a handwritten 0 bouncing around"]
    )
    np.testing.assert_array_equal(digits, [7, 0])
    np.testing.assert_array_equal(motions, [MOTIONS.index("up and to the left"), len(MOTIONS) - 1])


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ("a handwritten 7", "names no motion"),
        ("a handwritten 3 moving right and a handwritten 5 moving down", "one-digit caption"),
        ("a cat", "not a moving-digits caption"),
    ],
)
def test_prompt_labels_reject_other_prompts(prompt, message):
    with pytest.raises(ValueError, match=message):
        prompt_labels([prompt])


def test_rendered_labels_agree_with_captions():
    spec = MovingDigitsSpec(frames=4, height=16, width=16, fps=3.0)
    videos, digits, motions = render_labelled_clips(spec, "test", count=24, start=5)
    assert videos.shape == (24, 4, 16, 16, 3) and videos.dtype == np.uint8
    one_digit = dataclasses.replace(spec, two_digit_prob=0.0)
    for index, digit, motion in zip(range(5, 29), digits, motions):
        caption_digit, caption_motion = parse_caption(
            render_clip(one_digit, "test", index)["caption"]
        )
        assert (digit, MOTIONS[motion]) == (caption_digit, caption_motion)


def test_saved_weights_load_with_identical_predictions(tmp_path):
    bundled = load_classifier()
    classifier = TrainedClassifier(bundled.config, jax.tree.map(lambda a: a * 1.5, bundled.params))
    classifier.save(tmp_path / "clf.msgpack")
    loaded = load_classifier(tmp_path / "clf.msgpack")
    assert loaded.config == classifier.config
    jax.tree.map(np.testing.assert_array_equal, loaded.params, classifier.params)
    videos = np.random.default_rng(1).integers(0, 256, (5, 6, 20, 20, 3), dtype=np.uint8)
    for got, want in zip(loaded.predict(videos), classifier.predict(videos)):
        np.testing.assert_array_equal(got, want)


def test_missing_weights_name_the_file_and_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="train_caption_classifier"):
        load_classifier(tmp_path / "none.msgpack")


def test_caption_accuracy_needs_one_prompt_per_video():
    with pytest.raises(ValueError, match="3 videos but 2 prompts"):
        caption_accuracy(np.zeros((3, 4, 16, 16, 3), np.uint8), ["a", "b"])


@pytest.mark.parametrize("shape", [(4, 16, 16, 3.0), (16, 64, 64, 12.0)])
def test_bundled_classifier_reads_held_out_real_clips(shape):
    frames, height, width, fps = shape
    spec = MovingDigitsSpec(frames=frames, height=height, width=width, fps=fps)
    videos, digits, motions = render_labelled_clips(spec, "test", count=160, start=20000)
    prompts = [digits_caption([(d, MOTIONS[m])]) for d, m in zip(digits, motions)]
    assert caption_accuracy(videos, prompts) >= 0.95
    # Each video paired with the prompt of a clip with another digit and direction.
    assert caption_accuracy(videos, prompts[11:] + prompts[:11]) <= 0.05
