"""Grain pipelines: per-stage pairs for every cascade stage, joint image-video batches,
determinism, exact restore, and process shards."""

import runpy

import ml_collections
import numpy as np
import pytest

from imagen_video_jax import cli
from imagen_video_jax.config import bundled_config_file
from imagen_video_jax.data import (
    DIRECTION_STEPS,
    make_eval_source,
    make_train_iterator,
    parse_caption_pairs,
)
from imagen_video_jax.data.moving_digits import MovingDigitsSpec, render, render_image
from imagen_video_jax.stages import cascade_stages

CONFIGS = runpy.run_path(str(bundled_config_file("imagen_video")))


def stage_config(stage: str, size: str, **data) -> ml_collections.ConfigDict:
    """The stage and data parts of configs/imagen_video.py, with data overrides (in-process)."""
    config = ml_collections.ConfigDict(
        {"stage": CONFIGS["stage_config"](stage, size), "data": CONFIGS["data_config"](stage, size)}
    )
    config.data.update({"num_workers": 0, **data})
    return config


def iterator(config, **kwargs):
    return make_train_iterator(config, process_index=0, process_count=1, **kwargs)


def block_mean(video: np.ndarray, factor: int) -> np.ndarray:
    """Float64 reference of box downsampling [..., H, W, C]."""
    *lead, h, w, c = video.shape
    blocks = video.astype(np.float64).reshape(*lead, h // factor, factor, w // factor, factor, c)
    return blocks.mean(axis=(-4, -2))


def centre_of_mass(grey: np.ndarray) -> np.ndarray:
    mass = grey.astype(np.float64)
    total = mass.sum(axis=(1, 2))
    x = (mass * np.arange(mass.shape[2])[None, None, :]).sum(axis=(1, 2)) / total
    y = (mass * np.arange(mass.shape[1])[None, :, None]).sum(axis=(1, 2)) / total
    return np.stack([x, y], axis=1)


@pytest.mark.parametrize("stage", list(cascade_stages("mini")))
def test_mini_cascade_stage_pairs(stage):
    spec = cascade_stages("mini")[stage]
    config = stage_config(stage, "mini", batch_size=1, joint="none", num_workers=0)
    config.data.moving_digits.two_digit_prob = 0.0
    batch = next(iterator(config))
    video = batch["video"]
    assert video.shape == (1, spec.frames, spec.height, spec.width, 3) and video.dtype == np.uint8
    assert not batch["frame_mask"].any() and batch["frame_mask"].shape == (1, spec.frames)
    if spec.role == "base":
        assert "cond" not in batch
    else:
        assert batch["cond"].shape == (1, *spec.input_shape, 3)
        reference = block_mean(video[:, :: spec.temporal_factor], spec.spatial_factor)
        assert np.max(np.abs(batch["cond"] - reference)) <= 0.5
    # Motion is rendered in seconds: the digit's speed at this stage's fps is 60-100% of the
    # configured canvas fraction per second, whatever the frame count and size.
    ((_, direction),) = parse_caption_pairs(str(batch["caption"][0]))
    com = centre_of_mass(video[0, ..., 0])
    distance = np.abs(com[-1] - com[0]).max() * (
        np.sqrt(2) if 0 not in DIRECTION_STEPS[direction] else 1
    )
    speed = distance / ((spec.frames - 1) / spec.fps) / spec.height
    assert 0.6 * 0.3 - 0.02 <= speed <= 0.3 + 0.02


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """moving_digits prepared at the tiny cascade's 16 x 64 x 64, 24 fps."""
    root = str(tmp_path_factory.mktemp("stored"))
    args = ["prepare", "moving_digits", "--data-dir", root, "--frames", "16", "--size", "64"]
    args += ["--fps", "24", "--num-train", "20", "--num-test", "10", "--num-images", "20"]
    assert cli.main(args) == 0
    return root


@pytest.mark.parametrize("stage", ["base", "tsr1", "ssr1", "ssr2", "tsr2", "tsr3"])
def test_stored_clips_make_each_stage_that_fits(stored, stage):
    import tensorflow_datasets as tfds

    spec = cascade_stages("tiny")[stage]
    config = stage_config(
        stage, "tiny", source="tfds", tfds_config="16x64x64_24fps", data_dir=stored
    )
    clip = tfds.data_source("moving_digits/16x64x64_24fps", data_dir=stored, split="test")[3][
        "video"
    ]
    stride = round(24 / spec.fps)
    expected = block_mean(clip[: (spec.frames - 1) * stride + 1 : stride], 64 // spec.height)
    evaluated = make_eval_source(config, "test")[3]
    assert np.max(np.abs(evaluated["video"] - expected)) <= 0.5
    assert evaluated["fps"] == spec.fps
    # Training targets start anywhere in the stored clip, at the same stride.
    train = tfds.data_source("moving_digits/16x64x64_24fps", data_dir=stored, split="train")
    config.data.update(joint="none", batch_size=2)
    batch = next(iterator(config))
    for video, index in zip(batch["video"], batch["index"]):
        source = train[int(index)]["video"]
        starts = range(16 - (spec.frames - 1) * stride)
        candidates = [
            block_mean(source[s::stride][: spec.frames], 64 // spec.height) for s in starts
        ]
        assert min(np.max(np.abs(video - c)) for c in candidates) <= 0.5


def test_stored_clips_too_small_for_a_stage_raise(stored):
    config = stage_config(
        "ssr3", "tiny", source="tfds", tfds_config="16x64x64_24fps", data_dir=stored
    )
    with pytest.raises(ValueError, match="prepare the dataset at this size or larger"):
        make_eval_source(config, "test")[0]


def test_missing_prepared_dataset_names_the_command(tmp_path):
    config = stage_config("base", "tiny", source="tfds", data_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="imagen-video prepare moving_digits"):
        iterator(config)


def _digit_images(config) -> dict[int, list[np.ndarray]]:
    """Every image of the procedural images split, by digit."""
    stage = config.stage
    spec = MovingDigitsSpec(
        stage.frames, stage.height, stage.width, stage.fps, **config.data.moving_digits.to_dict()
    )
    images = {d: [] for d in range(10)}
    for index in range(config.data.num_images):
        images[index % 10].append(render_image(spec, index)["video"][0])
    return images


def _is_one_of(frame: np.ndarray, candidates: list[np.ndarray]) -> bool:
    return any(np.array_equal(frame, c) for c in candidates)


def test_vdm_joint_appends_images_of_the_clip_digit():
    config = stage_config("ssr1", "mini", joint="vdm", num_appended_images=3, num_images=40)
    config.data.batch_size = 4
    batch = next(iterator(config))
    frames = 8 + 3
    assert batch["video"].shape == (4, frames, 32, 32, 3)
    assert batch["cond"].shape == (4, frames, 16, 16, 3)
    assert np.max(np.abs(batch["cond"] - block_mean(batch["video"], 2))) <= 0.5
    assert np.array_equal(batch["frame_mask"], np.tile(np.arange(frames) >= 8, (4, 1)))
    images = _digit_images(config)
    for video, caption in zip(batch["video"], batch["caption"]):
        digit = parse_caption_pairs(str(caption))[0][0]
        assert all(_is_one_of(frame, images[digit]) for frame in video[8:])


def test_pack_joint_replaces_clips_with_captioned_image_packs():
    config = stage_config(
        "base", "mini", joint="pack", image_ratio=1.0, num_images=40, batch_size=4
    )
    batch = next(iterator(config))
    assert batch["frame_mask"].all()
    images = _digit_images(config)
    for video, caption in zip(batch["video"], batch["caption"]):
        ((digit, motion),) = parse_caption_pairs(str(caption))
        assert motion is None
        assert all(_is_one_of(frame, images[digit]) for frame in video)
    config.data.update(image_ratio=0.5, batch_size=32)
    mask = next(iterator(config))["frame_mask"]
    assert np.all(mask.all(axis=1) | ~mask.any(axis=1))  # each example: all images or a clip
    assert 4 <= mask.all(axis=1).sum() <= 28


def test_tsr_stages_refuse_joint_training():
    with pytest.raises(ValueError, match="joint image-video training needs a base or SSR stage"):
        iterator(stage_config("tsr1", "mini", joint="pack"))


def test_crops_keep_conditioning_aligned():
    config = stage_config("ssr2", "mini", joint="none", crop_height=32, crop_width=64, batch_size=2)
    batch = next(iterator(config))
    assert batch["video"].shape == (2, 8, 32, 64, 3)
    assert np.max(np.abs(batch["cond"] - block_mean(batch["video"], 4))) <= 0.5


def _take(it, count):
    return [next(it) for _ in range(count)]


def _assert_same(batches_a, batches_b):
    for a, b in zip(batches_a, batches_b, strict=True):
        assert sorted(a) == sorted(b)
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def test_same_seed_same_batches_and_exact_restore():
    config = stage_config("ssr1", "tiny", batch_size=4, num_train_clips=50, image_ratio=0.5)
    _assert_same(_take(iterator(config), 3), _take(iterator(config), 3))
    other = _take(iterator(config, seed=1), 1)[0]
    assert not np.array_equal(other["index"], _take(iterator(config), 1)[0]["index"])

    first = iterator(config)
    _take(first, 14)  # past the first epoch (12 batches of 4 from 50 clips)
    state = first.get_state()
    following = _take(first, 4)
    restored = iterator(config)
    restored.set_state(state)
    _assert_same(following, _take(restored, 4))


def test_two_processes_read_disjoint_shards_covering_the_data():
    config = stage_config("base", "tiny", batch_size=4, num_train_clips=24, joint="none")
    seen = []
    for process in range(2):
        it = make_train_iterator(config, process_index=process, process_count=2)
        batches = _take(it, 6)  # one epoch of this process's 12 records, 2 per batch
        assert all(len(b["index"]) == 2 for b in batches)
        seen.append(np.concatenate([b["index"] for b in batches]))
    assert len(set(seen[0])) == 12 and len(set(seen[1])) == 12
    assert not set(seen[0]) & set(seen[1])
    assert set(seen[0]) | set(seen[1]) == set(range(24))


def test_batch_must_split_evenly_over_processes():
    with pytest.raises(ValueError, match="not divisible by 3 processes"):
        make_train_iterator(
            stage_config("base", "tiny", batch_size=4), process_index=0, process_count=3
        )


@pytest.mark.slow
def test_worker_processes_are_deterministic_and_restorable():
    config = stage_config("ssr1", "tiny", batch_size=4, num_workers=1)
    first = iterator(config)
    _take(first, 2)
    state = first.get_state()
    following = _take(first, 3)
    restored = iterator(config)
    restored.set_state(state)
    _assert_same(following, _take(restored, 3))


def test_eval_source_gives_the_same_held_out_clips():
    config = stage_config("tsr1", "mini", num_test_clips=20)
    source = make_eval_source(config, "test")
    assert len(source) == 20
    batch = source.batch(range(4))
    assert batch["video"].shape == (4, 8, 16, 16, 3)
    np.testing.assert_array_equal(batch["video"][2], source[2]["video"])
    assert source[2]["fps"] == 6.0
    spec = MovingDigitsSpec(8, 16, 16, 6.0, **config.data.moving_digits.to_dict())
    made = render(spec, "test", 5)
    np.testing.assert_array_equal(source[5]["video"], made["video"])
    assert source[5]["caption"] == made["caption"]


def test_prepare_with_a_stage_config_writes_what_that_stage_reads(tmp_path):
    spec = bundled_config_file("imagen_video")
    args = ["prepare", "moving_digits", "--config", f"{spec}:stage=ssr1,size=tiny"]
    args += ["--data-dir", str(tmp_path), "--num-train", "10", "--num-test", "10"]
    assert cli.main([*args, "--num-images", "10", "--set", "two_digit_prob=0.0"]) == 0
    config = stage_config("ssr1", "tiny", source="tfds", data_dir=str(tmp_path), batch_size=2)
    batch = next(iterator(config))
    assert batch["video"].shape == (2, 4, 16, 16, 3)
    # --set two_digit_prob=0.0 reached the renderer: every caption names one digit.
    assert all(len(parse_caption_pairs(str(c))) == 1 for c in batch["caption"])
