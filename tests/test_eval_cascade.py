"""Evaluating a cascade stage by stage (CPU): held-out prompts, per-stage scores against an
independent recomputation, the real-data and noise baselines, the eval command's JSON and
table, user errors, and the bundled demo cascade's caption accuracy (acceptance 4).

I3D is replaced by a cheap pixel-statistics feature map here (I3D itself is tested in
test_eval_i3d.py), so the distances are checked exactly at CPU speed.
"""

import json

import numpy as np
import pytest

from imagen_video_jax.cascade import Cascade
from imagen_video_jax.cascade.demo import DEMO_FILE, bundled_cascade_dir
from imagen_video_jax.cli import main as cli_main
from imagen_video_jax.config import load_config
from imagen_video_jax.data.captions import DIRECTIONS, digits_caption, parse_caption
from imagen_video_jax.data.moving_digits import MovingDigitsSpec, render_clip
from imagen_video_jax.eval import (
    CachedTextEncoder,
    caption_accuracy,
    distances,
    evaluate_cascade,
    held_out_prompts,
)
from imagen_video_jax.models.text_cache import cache_embeddings, load_embedding_cache, text_key

NUM_SAMPLES, BATCH, SEED, STEPS = 6, 3, 1, 2
# Mini-size stages (base 4x16x16 at 3 fps, tsr1 8x16x16 at 6 fps, which the caption classifier
# reads) with one-level U-Nets of width 8, quick to compile.
SMALL_UNET = [
    "model.dtype=float32",
    "model.channels=8",
    "model.emb_channels=32",
    "model.head_dim=8",
    "model.norm_groups=4",
    "model.channel_mult=(1,)",
    "model.num_res_blocks=(1,)",
    "model.spatial_attention=(True,)",
    "model.cross_attention=(True,)",
]
TIMING_KEYS = {"seconds_per_sample", "stage_seconds_per_sample", "compile_seconds"}
SCORE_KEYS = {"caption_accuracy", "digit_accuracy", "motion_accuracy", "fvd", "kvd"}


def small_stage(name, temporal):
    overrides = [*SMALL_UNET, f"model.temporal_mixing=('{temporal}',)"]
    return load_config(f"configs/imagen_video.py:stage={name},size=mini", overrides)


class HashEncoder:
    """A stand-in text encoder named as the stages' own: fixed random embeddings per text."""

    name, max_length, dim = "minilm", 32, 384

    def encode(self, texts):
        embeddings = np.stack(
            [
                np.random.default_rng(int(text_key(t)[:12], 16)).standard_normal((32, 384))
                for t in texts
            ]
        )
        mask = np.arange(32)[None, :] < np.array([len(t.split()) for t in texts])[:, None]
        return embeddings * mask[..., None], mask


def pixel_features(videos):
    """Stand-in for I3D: brightness, contrast and brightness change over the clip."""
    v = np.asarray(videos, np.float64)
    change = (v[:, -1] - v[:, 0]).mean(axis=(1, 2, 3))
    return np.stack([v.mean(axis=(1, 2, 3, 4)), v.std(axis=(1, 2, 3, 4)), change], axis=1)


def frechet_reference(x, y):
    """Frechet distance of Gaussians fitted to x and y, with the symmetric matrix root."""
    mu_x, mu_y = x.mean(0), y.mean(0)
    cov_x, cov_y = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    values, vectors = np.linalg.eigh(cov_x)
    root_x = vectors @ np.diag(np.sqrt(np.clip(values, 0, None))) @ vectors.T
    inner = np.linalg.eigvalsh(root_x @ cov_y @ root_x)
    trace_root = np.sqrt(np.clip(inner, 0, None)).sum()
    return float(((mu_x - mu_y) ** 2).sum() + np.trace(cov_x) + np.trace(cov_y) - 2 * trace_root)


def mmd_reference(x, y):
    """Unbiased polynomial-kernel MMD^2, pair by pair."""
    d = x.shape[1]

    def k(a, b):
        return (a @ b / d + 1.0) ** 3

    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(a, b) for a in x for b in y) / (m * n)
    return xx + yy - 2 * xy


def expected_clip_index(i):
    """Sample i: digit i % 10 moving in direction (i % 8 + (i // 40) % 2) % 8, in block i // 80."""
    return i % 10 + 10 * ((i % 8 + (i // 40) % 2) % 8) + 80 * (i // 80)


def real_clips(shape, fps, indices):
    spec = MovingDigitsSpec(*shape, fps=fps, two_digit_prob=0.0, bounce_prob=0.0)
    records = [render_clip(spec, "test", int(j)) for j in indices]
    return np.stack([r["video"] for r in records]), [r["caption"] for r in records]


@pytest.fixture(scope="module")
def stand_in_i3d():
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(distances, "i3d_features", pixel_features)
        yield


@pytest.fixture(scope="module")
def cascade_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cascade")
    Cascade.from_configs([small_stage("base", "attention"), small_stage("tsr1", "conv")]).save(
        folder, dtype="float32"
    )
    return folder


@pytest.fixture(scope="module")
def text_cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "captions.npz"
    cache_embeddings(HashEncoder(), held_out_prompts(80), path)
    return path


@pytest.fixture(scope="module")
def fvd_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("fvd")


@pytest.fixture(scope="module")
def cascade(cascade_dir):
    return Cascade.from_checkpoints(cascade_dir)


@pytest.fixture(scope="module")
def results(stand_in_i3d, cascade, text_cache, fvd_cache):
    return evaluate_cascade(
        cascade,
        num_samples=NUM_SAMPLES,
        batch_size=BATCH,
        seed=SEED,
        num_steps=STEPS,
        text_cache=text_cache,
        cache_dir=fvd_cache,
    )


def test_held_out_prompts_cover_every_digit_and_direction_of_test_clips():
    prompts = held_out_prompts(160)
    pairs = [parse_caption(p) for p in prompts]
    assert len(set(pairs[:80])) == 80 and pairs[80:] == pairs[:80]
    assert {d for d, _ in pairs[:10]} == set(range(10))
    assert {m for _, m in pairs[:8]} == set(DIRECTIONS)
    for i in (0, 7, 39, 40, 41, 79, 80, 123):
        j = expected_clip_index(i)
        assert prompts[i] == digits_caption([(j % 10, DIRECTIONS[(j // 10) % 8])])
    _, captions = real_clips((4, 16, 16), 3.0, [expected_clip_index(i) for i in range(12)])
    assert captions == prompts[:12]


def test_every_stage_reports_its_shape_scores_timing_and_baselines(results):
    assert list(results) == ["base", "tsr1"]
    expected = {"base": ([4, 16, 16], 3.0), "tsr1": ([8, 16, 16], 6.0)}
    for name, scores in results.items():
        assert (scores["shape"], scores["fps"]) == expected[name]
        assert scores["i3d_frames"] == 16  # 4 and 8 frames, each repeated to 16
        assert set(scores) >= SCORE_KEYS | TIMING_KEYS
        for part in (scores, scores["real"], scores["noise"]):
            assert all(0.0 <= part[key] <= 1.0 for key in SCORE_KEYS - {"fvd", "kvd"})
            assert np.isfinite(part["fvd"]) and np.isfinite(part["kvd"])
        assert scores["stage_seconds_per_sample"] > 0 and scores["compile_seconds"] >= 0
    base, tsr1 = results["base"], results["tsr1"]
    assert base["seconds_per_sample"] == base["stage_seconds_per_sample"]
    assert tsr1["seconds_per_sample"] == pytest.approx(
        base["seconds_per_sample"] + tsr1["stage_seconds_per_sample"], rel=1e-12
    )


def test_scores_match_a_recomputation_from_the_same_samples_and_real_clips(
    results, cascade, text_cache
):
    prompts = held_out_prompts(NUM_SAMPLES)
    cached = Cascade(
        list(cascade.stages.values()), CachedTextEncoder(load_embedding_cache(text_cache))
    )
    batches = [
        cached.sample(
            prompts[s : s + BATCH],
            seed=[SEED + s + i for i in range(BATCH)],
            num_steps=STEPS,
            return_intermediates=True,
            progress=False,
        )[1]
        for s in range(0, NUM_SAMPLES, BATCH)
    ]
    first = [expected_clip_index(i) for i in range(NUM_SAMPLES)]
    second = [expected_clip_index(i) for i in range(80, 80 + NUM_SAMPLES)]
    for name, scores in results.items():
        samples = np.concatenate([batch[name] for batch in batches])
        shape, fps = scores["shape"], scores["fps"]
        real, captions = real_clips(shape, fps, first)
        other, other_captions = real_clips(shape, fps, second)
        assert captions == other_captions == prompts
        assert scores["caption_accuracy"] == caption_accuracy(samples, prompts)
        assert scores["real"]["caption_accuracy"] == caption_accuracy(real, prompts)
        real_f, sample_f, other_f = map(pixel_features, (real, samples, other))
        assert scores["fvd"] == pytest.approx(frechet_reference(real_f, sample_f), rel=1e-6)
        assert scores["kvd"] == pytest.approx(mmd_reference(real_f, sample_f), rel=1e-9)
        assert scores["real"]["fvd"] == pytest.approx(frechet_reference(real_f, other_f), rel=1e-6)
        assert scores["real"]["kvd"] == pytest.approx(mmd_reference(real_f, other_f), rel=1e-9)


def test_real_clips_are_read_and_noise_is_not(results):
    for scores in results.values():
        assert scores["real"]["caption_accuracy"] >= 5 / 6
        assert scores["noise"]["caption_accuracy"] <= 1 / 6
        assert scores["noise"]["fvd"] > 10 * scores["real"]["fvd"]


def test_eval_command_writes_the_same_scores_and_a_table(
    stand_in_i3d, results, cascade_dir, text_cache, fvd_cache, tmp_path, capsys
):
    out = tmp_path / "results.json"
    argv = ["eval", "--checkpoints", str(cascade_dir), "--dataset", "moving_digits"]
    argv += ["--num-samples", str(NUM_SAMPLES), "--batch-size", str(BATCH), "--seed", str(SEED)]
    # Steps of a stage after the last one evaluated are left out (one setting for any cascade).
    argv += ["--steps", f"base={STEPS},tsr1={STEPS},ssr3=64", "--text-cache", str(text_cache)]
    argv += ["--cache-dir", str(fvd_cache)]
    assert cli_main([*argv, "--out", str(out), "--quiet"]) == 0
    record = json.loads(out.read_text())
    assert (record["num_samples"], record["batch_size"], record["seed"]) == (6, 3, 1)
    assert list(record["stages"]) == list(results)
    for name, scores in record["stages"].items():
        expected = results[name]
        for key in set(expected) - TIMING_KEYS:
            assert scores[key] == expected[key], (name, key)
    printed = capsys.readouterr().out
    table = out.with_suffix(".md").read_text()
    assert table in printed
    for row in ("| base |", "| base: real clips |", "| tsr1: uniform noise |"):
        assert row in table
    base_row = next(line for line in table.splitlines() if line.startswith("| base |"))
    assert f"{100 * results['base']['caption_accuracy']:.1f} %" in base_row
    assert f"{results['base']['fvd']:.1f}" in base_row


@pytest.mark.parametrize(
    "options, message",
    [
        ({"dataset": "ucf101"}, r"unknown dataset 'ucf101'; expected one of \['moving_digits'\]"),
        ({"num_samples": 0}, "num_samples must be an int >= 1; got 0"),
        ({"batch_size": 0}, "batch_size must be an int >= 1; got 0"),
        ({"num_samples": 1}, "FVD and KVD need num_samples >= 2"),
        ({"stop_after": "ssr3"}, "stop_after must be one of this cascade's stages"),
    ],
)
def test_settings_errors_come_before_sampling(cascade, options, message):
    settings = {"num_samples": 4, "batch_size": 2, "seed": 0, **options}
    with pytest.raises(ValueError, match=message):
        evaluate_cascade(cascade, **settings)


def test_text_cache_errors_name_the_cache_and_the_fix(cascade, tmp_path):
    with pytest.raises(FileNotFoundError, match="no embedding cache"):
        evaluate_cascade(cascade, num_samples=2, batch_size=2, seed=0, text_cache=tmp_path / "x")
    partial = tmp_path / "partial.npz"
    cache_embeddings(HashEncoder(), held_out_prompts(3), partial)
    with pytest.raises(ValueError, match="lacks 1 evaluation prompt.*imagen-video embed"):
        evaluate_cascade(cascade, num_samples=4, batch_size=2, seed=0, text_cache=partial)
    other = tmp_path / "other.npz"
    encoder = HashEncoder()
    encoder.name = "t5-v1_1-small"
    cache_embeddings(encoder, held_out_prompts(4), other)
    with pytest.raises(ValueError, match="'t5-v1_1-small' at max_length 32; stage 'base' takes"):
        evaluate_cascade(cascade, num_samples=4, batch_size=2, seed=0, text_cache=other)


def test_eval_command_reports_user_mistakes(tmp_path, capsys):
    missing = ["eval", "--checkpoints", str(tmp_path / "none"), "--num-samples", "4"]
    assert cli_main(missing) == 2
    assert "cascade checkpoint folder" in capsys.readouterr().err
    assert cli_main([*missing, "--dataset", "ucf101"]) == 2
    assert "unknown dataset 'ucf101'" in capsys.readouterr().err
    assert cli_main([*missing[:3], "--num-samples", "0"]) == 2
    assert "num_samples must be an int >= 1" in capsys.readouterr().err


# Acceptance 4: a few prompts (8 digits, all 8 directions) through the stages and step counts
# that `imagen-video demo` uses (demo.json). Two batches: the first compiles, the second is
# timed, so nothing is sampled twice (a single batch would be rerun to time it compiled).
DEMO_PROMPTS, DEMO_BATCH = 8, 4


@pytest.fixture(scope="module")
def bundled_demo_scores():
    folder = bundled_cascade_dir()
    demo = json.loads((folder / DEMO_FILE).read_text())
    cascade = Cascade.from_checkpoints(folder, stop_after=demo["stop_after"])
    return evaluate_cascade(
        cascade,
        num_samples=DEMO_PROMPTS,
        batch_size=DEMO_BATCH,
        seed=0,
        stop_after=demo["stop_after"],
        fvd=False,
        num_steps=demo["num_steps"],
    )


def test_bundled_demo_base_moves_the_digit_the_prompted_way(bundled_demo_scores):
    """The base stage sets the motion; a base that cannot tell time's direction scores ~50%."""
    assert bundled_demo_scores["base"]["motion_accuracy"] >= 0.875


def test_bundled_demo_caption_accuracy(bundled_demo_scores):
    final = list(bundled_demo_scores)[-1]
    assert bundled_demo_scores[final]["caption_accuracy"] >= 0.8
