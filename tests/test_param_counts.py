"""Parameter counts of the VideoUNet configs, counted abstractly (jax.eval_shape, no memory):
the paper-scale stages within 10% of the paper's, the bench-base-train model near 250M, the
small sizes small; and count_params against a closed form for single-level U-Nets."""

from __future__ import annotations

import importlib.util

import pytest

from imagen_video_jax.config import bundled_config_file
from imagen_video_jax.models import count_params
from imagen_video_jax.stages import PAPER_PARAMS

CONFIG_FILE = bundled_config_file("imagen_video")


def _configs():
    spec = importlib.util.spec_from_file_location("_imagen_video_configs", CONFIG_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CONFIGS = _configs()


@pytest.mark.parametrize("stage", list(PAPER_PARAMS))
def test_paper_stage_within_ten_percent_of_the_paper(stage):
    config = CONFIGS.model_config(stage, "paper")
    assert config.text_dim == 4096  # T5-XXL token embeddings
    count = count_params(config)
    assert abs(count / PAPER_PARAMS[stage] - 1) <= 0.10, f"{stage}: {count:,}"


def test_bench_base_train_model_is_about_250m():
    config = CONFIGS.bench_base_train_model_config()
    assert (config.channels, config.channel_mult, config.text_dim) == (128, (1, 2, 4, 8), 768)
    assert 200e6 <= count_params(config) <= 300e6


@pytest.mark.parametrize("size, low, high", [("tiny", 5e3, 1e5), ("mini", 1e6, 2e7)])
def test_small_sizes_are_small(size, low, high):
    for stage in PAPER_PARAMS:
        assert low <= count_params(CONFIGS.model_config(stage, size)) <= high, stage


def _dense(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


def _conv(taps: int, n_in: int, n_out: int) -> int:
    return taps * n_in * n_out + n_out


def _expected_single_level(c, e, text_dim, attention, heads, max_distance, cond):
    """Closed-form count of a one-level U-Net with ``c`` channels and embedding width ``e``."""
    norm = 2 * c

    def block(n_in):
        res = 2 * n_in + _conv(9, n_in, c) + _dense(e, 2 * c) + norm + _conv(9, c, c)
        res += _dense(n_in, c) if n_in != c else 0
        if not attention:
            return res + norm + _conv(3, c, c)  # temporal conv
        spatial = norm + _dense(c, 3 * c) + _dense(c, c)
        cross = norm + _dense(c, c) + _dense(text_dim, 2 * c) + _dense(c, c)
        temporal = norm + _dense(c, 3 * c) + _dense(c, c) + (2 * max_distance + 1) * heads
        return res + spatial + cross + temporal

    scalar_embedding = _dense(c, e) + _dense(e, e)  # c sinusoidal features in
    total = scalar_embedding * (2 if cond else 1)
    total += _dense(text_dim, e) if text_dim else 0  # pooled text
    total += _conv(9, 3 + (3 if cond else 0), c)  # conv_in
    total += block(c) + block(c) + block(2 * c)  # down, middle, up (with the skip concatenated)
    return total + norm + _conv(9, c, 3)  # norm_out, conv_out


@pytest.mark.parametrize("attention", [False, True])
def test_count_params_matches_closed_form(attention):
    config = {
        "channels": 8,
        "channel_mult": (1,),
        "num_res_blocks": (1,),
        "spatial_attention": (attention,),
        "cross_attention": (attention,),
        "temporal_mixing": ("attention" if attention else "conv",),
        "head_dim": 4,
        "temporal_max_distance": 3,
        "norm_groups": 4,
        "emb_channels": 16,
        "use_text": attention,
        "text_dim": 6,
        "cond_channels": 0 if attention else 3,
        "cond_augmentation": not attention,
    }
    expected = _expected_single_level(
        c=8,
        e=16,
        text_dim=6 if attention else 0,
        attention=attention,
        heads=2,
        max_distance=3,
        cond=not attention,
    )
    assert count_params(config) == expected
