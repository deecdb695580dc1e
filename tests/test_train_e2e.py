"""The real thing at tiny size: `imagen-video train` on moving digits (base through the CLI,
stopped by SIGTERM and resumed; SSR and TSR stages in-process), loss falling."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from test_train_support import compilation_cache

from imagen_video_jax.cli import main as cli_main
from imagen_video_jax.config import bundled_config_file, load_config
from imagen_video_jax.train import Checkpointer, train
from imagen_video_jax.train.cli import config_flags_as_overrides

pytestmark = pytest.mark.usefixtures(compilation_cache.__name__)

CONFIG = str(bundled_config_file("imagen_video"))


def _logged(stage_dir: Path) -> list[dict]:
    path = stage_dir / "logs/metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _falls(losses: list[float]) -> bool:
    return np.mean(losses[-2:]) < 0.8 * losses[0]


def test_config_flags_become_overrides():
    argv = ["--config", "c.py", "--config.train.num_steps=5", "--config.mesh.data", "2", "--x"]
    assert config_flags_as_overrides(argv) == [
        "--config", "c.py", "--set", "train.num_steps=5", "--set", "mesh.data=2", "--x",
    ]  # fmt: skip


@pytest.mark.parametrize(
    "args, message",
    [
        (["stage=ssr9"], "unknown stage 'ssr9'"),
        (["stage=base", "--config.mesh.data=3"], "mesh data=3 x fsdp=1 x tensor=1 needs 3 devices"),
        (["stage=base", "--set", "data.source=tfds", "--data-dir", "{tmp}/none"],
         "no prepared dataset moving_digits"),
    ],
)  # fmt: skip
def test_cli_mistakes_give_one_clear_error(tmp_path, capsys, args, message):
    started = time.perf_counter()
    config = f"{CONFIG}:{args[0]},size=tiny"
    rest = [a.format(tmp=tmp_path) for a in args[1:]]
    code = cli_main(["train", "--config", config, "--workdir", str(tmp_path), *rest])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("error:") == 1
    assert time.perf_counter() - started < 10  # nothing compiled


@pytest.mark.slow
def test_cli_trains_tiny_base_stops_on_sigterm_and_resumes(tmp_path):
    cache = os.environ.get("JAX_COMPILATION_CACHE_DIR") or jax.config.jax_compilation_cache_dir
    env = dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=1",
        JAX_COMPILATION_CACHE_DIR=str(cache),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )
    command = [
        sys.executable, "-m", "imagen_video_jax.cli", "train",
        "--config", f"{CONFIG}:stage=base,size=tiny", "--workdir", str(tmp_path),
        "--config.train.num_steps=40", "--set", "train.checkpoint_every=1000", "--no-progress",
    ]  # fmt: skip
    stage_dir = tmp_path / "base"
    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 600
    while len(_logged(stage_dir)) < 2 and first.poll() is None and time.time() < deadline:
        time.sleep(0.5)
    first.send_signal(signal.SIGTERM)
    output = first.communicate(timeout=300)[0].decode()
    assert first.returncode == 0, output[-3000:]
    stopped_at = Checkpointer(stage_dir).latest_step()
    assert "stop requested: saved step" in output and 10 <= stopped_at < 40

    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert Checkpointer(stage_dir).latest_step() == 40
    records = _logged(stage_dir)
    steps = [r["step"] for r in records]
    assert steps[-1] == 40 and steps == sorted(steps)
    assert _falls([r["loss"] for r in records])


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["ssr1", "tsr1"])
def test_tiny_super_resolution_stages_learn(tmp_path, stage):
    config = load_config(f"{CONFIG}:stage={stage},size=tiny", ["train.num_steps=30"])
    state = train(config, tmp_path, devices=jax.devices()[:1], progress_bar=False)
    assert int(state.step) == 30
    losses = [r["loss"] for r in _logged(tmp_path / stage)]
    assert len(losses) == 6 and np.isfinite(losses).all() and _falls(losses)
