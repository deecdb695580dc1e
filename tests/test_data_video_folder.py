"""video_folder: user videos (mp4, gif, folders of frames) round trip through array_record;
bad files are skipped, named and counted; precomputed text embeddings reach the batches."""

import logging
import os
import runpy

import imageio.v2
import imageio.v3 as iio
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from imagen_video_jax.config import bundled_config_file
from imagen_video_jax.data import make_train_iterator
from imagen_video_jax.data.video_folder import VideoFolder, VideoFolderConfig

SOURCE_FPS = 10.0
TEXT_LENGTH, TEXT_WIDTH = 5, 3


def _smooth_video(frames: int, height: int, width: int) -> np.ndarray:
    """A colour ramp sliding right one pixel per frame: easy on lossy codecs."""
    t = np.arange(frames)[:, None, None]
    y = np.arange(height)[None, :, None]
    x = np.arange(width)[None, None, :]
    red = 128 + 100 * np.sin((x - t) / 6.0) + 0 * y
    green = 128 + 100 * np.cos(y / 7.0) + 0 * x + 0 * t
    blue = np.broadcast_to(64 + 2 * t, red.shape)
    return np.stack([red, np.broadcast_to(green, red.shape), blue], -1).astype(np.uint8)


def _few_colour_video(frames: int, size: int) -> np.ndarray:
    """Frames of a few flat colours (exact in a GIF palette), a square moving right."""
    video = np.zeros((frames, size, size, 3), np.uint8)
    video[..., 2] = 80
    for t in range(frames):
        video[t, 8:20, 2 + 2 * t : 14 + 2 * t] = (250, 200, 0)
    return video


def fake_embed(captions):
    """A stand-in text encoder: token j of a caption holds (len(caption), j, word count)."""
    emb = np.zeros((len(captions), TEXT_LENGTH, TEXT_WIDTH), np.float32)
    mask = np.zeros((len(captions), TEXT_LENGTH), bool)
    for i, caption in enumerate(captions):
        words = min(len(caption.split()), TEXT_LENGTH)
        emb[i, :, 0] = len(caption)
        emb[i, :, 1] = np.arange(TEXT_LENGTH)
        emb[i, :, 2] = words
        mask[i, :words] = True
    return emb, mask


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    (root / "Walking").mkdir()
    (root / "Jumping" / "frames_clip").mkdir(parents=True)
    mp4 = _smooth_video(20, 32, 48)
    writer = imageio.v2.get_writer(
        root / "Walking" / "a.mp4", fps=SOURCE_FPS, codec="libx264", quality=10
    )
    for frame in mp4:
        writer.append_data(frame)
    writer.close()
    gif = _few_colour_video(8, 32)
    iio.imwrite(root / "Jumping" / "b.gif", gif, duration=100, loop=0)
    for t, frame in enumerate(gif):
        iio.imwrite(root / "Jumping" / "frames_clip" / f"{t:03d}.png", frame)
    (root / "Walking" / "broken.mp4").write_bytes(b"\x00not a video" * 50)
    iio.imwrite(root / "Jumping" / "still.gif", gif[:1])
    captions = root / "captions.csv"
    captions.write_text(
        "path,caption\n"
        "Walking/a.mp4,a ramp of colours sliding\n"
        "Jumping/b.gif,a yellow box moving right\n"
        "Jumping/frames_clip,a yellow box in frames\n"
        "Walking/broken.mp4,never read\n"
        "Jumping/still.gif,a single frame\n"
    )
    return {"root": str(root), "captions": str(captions), "mp4": mp4, "gif": gif}


@pytest.fixture(scope="module")
def prepared(videos, tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("data"))
    config = VideoFolderConfig(
        name="mine",
        root=videos["root"],
        captions=videos["captions"],
        frames=4,
        height=32,
        width=32,
        fps=5.0,
        clips_per_video=2,
        frames_fps=SOURCE_FPS,
    )
    builder = VideoFolder(
        config=config, data_dir=data_dir, file_format="array_record", embed_fn=fake_embed
    )
    logger = logging.getLogger("imagen_video_jax.data.video_folder")
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    try:
        builder.download_and_prepare()
    finally:
        logger.removeHandler(handler)
    return {"data_dir": data_dir, "builder": builder, "warnings": [r.getMessage() for r in records]}


def _by_path(source):
    out = {}
    for i in range(len(source)):
        record = source[i]
        out.setdefault(record["path"].decode(), []).append(record)
    return out


def test_clips_match_the_source_pixels(videos, prepared):
    source = tfds.data_source("video_folder/mine", data_dir=prepared["data_dir"], split="train")
    clips = _by_path(source)
    assert sorted(clips) == ["Jumping/b.gif", "Jumping/frames_clip", "Walking/a.mp4"]
    # 10 fps source, 5 fps clips: every other frame; the 48-wide mp4 is centre-cropped to 32.
    mp4_clips = clips["Walking/a.mp4"]
    reader = imageio.v2.get_reader(
        os.path.join(videos["root"], "Walking", "a.mp4"), format="ffmpeg"
    )
    decoded = np.stack(list(reader.iter_data()))
    reader.close()
    assert len(mp4_clips) == 2
    for number, record in enumerate(mp4_clips):
        frames = slice(8 * number, 8 * number + 8, 2)
        assert record["video"].shape == (4, 32, 32, 3)
        assert np.array_equal(record["video"], decoded[frames, :, 8:40])
        # The codec itself (yuv420p) costs a few levels against the pixels written.
        error = np.abs(record["video"] - videos["mp4"][frames, :, 8:40].astype(np.float64))
        assert error.mean() < 5.0 and error.max() < 24
        assert record["caption"].decode() == "a ramp of colours sliding"
    # 8 frames of a 10 fps GIF hold one 4-frame clip at 5 fps (a second would need 1.4 s).
    for path in ("Jumping/b.gif", "Jumping/frames_clip"):
        (record,) = clips[path]
        assert np.array_equal(record["video"], videos["gif"][[0, 2, 4, 6]])
        assert record["fps"] == 5.0


def test_bad_files_are_skipped_named_and_counted(prepared):
    summary = prepared["builder"].summary
    assert [path for path, _ in summary.skipped] == ["Jumping/still.gif", "Walking/broken.mp4"]
    reasons = dict(summary.skipped)
    assert reasons["Jumping/still.gif"].startswith("too short")
    assert reasons["Walking/broken.mp4"].startswith("cannot decode")
    assert summary.written == {"train": 4}
    for path in ("Jumping/still.gif", "Walking/broken.mp4"):
        assert any(path in message for message in prepared["warnings"])
    assert "videos skipped: 2" in str(summary)


def test_text_embeddings_are_stored_per_caption(prepared):
    source = tfds.data_source("video_folder/mine", data_dir=prepared["data_dir"], split="train")
    for i in range(len(source)):
        record = source[i]
        emb, mask = fake_embed([record["caption"].decode()])
        np.testing.assert_array_equal(record["text_emb"], emb[0])
        np.testing.assert_array_equal(record["text_mask"], mask[0])


def test_folder_names_caption_ucf101_layout(videos, tmp_path):
    config = VideoFolderConfig(
        name="ucf", root=videos["root"], frames=2, height=16, width=16, fps=5.0
    )
    builder = VideoFolder(config=config, data_dir=str(tmp_path), file_format="array_record")
    builder.download_and_prepare()
    source = tfds.data_source("video_folder/ucf", data_dir=str(tmp_path), split="train")
    captions = {
        source[i]["path"].decode(): source[i]["caption"].decode() for i in range(len(source))
    }
    assert captions == {
        "Jumping/b.gif": "jumping",
        "Jumping/frames_clip": "jumping",
        "Walking/a.mp4": "walking",
    }


def _config(data_dir: str, stage: str, **data) -> ml_collections.ConfigDict:
    """A tiny stage reading the prepared folder; these clips are 5 fps, so the stage is too."""
    module = runpy.run_path(str(bundled_config_file("imagen_video")))
    config = ml_collections.ConfigDict(
        {
            "stage": module["stage_config"](stage, "tiny"),
            "data": module["data_config"](stage, "tiny"),
        }
    )
    config.stage.fps = 5.0
    config.data.update(
        {"dataset": "video_folder", "source": "tfds", "tfds_config": "mine", "data_dir": data_dir}
    )
    config.data.update(data)
    return config


def test_train_batches_carry_text_embeddings(prepared):
    # tiny tsr1 makes 4 x 8 x 8 clips.
    config = _config(prepared["data_dir"], "tsr1", batch_size=2)
    batch = next(make_train_iterator(config, process_index=0, process_count=1))
    assert batch["video"].shape == (2, 4, 8, 8, 3)
    assert batch["cond"].shape == (2, 2, 8, 8, 3)
    assert batch["text_emb"].shape == (2, TEXT_LENGTH, TEXT_WIDTH)
    for caption, emb in zip(batch["caption"], batch["text_emb"]):
        np.testing.assert_array_equal(emb, fake_embed([str(caption)])[0][0])


def test_image_packs_are_frames_of_clips_with_the_same_caption(prepared):
    # tiny base makes 2 x 8 x 8 clips: stored 32 x 32 frames are box-downsampled by 4.
    config = _config(prepared["data_dir"], "base", joint="pack", image_ratio=1.0, batch_size=4)
    batch = next(make_train_iterator(config, process_index=0, process_count=1))
    source = tfds.data_source("video_folder/mine", data_dir=prepared["data_dir"], split="train")
    frames = {}
    for i in range(len(source)):
        record = source[i]
        small = record["video"].astype(np.float64).reshape(4, 8, 4, 8, 4, 3).mean(axis=(2, 4))
        frames.setdefault(record["caption"].decode(), []).extend(small)
    assert batch["frame_mask"].all()
    for video, caption in zip(batch["video"], batch["caption"]):
        for frame in video:
            assert min(np.abs(frame - f).max() for f in frames[str(caption)]) <= 0.5
