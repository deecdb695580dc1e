"""The paper-table scripts of launch/: their argument checks and the commands they build."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

LAUNCH = Path(__file__).resolve().parents[1] / "launch"


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, LAUNCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def vdm_tables():
    return load_script("vdm_tables")


@pytest.fixture(scope="module")
def distill_table1():
    return load_script("distill_table1")


def test_reference_clips_are_the_next_test_clips(vdm_tables):
    """The "real clips" row scores test clips disjoint from the reference set."""
    argv = ["table6", "--size", "tiny", "--num-samples", "3", "--reference-only"]
    args = vdm_tables.parse_args(argv)
    assert args.reference_only
    config = vdm_tables.make_config(args, images=0, cond="none", motion="bounce")
    both = vdm_tables.real_clips(config, 6, frames=8)
    first = vdm_tables.real_clips(config, 3, frames=8)
    second = vdm_tables.real_clips(config, 3, frames=8, start=3)
    np.testing.assert_array_equal(first["video"], both["video"][:3])
    np.testing.assert_array_equal(second["video"], both["video"][3:])
    assert second["video"].shape[1] == 8
    assert not np.array_equal(first["video"], second["video"])


def _table1_args(distill_table1, tmp_path, *argv):
    cache = tmp_path / "captions.npz"
    cache.touch()
    return distill_table1.parse_args(["--text-cache", str(cache), *argv])


def _sets(command):
    return [command[i + 1] for i, part in enumerate(command) if part == "--set"]


def test_table1_crops_reach_only_the_stage_named(distill_table1, tmp_path):
    assert _table1_args(distill_table1, tmp_path).crop == {}
    args = _table1_args(distill_table1, tmp_path, "--crop", "ssr3=128")
    assert args.crop == {"ssr3": 128}
    assert _table1_args(distill_table1, tmp_path, "--crop", "ssr3=128,tsr3=64").crop == {
        "ssr3": 128,
        "tsr3": 64,
    }
    ssr3 = _sets(distill_table1.distill_command(args, "ssr3"))
    assert "data.crop_height=128" in ssr3 and "data.crop_width=128" in ssr3
    assert not any(
        s.startswith("data.crop") for s in _sets(distill_table1.distill_command(args, "ssr2"))
    )


@pytest.mark.parametrize(
    "value, message",
    [
        ("128", "positive int"),
        ("ssr3", "positive int"),
        ("ssr3=", "positive int"),
        ("ssr3=-4", "positive int"),
        ("ssr3=big", "positive int"),
        ("=128", "STAGE one of"),
        ("ssr9=128", "STAGE one of"),
    ],
)
def test_table1_refuses_malformed_crops(distill_table1, tmp_path, value, message, capsys):
    with pytest.raises(SystemExit):
        _table1_args(distill_table1, tmp_path, "--crop", value)
    err = capsys.readouterr().err
    assert "argument --crop" in err and "STAGE=" in err and message in err


def test_table1_crops_only_fully_convolutional_stages_it_distills(distill_table1):
    distill_table1.check_crops({"ssr3": 128, "tsr3": 64}, ["ssr3", "tsr3"])
    with pytest.raises(SystemExit, match="only fully convolutional stages"):
        distill_table1.check_crops({"base": 8}, ["base"])
    with pytest.raises(SystemExit, match="not distilled here"):
        distill_table1.check_crops({"ssr3": 128}, ["base", "ssr2"])
