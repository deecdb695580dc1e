"""The `imagen-video` command line."""

import subprocess
import sys

from imagen_video_jax import cli


def test_help_lists_every_subcommand():
    out = subprocess.run(
        [sys.executable, "-m", "imagen_video_jax.cli", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for name in ("train", "distill", "sample", "eval", "prepare", "bench", "demo"):
        assert f"    {name} " in out


def test_unknown_command_fails():
    proc = subprocess.run(
        [sys.executable, "-m", "imagen_video_jax.cli", "frobnicate"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


def test_unbuilt_command_says_so(monkeypatch, capsys):
    monkeypatch.setitem(cli.COMMANDS, "demo", ("imagen_video_jax.not_a_module", "x"))
    assert cli.main(["demo"]) == 2
    assert "not built yet" in capsys.readouterr().err


def test_train_init_from_names_a_missing_or_empty_folder(tmp_path, capsys):
    config = ["train", "--config", "configs/imagen_video.py:stage=tsr1,size=tiny"]
    workdir = ["--workdir", str(tmp_path / "run"), "--multihost", "off"]
    assert cli.main([*config, *workdir, "--init-from", str(tmp_path / "nowhere")]) == 2
    assert f"--init-from folder {tmp_path / 'nowhere'} does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli.main([*config, *workdir, "--init-from", str(tmp_path / "empty")]) == 2
    assert "no --init-from checkpoint of stage 'tsr1'" in capsys.readouterr().err
