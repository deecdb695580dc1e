"""The stage table and the config loader."""

import pytest

from imagen_video_jax.config import (
    apply_override,
    bundled_config_file,
    load_config,
    parse_config_arg,
)
from imagen_video_jax.stages import STAGE_ORDER, cascade_stages, stage_spec

# The paper's table (Imagen Video, Fig. 6): frames, height, width, fps.
PAPER = {
    "base": (16, 24, 40, 3),
    "tsr1": (32, 24, 40, 6),
    "ssr1": (32, 48, 80, 6),
    "ssr2": (32, 192, 320, 6),
    "tsr2": (64, 192, 320, 12),
    "tsr3": (128, 192, 320, 24),
    "ssr3": (128, 768, 1280, 24),
}


def test_paper_stages_match_the_paper_table():
    stages = cascade_stages("paper")
    assert tuple(stages) == STAGE_ORDER
    for name, (t, h, w, fps) in PAPER.items():
        assert (*stages[name].shape, stages[name].fps) == (t, h, w, fps)


@pytest.mark.parametrize("size", ["paper", "mini", "tiny"])
def test_each_stage_conditions_on_the_previous_output(size):
    stages = list(cascade_stages(size).values())
    assert stages[0].input_shape is None
    for prev, cur in zip(stages, stages[1:]):
        assert cur.input_shape == prev.shape
        assert cur.input_fps == prev.fps


def test_fully_convolutional_from_192x320_in_the_paper_cascade():
    stages = cascade_stages("paper")
    assert [n for n, s in stages.items() if s.fully_convolutional] == [
        "ssr2",
        "tsr2",
        "tsr3",
        "ssr3",
    ]


def test_unknown_stage_and_size_are_named():
    with pytest.raises(ValueError, match="unknown stage 'ssr9'"):
        stage_spec("ssr9")
    with pytest.raises(ValueError, match="unknown cascade size 'huge'"):
        cascade_stages("huge")


def test_parse_config_arg():
    assert parse_config_arg("size=mini", {"stage": "base", "size": "tiny"}) == {
        "stage": "base",
        "size": "mini",
    }
    with pytest.raises(ValueError, match="unknown config argument 'sise'"):
        parse_config_arg("sise=mini", {"size": "tiny"})
    with pytest.raises(ValueError, match="key=value"):
        parse_config_arg("mini", {"size": "tiny"})


def test_load_config_and_overrides(tmp_path):
    path = tmp_path / "c.py"
    path.write_text(
        "import ml_collections\n"
        "def get_config(arg):\n"
        "    return ml_collections.ConfigDict({'arg': arg, 'a': {'b': 1, 't': (1, 2)}})\n"
    )
    config = load_config(f"{path}:x=1", ["a.b=2", "a.t=[3, 4]"])
    assert config.arg == "x=1" and config.a.b == 2 and config.a.t == (3, 4)
    with pytest.raises(ValueError, match="no config field 'c'"):
        apply_override(config, "a.c=1")
    with pytest.raises(FileNotFoundError, match="not found"):
        load_config(str(tmp_path / "missing.py"))


def test_project_config_every_stage_and_size():
    for size in ("paper", "mini", "tiny"):
        for name in STAGE_ORDER:
            config = load_config(f"configs/imagen_video.py:stage={name},size={size}")
            spec = stage_spec(name, size)
            assert (config.stage.frames, config.stage.height, config.stage.width) == spec.shape
            assert config.diffusion.prediction == "v"


def test_configs_shorthand_means_the_bundled_file_unless_a_local_one_exists(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ here: the bundled file
    config = load_config("configs/imagen_video.py:stage=tsr1,size=tiny")
    assert config.stage.name == "tsr1"
    assert bundled_config_file("imagen_video").parent.name == "configs"
    local = tmp_path / "configs" / "imagen_video.py"
    local.parent.mkdir()
    local.write_text(
        "import ml_collections\n\n\n"
        "def get_config(arg):\n"
        "    return ml_collections.ConfigDict({'local': arg})\n"
    )
    assert load_config("configs/imagen_video.py:x").local == "x"
    with pytest.raises(FileNotFoundError, match="bundled configs are configs/bench_base_train"):
        load_config("configs/missing.py")
