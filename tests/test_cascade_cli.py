"""`imagen-video sample` and `imagen-video demo` on a tiny saved cascade, and the video files
(MP4, GIF, PNG contact sheet) they write."""

import argparse
import json

import imageio.v2 as imageio
import numpy as np
import pytest
from PIL import Image

from imagen_video_jax import cli
from imagen_video_jax.cascade import Cascade, io
from imagen_video_jax.cascade.cli import per_stage_value
from imagen_video_jax.cascade.demo import DEFAULT_PROMPT, bundled_cascade_dir, demo_defaults

OVERRIDES = ["model.dtype=float32"]


@pytest.fixture(scope="module")
def cascade_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cascade")
    Cascade.from_random_init("tiny", stop_after="tsr1", overrides=OVERRIDES).save(
        folder, dtype="float32"
    )
    return folder


def test_per_stage_values_parse():
    assert per_stage_value("8", int) == 8
    assert per_stage_value("base=32,tsr1=8", int) == {"base": 32, "tsr1": 8}
    with pytest.raises(argparse.ArgumentTypeError, match="STAGE=VALUE"):
        per_stage_value("bsae=3", int)


@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")  # imageio reads through ffmpeg
def test_sample_and_demo_write_videos_and_sheets(cascade_dir, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a handwritten 3 moving right\n\n")
    out = tmp_path / "out" / "clip.mp4"
    argv = ["sample", "--checkpoints", str(cascade_dir), "--prompt", "a handwritten 7 moving up"]
    argv += ["--prompts-file", str(prompts), "--out", str(out), "--steps", "2", "--no-progress"]
    argv += ["--batch-size", "1", "--save-intermediates", "--guidance", "base=2,tsr1=1"]
    assert cli.main(argv) == 0
    names = sorted(p.name for p in out.parent.iterdir())
    expected = [f"clip_{i:03d}.{ext}" for ext in ("gif", "mp4") for i in range(2)]
    expected += [f"clip_base_{i:03d}.{ext}" for ext in ("gif", "mp4") for i in range(2)]
    assert names == sorted([*expected, "clip.png", "clip_base.png"])
    # tsr1 makes 4 frames of 8x8, enlarged by 32 to 256x256 in the files.
    frames = imageio.mimread(out.parent / "clip_000.mp4", format="FFMPEG")
    assert len(frames) == 4 and frames[0].shape == (256, 256, 3)
    gif = Image.open(out.parent / "clip_001.gif")
    assert gif.n_frames == 4 and gif.size == (256, 256)
    assert len(imageio.mimread(out.parent / "clip_base_000.mp4", format="FFMPEG")) == 2
    assert "wrote" in capsys.readouterr().out

    demo_dir = tmp_path / "demo"
    argv = ["demo", "--cascade", str(cascade_dir), "--out-dir", str(demo_dir), "--no-progress"]
    assert cli.main([*argv, "--steps", "2", "--guidance", "base=2,tsr1=1"]) == 0
    assert sorted(p.name for p in demo_dir.iterdir()) == ["demo.gif", "demo.mp4", "demo.png"]
    assert DEFAULT_PROMPT in capsys.readouterr().out


def test_sample_reports_user_mistakes(cascade_dir, tmp_path, capsys):
    assert cli.main(["sample", "--checkpoints", str(cascade_dir)]) == 2
    assert "no prompts" in capsys.readouterr().err
    argv = ["sample", "--checkpoints", str(tmp_path), "--prompt", "a handwritten 1"]
    assert cli.main(argv) == 2
    assert "expected subfolders named base" in capsys.readouterr().err


def test_demo_without_bundled_weights_says_how_to_make_them(tmp_path, capsys):
    assert cli.main(["demo", "--cascade", str(tmp_path / "missing")]) == 1
    assert "launch/train_mini_cascade.sh" in capsys.readouterr().err


def test_bundled_weights_stay_within_the_package_budget():
    """All bundled weights (demo cascade and caption classifier) together: at most 30 MB."""
    assets = bundled_cascade_dir().parent
    total = sum(f.stat().st_size for f in assets.rglob("*") if f.is_file())
    assert 0 < total <= 30e6
    stages = Cascade.from_checkpoints(bundled_cascade_dir()).stage_names
    assert stages == ["base", "tsr1", "ssr1", "ssr2", "tsr2", "tsr3", "ssr3"]


def test_demo_defaults_come_from_demo_json_or_the_size_rule(cascade_dir, tmp_path):
    specs = [stage.spec for stage in Cascade.from_checkpoints(cascade_dir).stages.values()]
    rule = demo_defaults(cascade_dir, specs, {"base": False, "tsr1": True})
    assert rule == {"prompt": DEFAULT_PROMPT, "stop_after": "tsr1", "num_steps": {"base": 32}}
    (tmp_path / "demo.json").write_text(json.dumps({"stop_after": "base", "prompt": "x"}))
    assert demo_defaults(tmp_path, specs, {}) == {"prompt": "x", "stop_after": "base"}


def test_contact_sheet_lays_out_captioned_rows():
    videos = [np.full((20, 8, 8, 3), 255 * (i % 2), np.uint8) for i in range(2)]
    sheet = np.asarray(io.contact_sheet(videos, ["first", "second"], title="title"))
    # Frames enlarged 8x to 64x64; 20 frames shown as 16, evenly spaced.
    assert sheet.shape[1] == 4 + 16 * (64 + 4)
    black_rows = np.flatnonzero((sheet[:, 4:68] == 0).all(axis=(1, 2)))
    assert len(black_rows) == 64
    text_band = sheet[: black_rows[0] - 4]
    assert (text_band < 128).any()  # the title and caption are drawn


def test_videos_must_be_uint8_frames():
    with pytest.raises(ValueError, match=r"uint8 video \[frames, height, width, 3\]"):
        io.write_gif("x.gif", np.zeros((2, 8, 8, 3), np.float32), fps=3)
    assert io.enlarge(np.zeros((1, 3, 5, 3), np.uint8), 256).shape == (1, 258, 430, 3)
