"""launch/vdm_tables.py: the "real clips" row scores test clips disjoint from the reference set."""

import importlib.util
from pathlib import Path

import numpy as np

SCRIPT = Path(__file__).resolve().parents[1] / "launch" / "vdm_tables.py"


def load_script():
    spec = importlib.util.spec_from_file_location("vdm_tables", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reference_clips_are_the_next_test_clips():
    tables = load_script()
    args = tables.parse_args(["table6", "--size", "tiny", "--num-samples", "3", "--reference-only"])
    assert args.reference_only
    config = tables.make_config(args, images=0, cond="none", motion="bounce")
    both = tables.real_clips(config, 6, frames=8)
    first = tables.real_clips(config, 3, frames=8)
    second = tables.real_clips(config, 3, frames=8, start=3)
    np.testing.assert_array_equal(first["video"], both["video"][:3])
    np.testing.assert_array_equal(second["video"], both["video"][3:])
    assert second["video"].shape[1] == 8
    assert not np.array_equal(first["video"], second["video"])
