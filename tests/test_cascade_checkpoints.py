"""Loading a cascade from per-stage checkpoints: train checkpoints (orbax, EMA params) and the
compact sampling format, distilled stages, export, and errors that name the missing stage."""

import json
import re
import shutil

import jax
import numpy as np
import optax
import pytest

from imagen_video_jax.cascade import Cascade
from imagen_video_jax.cascade.checkpoints import CONFIG_FILE, save_stage, to_plain
from imagen_video_jax.cascade.export import DEMO_FILE, export_cascade
from imagen_video_jax.config import load_config
from imagen_video_jax.train import Checkpointer, create_train_state

OVERRIDES = ["model.dtype=float32"]
PROMPTS = ["a handwritten 7 moving up", "a handwritten 3 moving left"]


def sample(cascade):
    return cascade.sample(
        PROMPTS, seed=3, num_steps=2, guidance_weight=2.0, stop_after="base", progress=False
    )


@pytest.fixture(scope="module")
def cascade():
    return Cascade.from_random_init("tiny", stop_after="tsr1", overrides=OVERRIDES, seed=7)


def save_train_checkpoints(cascade, workdir):
    """Each stage as `imagen-video train` saves it, with params != EMA params."""
    for name, stage in cascade.stages.items():
        state = create_train_state(stage.params, optax.sgd(0.1), jax.random.key(0))
        state = state.replace(
            params=jax.tree_util.tree_map(lambda p: p + 1.0, stage.params), step=state.step + 5
        )
        checkpointer = Checkpointer(workdir / name, async_save=False)
        checkpointer.save(state, config=stage.config)
        checkpointer.close()


def assert_same_params(a, b):
    jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)


def test_train_checkpoints_load_ema_params_and_sample_identically(cascade, tmp_path):
    save_train_checkpoints(cascade, tmp_path)
    loaded = Cascade.from_checkpoints(tmp_path)
    assert loaded.stage_names == ["base", "tsr1"]
    for name, stage in cascade.stages.items():
        assert_same_params(loaded.stages[name].params, stage.params)
        assert loaded.stages[name].config == stage.config
    np.testing.assert_array_equal(sample(loaded), sample(cascade))
    assert Cascade.from_checkpoints(tmp_path, stop_after="base").stage_names == ["base"]


def test_relative_workdirs_are_made_absolute_for_orbax(cascade, tmp_path, monkeypatch):
    """Newer Orbax refuses relative checkpoint paths; train, export and sampling take any."""
    monkeypatch.chdir(tmp_path)
    save_train_checkpoints(cascade, tmp_path / "run")
    checkpointer = Checkpointer("run/base")
    assert checkpointer.manager.directory.is_absolute()
    assert checkpointer.latest_step() == 5
    loaded = Cascade.from_checkpoints("run", stop_after="base")
    assert_same_params(loaded.stages["base"].params, cascade.stages["base"].params)


def test_compact_format_round_trips(cascade, tmp_path):
    cascade.save(tmp_path / "f32", dtype="float32")
    exact = Cascade.from_checkpoints(tmp_path / "f32")
    np.testing.assert_array_equal(sample(exact), sample(cascade))

    cascade.save(tmp_path / "f16", dtype="float16")
    half = Cascade.from_checkpoints(tmp_path / "f16")
    for name, stage in cascade.stages.items():
        rounded = jax.tree_util.tree_map(
            lambda p: np.asarray(p).astype(np.float16).astype(np.float32), stage.params
        )
        assert_same_params(half.stages[name].params, rounded)


def test_export_drops_the_training_machines_text_cache_path(tmp_path):
    config = load_config(
        "configs/imagen_video.py:stage=base,size=tiny",
        [*OVERRIDES, "train.text_cache=/train/machine/captions.npz"],
    )
    params = {"w": np.ones((2, 2), np.float32)}
    save_stage(tmp_path / "base", params, config)
    saved = json.loads((tmp_path / "base" / CONFIG_FILE).read_text())
    assert saved["train"]["text_cache"] == ""
    assert saved["model"] == to_plain(config.model)
    assert config.train.text_cache == "/train/machine/captions.npz"  # the caller's is untouched


def test_distilled_stages_load_alike(tmp_path):
    config = load_config(
        "configs/imagen_video.py:stage=base,size=tiny",
        [
            *OVERRIDES,
            "model.guidance_input=True",
            "sample.sampler=stochastic",
            "sample.num_steps=8",
        ],
    )
    Cascade.from_configs([config]).save(tmp_path)
    stage = Cascade.from_checkpoints(tmp_path).stages["base"]
    assert stage.distilled
    assert (stage.settings.sampler, stage.settings.num_steps) == ("stochastic", 8)
    assert "guidance_embedding" in stage.params


def test_missing_checkpoints_name_the_stage_and_path(cascade, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Cascade.from_checkpoints(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="expected subfolders named base, tsr1"):
        Cascade.from_checkpoints(tmp_path)
    full = tmp_path / "full"
    cascade.save(full, dtype="float32")
    (full / "ssr2").mkdir()
    gap = re.escape(f"stage 'ssr1' (later stage 'ssr2' is present): {full / 'ssr1'}")
    with pytest.raises(FileNotFoundError, match=gap):
        Cascade.from_checkpoints(full)
    (full / "ssr1").mkdir()
    with pytest.raises(FileNotFoundError, match=re.escape(f"stage 'ssr1' in {full / 'ssr1'}")):
        Cascade.from_checkpoints(full)
    base_only = tmp_path / "base_only"
    shutil.copytree(full / "base", base_only / "base")
    with pytest.raises(FileNotFoundError, match=re.escape(f"stage 'tsr1': {base_only / 'tsr1'}")):
        Cascade.from_checkpoints(base_only, stop_after="tsr1")


def test_export_writes_the_compact_cascade_and_demo_defaults(cascade, tmp_path):
    save_train_checkpoints(cascade, tmp_path / "run")
    out = tmp_path / "bundle"
    (out / "ssr1").mkdir(parents=True)
    (out / "ssr1" / "params.npz").write_bytes(b"stale")
    demo = {"stop_after": "base", "num_steps": {"base": 4}}
    written = export_cascade(tmp_path / "run", out, demo=demo)
    files = [p for p in out.rglob("*") if p.is_file()]
    assert written == sum(p.stat().st_size for p in files)
    assert sorted(p.parent.name for p in files if p.name == "params.npz") == ["base", "tsr1"]
    assert json.loads((out / DEMO_FILE).read_text()) == demo
    with pytest.raises(ValueError, match="over the limit of 0.0 MB"):
        export_cascade(tmp_path / "run", out, max_bytes=1000)
    with pytest.raises(ValueError, match="'ssr3' is not among the exported stages"):
        export_cascade(tmp_path / "run", out, demo={"stop_after": "ssr3"})
