"""`imagen-video sample --extend-to N` (VDM autoregressive extension of the base stage) and
`imagen-video sample --long --frames N` (NUWA-XL diffusion over diffusion) on tiny random models
saved in the test: exact frame counts in the files, the extended video starts with the plain
sample of the same seed, and user mistakes get one clear error before anything compiles."""

import flax.linen as nn
import imageio.v2 as imageio
import jax
import numpy as np
import pytest

from imagen_video_jax import cli
from imagen_video_jax.cascade import Cascade
from imagen_video_jax.cascade.cli import extend_in_batches
from imagen_video_jax.config import load_config
from imagen_video_jax.long_video import LongVideoModel
from imagen_video_jax.models import VideoUNet, example_inputs

PROMPTS = ["a handwritten 3 bouncing around", "a handwritten 8 bouncing around"]
WINDOW, SIDE = 4, 8
LONG_L, LONG_DEPTH = 4, 2  # (L-1)^m + 1 = 10 frames at most
pytestmark = pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")  # ffmpeg reads


@pytest.fixture(scope="module")
def vdm_dir(tmp_path_factory):
    """A tiny unconditional VDM model (one U-Net level with temporal attention; 4-frame 8x8
    windows, 2 DDIM steps, 2 context frames), random weights, saved as the one-stage cascade
    that training writes."""
    config = load_config(
        "configs/vdm.py:size=tiny,cond=none,images=0",
        [
            f"stage.frames={WINDOW}",
            f"stage.height={SIDE}",
            f"stage.width={SIDE}",
            "model.channel_mult=(1,)",
            "model.num_res_blocks=(1,)",
            "model.spatial_attention=(False,)",
            "model.cross_attention=(False,)",
            "model.temporal_mixing=('attention',)",
            "model.dtype='float32'",
            "sample.num_steps=2",
            "sample.context_frames=2",
        ],
    )
    folder = tmp_path_factory.mktemp("vdm")
    Cascade.from_configs([config], seed=3).save(folder, dtype="float32")
    return folder


@pytest.fixture(scope="module")
def long_workdir(tmp_path_factory):
    """A tiny pixel-space MTD model without text (L=4, depth 2, 8x8, 2 steps), random weights,
    saved where launch/nuwa_xl_long_video.py keeps it: <workdir>/model."""
    config = load_config(
        "configs/nuwa_xl.py:size=tiny,space=pixel",
        [
            "model.use_text=False",
            "model.cross_attention=(False, False)",
            "model.spatial_attention=(False, False)",
            f"data.height={SIDE}",
            f"data.width={SIDE}",
            f"long_video.frames_per_call={LONG_L}",
            f"long_video.depth={LONG_DEPTH}",
            "sample.num_steps=2",
        ],
    )
    model = VideoUNet.from_config(config.model)
    inputs = example_inputs(config.model, frames=LONG_L, height=SIDE, width=SIDE)
    z, logsnr = inputs.pop("z"), inputs.pop("logsnr")
    abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), z, logsnr, **inputs))
    rng = np.random.default_rng(0)
    params = jax.tree.map(
        lambda leaf: rng.normal(0.0, 0.2, leaf.shape).astype(np.float32),
        nn.meta.unbox(abstract["params"]),
    )
    workdir = tmp_path_factory.mktemp("nuwa")
    LongVideoModel(config, params).save(workdir / "model")
    return workdir


def mp4_frames(path) -> int:
    return len(imageio.mimread(path, format="FFMPEG"))


def test_extension_starts_with_the_plain_sample_and_has_n_frames(vdm_dir, tmp_path, capsys):
    cascade = Cascade.from_checkpoints(vdm_dir)
    extended = extend_in_batches(
        cascade, PROMPTS, num_frames=7, batch_size=2, seed=5, progress=False
    )
    plain = cascade.sample(PROMPTS, seed=5, progress=False)
    assert extended.shape == (2, 7, SIDE, SIDE, 3) and extended.dtype == np.uint8
    np.testing.assert_array_equal(extended[:, :WINDOW], plain)
    # every prompt continues with its own noise (seed + i), not a copy of another's
    assert np.abs(extended[0, WINDOW:].astype(int) - extended[1, WINDOW:]).max() > 0

    out = tmp_path / "long.mp4"
    argv = ["sample", "--checkpoints", str(vdm_dir), "--out", str(out), "--seed", "5"]
    argv += ["--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--batch-size", "2"]
    argv += ["--extend-to", "7", "--extend-mode", "reconstruction", "--no-progress"]
    assert cli.main(argv) == 0
    assert [mp4_frames(tmp_path / f"long_{i:03d}.mp4") for i in range(2)] == [7, 7]
    assert (tmp_path / "long.png").is_file() and "wrote" in capsys.readouterr().out


def test_long_writes_exactly_n_frames(long_workdir, tmp_path, capsys):
    story = tmp_path / "story.txt"
    story.write_text("a handwritten 1 bouncing around\na handwritten 2 bouncing around\n")
    out = tmp_path / "story.mp4"
    argv = ["sample", "--long", "--frames", "9", "--checkpoints", str(long_workdir)]
    argv += ["--prompts-file", str(story), "--out", str(out), "--no-progress"]
    assert cli.main(argv) == 0
    assert mp4_frames(out) == 9
    assert sorted(p.name for p in tmp_path.glob("story.*")) == [
        "story.gif",
        "story.mp4",
        "story.png",
        "story.txt",
    ]
    assert "model calls per depth [1, 3]" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--long", "--frames", "11"], "nearest valid count: 10 (full lattices by depth: [4, 10])"),
        (["--long", "--frames", "1"], "nearest valid count: 2"),
        (["--long"], "--long needs --frames N"),
        (["--long", "--frames", "9", "--extend-to", "9"], "choose one"),
        (["--long", "--frames", "9", "--steps", "base=2"], "--steps takes one value"),
    ],
)
def test_long_mistakes(long_workdir, capsys, options, message):
    argv = ["sample", "--checkpoints", str(long_workdir), "--prompt", "x", *options]
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--extend-to", "3"], "--extend-to 3 is below the 4 frames the base stage 'base' makes"),
        (["--extend-to", "8", "--context-frames", "4"], "--context-frames must be in [1, 3]"),
        (["--extend-to", "8", "--reconstruction-weight", "-1"], "w_r must be >= 0"),
        (
            ["--extend-to", "8", "--extend-mode", "replacement", "--guidance-weight", "3"],
            "--reconstruction-weight applies to --extend-mode reconstruction only",
        ),
        (["--context-frames", "2"], "--context-frames only apply with --extend-to N"),
        (["--extend-to", "8", "--stop-after", "ssr1"], "runs no super-resolution stage"),
        (["--long", "--frames", "5"], "holds cascade stages, not a long-video model"),
    ],
)
def test_extension_mistakes(vdm_dir, capsys, options, message):
    argv = ["sample", "--checkpoints", str(vdm_dir), "--prompt", "x", *options]
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err


def test_model_kinds_are_told_apart(long_workdir, tmp_path, capsys):
    argv = ["sample", "--checkpoints", str(long_workdir), "--prompt", "x"]
    assert cli.main([*argv, "--extend-to", "8"]) == 2
    assert "long-video model, not cascade stages: sample it with --long" in capsys.readouterr().err
    argv = ["sample", "--checkpoints", str(tmp_path), "--prompt", "x", "--long", "--frames", "5"]
    assert cli.main(argv) == 2
    assert "no long-video model in" in capsys.readouterr().err
