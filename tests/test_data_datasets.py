"""`imagen-video prepare moving_digits / photo_motion`: array_record datasets read without
TensorFlow, whose pixels show what the captions say."""

import importlib.util
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from sklearn.datasets import load_digits

from imagen_video_jax import cli
from imagen_video_jax.data import (
    DIRECTION_STEPS,
    DIRECTIONS,
    moving_digits,
    parse_caption_pairs,
    photo_motion,
)

FRAMES, SIZE, FPS = 8, 32, 6.0
CONFIG_NAME = "8x32x32_6fps"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("prepared")
    common = ["--data-dir", str(root), "--frames", str(FRAMES), "--size", str(SIZE)]
    common += ["--fps", str(FPS)]
    assert (
        cli.main(
            ["prepare", "moving_digits", *common, "--num-train", "160"]
            + ["--num-test", "80", "--num-images", "40"]
        )
        == 0
    )
    assert (
        cli.main(
            ["prepare", "photo_motion", *common, "--num-train", "26"]
            + ["--num-test", "16", "--num-images", "13"]
        )
        == 0
    )
    return str(root)


def test_tensorflow_is_absent():
    assert importlib.util.find_spec("tensorflow") is None
    with pytest.raises(ImportError):
        import tensorflow  # noqa: F401


def test_prepared_datasets_read_with_tfds_data_source(data_dir):
    digits = tfds.data_source(f"moving_digits/{CONFIG_NAME}", data_dir=data_dir)
    photos = tfds.data_source(f"photo_motion/{CONFIG_NAME}", data_dir=data_dir)
    assert {k: len(v) for k, v in digits.items()} == {"train": 160, "test": 80, "images": 40}
    assert {k: len(v) for k, v in photos.items()} == {"train": 26, "test": 16, "images": 13}
    clip, image = digits["train"][0], photos["images"][0]
    assert clip["video"].shape == (FRAMES, SIZE, SIZE, 3) and clip["video"].dtype == np.uint8
    assert image["video"].shape == (1, SIZE, SIZE, 3)
    assert clip["fps"] == FPS
    assert "tensorflow" not in sys.modules


def _centre_of_mass(frames: np.ndarray) -> np.ndarray:
    """(x, y) centre of mass [T, 2] of grey frames [T, H, W]."""
    mass = frames.astype(np.float64)
    total = mass.sum(axis=(1, 2))
    x = (mass * np.arange(mass.shape[2])[None, None, :]).sum(axis=(1, 2)) / total
    y = (mass * np.arange(mass.shape[1])[None, :, None]).sum(axis=(1, 2)) / total
    return np.stack([x, y], axis=1)


def _records(source):
    return [source[i] for i in range(len(source))]


def test_every_digit_moves_the_captioned_way(data_dir):
    digits = tfds.data_source(f"moving_digits/{CONFIG_NAME}", data_dir=data_dir)
    two_digit_clips = 0
    for split in ("train", "test"):
        for record in _records(digits[split]):
            pairs = parse_caption_pairs(record["caption"].decode())
            grey = record["video"][..., 0]
            # Two-digit clips put the first digit in the top band, the second in the bottom.
            bands = [grey] if len(pairs) == 1 else [grey[:, : SIZE // 2], grey[:, SIZE // 2 :]]
            two_digit_clips += len(pairs) == 2
            for (_, direction), band in zip(pairs, bands):
                steps = np.diff(_centre_of_mass(band), axis=0)
                expected = np.array(DIRECTION_STEPS[direction])
                for axis in range(2):
                    if expected[axis] == 0:
                        assert np.all(np.abs(steps[:, axis]) < 0.05)
                    else:
                        assert np.all(steps[:, axis] * expected[axis] > 0)
                        assert steps[:, axis].sum() * expected[axis] > 2.0  # pixels
    assert two_digit_clips > 20


def test_all_digits_and_directions_occur_and_sources_are_disjoint(data_dir):
    digits = tfds.data_source(f"moving_digits/{CONFIG_NAME}", data_dir=data_dir)
    labels = load_digits().target
    pairs = set()
    sources = {}
    for split in ("train", "test", "images"):
        sources[split] = set()
        for record in _records(digits[split]):
            caption_pairs = parse_caption_pairs(record["caption"].decode())
            if split == "train":
                pairs.add(caption_pairs[0])
            # Every recorded source scan shows the digit its caption names.
            assert list(labels[record["sources"]]) == [d for d, _ in caption_pairs]
            sources[split] |= set(record["sources"].tolist())
    assert pairs == {(d, m) for d in range(10) for m in DIRECTIONS}
    assert not sources["test"] & (sources["train"] | sources["images"])
    assert len(sources["test"]) > 50


def test_prepared_records_equal_the_procedural_source(data_dir):
    digits = tfds.data_source(f"moving_digits/{CONFIG_NAME}", data_dir=data_dir)
    spec = moving_digits.MovingDigitsSpec(FRAMES, SIZE, SIZE, FPS)
    for split, index in (("train", 0), ("train", 93), ("test", 17), ("images", 5)):
        stored = digits[split][index]
        made = moving_digits.render(spec, split, index)
        assert stored["index"] == index
        assert stored["caption"].decode() == made["caption"]
        assert np.array_equal(stored["video"], made["video"])


def test_bouncing_digits_turn_back():
    spec = moving_digits.MovingDigitsSpec(
        FRAMES, SIZE, SIZE, FPS, two_digit_prob=0.0, bounce_prob=1.0
    )
    for index in range(0, 80, 3):
        record = moving_digits.render_clip(spec, "train", index)
        ((digit, motion),) = parse_caption_pairs(record["caption"])
        assert (digit, motion) == (index % 10, "bouncing")
        heading = DIRECTION_STEPS[DIRECTIONS[(index // 10) % 8]]
        axis = 0 if heading[0] else 1
        steps = np.diff(_centre_of_mass(record["video"][..., 0]), axis=0)[:, axis]
        assert steps.max() > 0.5 and steps.min() < -0.5


def _horizontal_shift(first: np.ndarray, last: np.ndarray, max_shift: int = 8) -> int:
    """The integer x shift that best maps ``first`` onto ``last`` (content moving right > 0)."""
    a, b = first.astype(np.float64), last.astype(np.float64)
    errors = {
        s: np.mean(
            (a[:, max_shift - s : a.shape[1] - max_shift - s] - b[:, max_shift:-max_shift]) ** 2
        )
        for s in range(-max_shift, max_shift + 1)
    }
    return min(errors, key=errors.get)


def test_photo_motion_captions_and_pans(data_dir):
    photos = tfds.data_source(f"photo_motion/{CONFIG_NAME}", data_dir=data_dir)
    seen = {}
    for split in ("train", "test"):
        seen[split] = set()
        for record in _records(photos[split]):
            caption = record["caption"].decode()
            name, motion = record["photo"].decode(), record["motion"].decode()
            assert caption == f"a photo of {photo_motion.PHOTOS[name][1]}, {motion}"
            seen[split].add(name)
            if motion in ("panning left", "panning right"):
                shift = _horizontal_shift(record["video"][0], record["video"][FRAMES // 2])
                # Panning left moves the view left: the picture slides right.
                assert shift > 0 if motion == "panning left" else shift < 0
    assert seen["test"] == set(photo_motion.TEST_PHOTOS)
    assert not seen["train"] & seen["test"]
