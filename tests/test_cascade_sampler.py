"""The cascaded sampler on tiny random-weight stages (CPU): shapes and frame rates of every
stage, prefixes, seeds, batching, guidance, distilled students, compile counts, errors."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imagen_video_jax.bench.measure import CompileCounter
from imagen_video_jax.cascade import Cascade
from imagen_video_jax.cascade.cascade import example_seeds, stage_keys
from imagen_video_jax.cascade.specs import SamplingSettings, apply_overrides
from imagen_video_jax.config import load_config

OVERRIDES = ["model.dtype=float32"]
PROMPTS = ["a handwritten 7 moving up", "a handwritten 3 moving left"]
OTHER_PROMPTS = ["a handwritten 1 moving down", "a handwritten 0 bouncing around"]
STEPS = 2
W = 2.0

# The tiny cascade (frames, height, width, fps) of each stage: base 2x8x8 at 3 fps, TSR stages
# double frames and fps, SSR stages multiply height and width by 2 (ssr1) or 4 (ssr2, ssr3).
TINY_TABLE = {
    "base": (2, 8, 8, 3.0),
    "tsr1": (4, 8, 8, 6.0),
    "ssr1": (4, 16, 16, 6.0),
    "ssr2": (4, 64, 64, 6.0),
    "tsr2": (8, 64, 64, 12.0),
    "tsr3": (16, 64, 64, 24.0),
    "ssr3": (16, 256, 256, 24.0),
}


def tiny_config(stage, *extra):
    return load_config(f"configs/imagen_video.py:stage={stage},size=tiny", [*OVERRIDES, *extra])


@pytest.fixture(scope="module")
def cascade():
    return Cascade.from_random_init("tiny", stop_after="tsr1", overrides=OVERRIDES)


def sample(cascade, prompts=PROMPTS, **kwargs):
    options = {"seed": 3, "num_steps": STEPS, "guidance_weight": W, "progress": False}
    return cascade.sample(prompts, **{**options, **kwargs})


def test_every_stage_takes_the_previous_output_and_makes_the_table_shape():
    full = Cascade.from_random_init("tiny", overrides=OVERRIDES)
    assert full.stage_names == list(TINY_TABLE)
    text = jax.ShapeDtypeStruct((1, 32, 384), jnp.float32)
    mask = jax.ShapeDtypeStruct((1, 32), jnp.bool_)
    previous = None
    for name, (frames, height, width, fps) in TINY_TABLE.items():
        stage = full.stages[name]
        assert stage.spec.shape == (frames, height, width)
        assert full.output_spec(name).fps == fps
        z = jax.ShapeDtypeStruct((1, frames, height, width, 3), jnp.float32)
        inputs = {"text": text, "text_mask": mask}
        if previous is not None:
            inputs["cond"] = jax.ShapeDtypeStruct((1, *previous, 3), jnp.float32)
            inputs["cond_logsnr"] = jax.ShapeDtypeStruct((1,), jnp.float32)
        out = jax.eval_shape(
            lambda p, z, i, m=stage.sampler.model: m.apply({"params": p}, z, jnp.zeros(1), **i),
            stage.params,
            z,
            inputs,
        )
        assert out.shape == z.shape, name
        previous = (frames, height, width)


def test_sampling_prefixes_seeds_batches_guidance_and_compiles(cascade):
    video, stages = sample(cascade, return_intermediates=True)
    assert video.dtype == np.uint8 and video.shape == (2, 4, 8, 8, 3)
    assert list(stages) == ["base", "tsr1"]
    assert stages["base"].shape == (2, 2, 8, 8, 3)
    np.testing.assert_array_equal(stages["tsr1"], video)
    compiled = dict(cascade.trace_counts)
    assert set(compiled) == {"base", "tsr1"} and min(compiled.values()) >= 1

    # Same seed, same video; a shorter cascade gives the same earlier stage.
    np.testing.assert_array_equal(sample(cascade), video)
    np.testing.assert_array_equal(sample(cascade, stop_after="base"), stages["base"])
    # Each example depends on its own prompt and seed only (prompt i uses seed 3 + i).
    swapped = sample(cascade, PROMPTS[::-1], seed=[4, 3])
    np.testing.assert_array_equal(swapped, video[::-1])
    # New prompts, seeds and guidance weights change the videos but compile nothing new.
    assert not np.array_equal(sample(cascade, OTHER_PROMPTS), video)
    assert not np.array_equal(sample(cascade, seed=4), video)
    assert not np.array_equal(sample(cascade, guidance_weight=4.0), video)
    assert cascade.trace_counts == compiled
    # One stage from the host copy of the previous stage's video gives the cascade's output,
    # with the sampling loop the cascade compiled.
    with CompileCounter() as compiles:
        again = cascade.sample_stage(
            "tsr1", PROMPTS, cond=stages["base"], seed=3, num_steps=STEPS, guidance_weight=W
        )
    np.testing.assert_array_equal(again, video)
    assert "jit(loop)" not in compiles.names

    # Prompts one by one give the batch's videos. Batch 1 and batch 2 compile to different
    # kernels, so allow one level of rounding.
    for i, prompt in enumerate(PROMPTS):
        single = sample(cascade, [prompt], stop_after="base", seed=3 + i)
        assert np.abs(single[0].astype(int) - stages["base"][i].astype(int)).max() <= 1

    # w = 0 is conditional sampling: the one-branch path equals the two-branch CFG path with a
    # weight too small to change (1 + w) c - w u in float32.
    conditional = sample(cascade, stop_after="base", guidance_weight=0.0)
    np.testing.assert_array_equal(
        conditional, sample(cascade, stop_after="base", guidance_weight=1e-30)
    )
    assert not np.array_equal(conditional, stages["base"])


def test_oscillating_weights_only_where_configured():
    low = SamplingSettings.from_config(tiny_config("base"))
    assert low.oscillating
    weights = dataclasses.replace(low, num_steps=8, guidance_weight=15.0)
    np.testing.assert_array_equal(weights.guidance_weights(), [15, 15, 1, 15, 1, 15, 1, 15])
    high = SamplingSettings.from_config(tiny_config("ssr2"))
    assert not high.oscillating
    assert set(high.guidance_weights()) == {high.guidance_weight}
    zero = dataclasses.replace(low, guidance_weight=0.0)
    assert not zero.guidance_weights().any()


def test_distilled_student_takes_the_weight_as_input():
    config = tiny_config(
        "base", "model.guidance_input=True", "sample.sampler=stochastic", "sample.num_steps=2"
    )
    student = Cascade.from_configs([config], seed=1)
    assert student.stages["base"].distilled
    a = student.sample(PROMPTS, seed=0, guidance_weight=0.0, progress=False)
    b = student.sample(PROMPTS, seed=0, guidance_weight=4.0, progress=False)
    assert a.shape == (2, 2, 8, 8, 3) and not np.array_equal(a, b)
    assert student.trace_counts == {"base": 1}


def _compiled_base_loop(cascade):
    stage = cascade.stages["base"]
    text, mask = cascade.encode(PROMPTS)
    keys = stage_keys(example_seeds(3, len(PROMPTS)), 0)
    settings = apply_overrides(stage.settings, num_steps=STEPS, guidance_weight=W)
    compiled, _ = stage.sampler.compile(stage.params, keys, text, mask, None, settings)
    return compiled.as_text()


def test_only_a_progress_listener_puts_host_callbacks_in_the_loop(cascade):
    """Timed sampling (no listener) compiles a loop without host callbacks, which on a GPU
    synchronise with the host at every step; a listener gets every step, same videos."""
    assert "callback" not in _compiled_base_loop(cascade)
    quiet = sample(cascade, stop_after="base")
    stage = cascade.stages["base"]
    reported = []
    stage.sampler.progress = lambda step, num_steps: reported.append((step, num_steps))
    try:
        assert "callback" in _compiled_base_loop(cascade)
        loud = cascade.sample_stage("base", PROMPTS, seed=3, num_steps=STEPS, guidance_weight=W)
        jax.effects_barrier()
    finally:
        stage.sampler.progress = None
    np.testing.assert_array_equal(loud, quiet)
    assert sorted(set(reported)) == [(step, STEPS) for step in range(1, STEPS + 1)]


@pytest.mark.parametrize(
    "prompts, message",
    [
        ("", "prompt 0 is empty"),
        (["a handwritten 1", "  "], "prompt 1 is empty"),
        ([], "non-empty list"),
        (7, "got int"),
        (["a handwritten 1", 2], "prompt 1 has type int"),
    ],
)
def test_bad_prompts_are_refused(cascade, prompts, message):
    with pytest.raises(ValueError, match=message):
        cascade.sample(prompts, progress=False)


def test_bad_options_are_refused_before_sampling(cascade):
    with pytest.raises(ValueError, match="stop_after must be one of this cascade's stages"):
        cascade.sample(PROMPTS, stop_after="ssr3")
    with pytest.raises(ValueError, match=r"names stage\(s\) \['tsr1'\]"):
        cascade.sample(PROMPTS, stop_after="base", num_steps={"tsr1": 4})
    with pytest.raises(ValueError, match="one int per prompt"):
        cascade.sample(PROMPTS, seed=[1, 2, 3])
    with pytest.raises(ValueError, match="sampler must be one of"):
        cascade.sample(PROMPTS, sampler="euler")
    assert cascade.trace_counts.keys() == {"base", "tsr1"}


def test_stages_that_do_not_chain_are_refused():
    with pytest.raises(
        ValueError, match=r"stage 'ssr2' takes .* \(4, 16, 16\).*'base'.*\(2, 8, 8\)"
    ):
        Cascade.from_configs([tiny_config("base"), tiny_config("ssr2")])
    with pytest.raises(ValueError, match="starts with a base"):
        Cascade.from_configs([tiny_config("tsr1")])


def test_a_stage_fed_the_wrong_shape_names_it(cascade):
    wrong = np.zeros((2, 2, 16, 16, 3), np.uint8)
    with pytest.raises(ValueError, match=r"stage 'tsr1' takes cond .* \[batch, 2, 8, 8, 3\]"):
        cascade.sample_stage("tsr1", PROMPTS, cond=wrong)
    with pytest.raises(ValueError, match="needs the previous stage's video"):
        cascade.sample_stage("tsr1", PROMPTS)


def test_a_prompt_longer_than_the_encoder_takes_is_cut_with_a_warning(cascade):
    with pytest.warns(UserWarning, match="prompt 1 fills all 32 tokens"):
        cascade.encode(["a handwritten 4", "a handwritten 4 moving left " * 10])


def test_stage_keys_fold_each_seed_with_the_stage_position():
    """The compiled key derivation gives each example the key the eager formula gives it."""
    seeds = example_seeds([0, 7, 123456789], 3)
    keys = stage_keys(seeds, 4)
    for seed, key in zip(seeds, keys):
        expected = jax.random.fold_in(jax.random.key(int(seed)), 4)
        np.testing.assert_array_equal(jax.random.key_data(key), jax.random.key_data(expected))
    assert not np.array_equal(jax.random.key_data(stage_keys(seeds, 5)), jax.random.key_data(keys))
