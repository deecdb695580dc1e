"""Train-step pieces: the stage loss, text dropout, noise augmentation, optimizer, EMA,
gradient accumulation and the non-finite guard."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from test_train_support import FakeVideoData, compilation_cache, make_config, tiny_model
from test_unet import random_tree, stage_config, stage_inputs

from imagen_video_jax.models import VideoUNet, abstract_params, cast_kernels
from imagen_video_jax.parallel import axis_rules, make_global_batch, make_mesh, mesh_context
from imagen_video_jax.train.loop import example_inputs
from imagen_video_jax.train.objective import (
    StageObjective,
    drop_text,
    model_inputs,
    stage_loss,
    video_to_float,
)
from imagen_video_jax.train.optimizer import (
    SMALL_LEAF_SIZE,
    clip_by_global_norm,
    global_norm,
    learning_rate_schedule,
    make_optimizer,
)
from imagen_video_jax.train.state import ema_decay_at, sharded_state_init, update_ema
from imagen_video_jax.train.step import _loss_and_grads, jit_train_step, make_train_step

pytestmark = pytest.mark.usefixtures(compilation_cache.__name__)


def test_drop_text_replaces_the_prob_fraction_by_the_null_text():
    b, length, dim = 4000, 3, 2
    text = jnp.ones((b, length, dim))
    mask = jnp.ones((b, length), bool)
    dropped_text, dropped_mask = drop_text(text, mask, jax.random.PRNGKey(1), 0.25)
    dropped = ~np.asarray(dropped_mask).any(axis=1)
    assert abs(dropped.mean() - 0.25) < 4 * math.sqrt(0.25 * 0.75 / b)
    np.testing.assert_array_equal(np.asarray(dropped_text)[dropped], 0.0)
    np.testing.assert_array_equal(np.asarray(dropped_text)[~dropped], 1.0)
    assert np.asarray(dropped_mask)[~dropped].all()


def test_noise_augmentation_of_the_low_res_video():
    config = make_config("ssr1")
    objective = StageObjective.from_config(config)
    assert objective.conditional and objective.cond_augmentation
    cond = jnp.full((256, 2, 4, 4, 3), 191, jnp.uint8)
    batch = {"cond": cond, "text": jnp.ones((256, 4, 8)), "text_mask": jnp.ones((256, 4), bool)}
    inputs = jax.jit(lambda b, k: model_inputs(objective, b, k))(batch, jax.random.PRNGKey(0))
    low, high = config.diffusion.cond_aug_logsnr_range
    level = np.asarray(inputs["cond_logsnr"], np.float64)
    assert level.shape == (256,) and level.min() >= low and level.max() <= high
    alpha = np.sqrt(1 / (1 + np.exp(-level)))[:, None, None, None, None]
    sigma = np.sqrt(1 / (1 + np.exp(level)))[:, None, None, None, None]
    eps = (np.asarray(inputs["cond"], np.float64) - alpha * (191 / 127.5 - 1)) / sigma
    assert abs(eps.mean()) < 0.03 and abs(eps.std() - 1) < 0.02  # 24576 draws


def test_stage_loss_is_the_v_mse_averaged_over_t():
    """Model v_hat = a * z_t on a constant uint8 video: the expected loss is
    E_t[(a alpha + sigma)^2 x^2 + (a sigma - alpha)^2] (closed form in eps), t ~ U(0, 1)."""
    config = make_config("base")
    objective = StageObjective.from_config(config)
    objective = StageObjective(
        prediction="v", schedule=objective.schedule, use_text=False, conditional=False
    )
    video = jnp.full((200000, 1, 1, 1, 1), 191, jnp.uint8)
    x = 191 / 127.5 - 1
    for a in (0.0, 0.5):
        loss = stage_loss(
            lambda variables, z, logsnr, **kw: variables["params"] * z,
            jnp.asarray(a),
            {"video": video},
            jax.random.PRNGKey(3),
            objective,
        )
        t = (np.arange(200000) + 0.5) / 200000
        logsnr = np.clip(-2 * np.log(np.tan(np.pi * t / 2)), -20, 20)
        alpha, sigma = np.sqrt(1 / (1 + np.exp(-logsnr))), np.sqrt(1 / (1 + np.exp(logsnr)))
        expected = np.mean((a * alpha + sigma) ** 2 * x**2 + (a * sigma - alpha) ** 2)
        assert float(loss) == pytest.approx(expected, rel=0.015)  # ~4 standard errors


def test_video_to_float_maps_uint8_to_minus_one_one():
    np.testing.assert_allclose(video_to_float(jnp.array([0, 255], jnp.uint8)), [-1.0, 1.0])


def test_learning_rate_schedule_closed_form():
    train = make_config().train
    train.update(learning_rate=2e-3, warmup_steps=10, num_steps=110, end_lr_factor=0.1)
    schedule = learning_rate_schedule(train)
    assert float(schedule(5)) == pytest.approx(1e-3)
    for step in (10, 35, 60, 110):
        progress = (step - 10) / 100
        expected = 2e-3 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
        assert float(schedule(step)) == pytest.approx(expected, rel=1e-5)
    train.lr_schedule = "constant"
    assert float(learning_rate_schedule(train)(80)) == pytest.approx(2e-3)
    train.lr_schedule = "linear"
    with pytest.raises(ValueError, match="not one of"):
        learning_rate_schedule(train)


def test_optimizer_clips_the_global_norm_and_decays_only_kernels():
    train = make_config().train
    train.update(grad_clip_norm=1.0, weight_decay=0.5, warmup_steps=0, lr_schedule="constant")
    tx = make_optimizer(train)
    params = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))}
    state = tx.init(params)
    grads = {"kernel": jnp.full((2, 2), 3.0), "bias": jnp.full((2,), 4.0)}  # norm sqrt(68)
    _, state = tx.update(grads, state, params)
    mu = state[1][0].mu  # AdamW's first moment after one step: (1 - b1) * clipped grads
    assert float(optax.global_norm(mu)) == pytest.approx((1 - train.adam_b1) * 1.0, rel=1e-5)
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zeros, tx.init(params), params)
    np.testing.assert_allclose(updates["kernel"], -train.learning_rate * 0.5, rtol=1e-5)
    np.testing.assert_allclose(updates["bias"], 0.0)


def test_global_norm_and_clipping_match_float64_over_small_and_large_leaves():
    rng = np.random.default_rng(0)
    shapes = {"large": (SMALL_LEAF_SIZE + 1,), "small": (3, 5), "edge": (SMALL_LEAF_SIZE,)}
    tree = {name: rng.normal(size=shape) for name, shape in shapes.items()}
    tree["half"] = rng.normal(size=(7,)).astype(jnp.bfloat16)
    expected = np.sqrt(sum(np.sum(np.square(np.asarray(x, np.float64))) for x in tree.values()))
    as_jax = jax.tree.map(jnp.asarray, tree)
    assert float(global_norm(as_jax)) == pytest.approx(expected, rel=1e-5)
    assert float(global_norm({})) == 0.0

    clip = clip_by_global_norm(expected / 4)
    clipped, _ = clip.update(as_jax, clip.init(as_jax))
    for name, x in as_jax.items():
        rtol = 1e-2 if x.dtype == jnp.bfloat16 else 1e-5  # bfloat16 keeps 8 significant bits
        np.testing.assert_allclose(
            np.asarray(clipped[name], np.float64), np.asarray(x, np.float64) / 4, rtol=rtol
        )
    assert clipped["half"].dtype == jnp.bfloat16
    unclipped, _ = clip_by_global_norm(expected * 2).update(as_jax, ())
    np.testing.assert_array_equal(unclipped["large"], as_jax["large"])


def test_lr_multipliers_scale_the_updates_of_the_modules_named():
    """Adam's update of a param does not depend on its gradient's scale, so a factor on the
    learning rate of a module shows as the same factor on its update, and nowhere else."""
    train = make_config().train
    train.update(grad_clip_norm=0.0, warmup_steps=0, lr_schedule="constant")
    params = {
        "guidance_embedding": {"dense_out": {"kernel": jnp.zeros((2, 2))}},
        "guidance_embedding_extra": {"kernel": jnp.zeros((2,))},  # a name that only starts so
        "conv": {"kernel": jnp.ones((3,))},
    }
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.3), params)

    def step_update(multipliers):
        train.lr_multipliers = multipliers
        tx = make_optimizer(train)
        return tx.update(grads, tx.init(params), params)[0]

    plain, scaled = step_update({}), step_update({"guidance_embedding": 10.0})
    np.testing.assert_allclose(
        scaled["guidance_embedding"]["dense_out"]["kernel"],
        10 * plain["guidance_embedding"]["dense_out"]["kernel"],
        rtol=1e-6,
    )
    assert float(plain["conv"]["kernel"][0]) == pytest.approx(-train.learning_rate, rel=1e-4)
    for name in ("conv", "guidance_embedding_extra"):
        np.testing.assert_array_equal(scaled[name]["kernel"], plain[name]["kernel"])
    with pytest.raises(ValueError, match="names no params: \\['guidance'\\]"):
        step_update({"guidance": 2.0})


def test_ema_decay_and_update():
    assert float(ema_decay_at(0, 0.999)) == pytest.approx(0.1)
    assert float(ema_decay_at(10**6, 0.999)) == pytest.approx(0.999)
    ema = update_ema({"w": jnp.array(1.0)}, {"w": jnp.array(3.0)}, jnp.array(0.75))
    assert float(ema["w"]) == pytest.approx(0.75 * 1 + 0.25 * 3)


def test_gradient_accumulation_equals_the_full_batch():
    batch = {"x": jnp.arange(24.0).reshape(8, 3), "y": jnp.linspace(-1, 1, 8)}

    def loss_fn(params, batch, key):
        pred = batch["x"] @ params["w"] + params["b"]
        return jnp.mean((pred - batch["y"]) ** 2)

    params = {"w": jnp.array([0.1, -0.2, 0.3]), "b": jnp.array(0.5)}
    key = jax.random.PRNGKey(0)
    loss1, grads1 = _loss_and_grads(loss_fn, params, batch, key, 1)
    loss4, grads4 = _loss_and_grads(loss_fn, params, batch, key, 4)
    assert float(loss4) == pytest.approx(float(loss1), rel=1e-6)
    for g1, g4 in zip(jax.tree.leaves(grads1), jax.tree.leaves(grads4)):
        np.testing.assert_allclose(g4, g1, rtol=1e-5)


def test_nonfinite_step_is_skipped_and_counted():
    config = make_config("base")
    mesh = make_mesh(config.mesh, jax.devices()[:1])
    rules = axis_rules(config.mesh)
    model, tx = tiny_model(config), make_optimizer(config.train)
    data = FakeVideoData(config, poison={2: np.inf})
    init, shardings, _ = sharded_state_init(
        lambda k: model.init(k, **example_inputs(config))["params"], tx, mesh, rules
    )
    step = jit_train_step(
        make_train_step(model.apply, tx, config, rules), shardings, None, mesh, rules
    )

    def device_batch(index):
        host = data.make(index)
        fields = {"video": host["video"], "frame_mask": host["frame_mask"]}
        fields.update(text=host["text_emb"], text_mask=host["text_mask"])
        return make_global_batch(fields, mesh, rules)

    with mesh_context(mesh, rules):
        state = init(jax.random.PRNGKey(0))
        for index in (0, 1):  # the first step's learning rate is 0: take two
            state, metrics = step(state, device_batch(index), None)
            assert np.isfinite(float(metrics["loss"])) and int(metrics["nonfinite_run"]) == 0
        before = jax.device_get(state)
        # The EMA lags the params here, so an EMA update on the skipped step would move it.
        assert any(
            not np.array_equal(a, b)
            for a, b in zip(jax.tree.leaves(before.params), jax.tree.leaves(before.ema_params))
        )
        state, metrics = step(state, device_batch(2), None)
        after = jax.device_get(state)
        assert not np.isfinite(float(metrics["loss"]))
        assert int(after.step) == 3 and int(after.nonfinite_run) == 1
        assert int(after.nonfinite_total) == 1
        for a, b in zip(jax.tree.leaves(before.params), jax.tree.leaves(after.params)):
            np.testing.assert_array_equal(a, b)
        for a, b in zip(jax.tree.leaves(before.opt_state), jax.tree.leaves(after.opt_state)):
            np.testing.assert_array_equal(a, b)
        for a, b in zip(jax.tree.leaves(before.ema_params), jax.tree.leaves(after.ema_params)):
            np.testing.assert_array_equal(a, b)
        state, metrics = step(state, device_batch(3), None)
        assert int(metrics["nonfinite_run"]) == 0 and int(metrics["nonfinite_total"]) == 1
        changed = jax.device_get(state.params)
        assert any(
            not np.array_equal(a, b)
            for a, b in zip(jax.tree.leaves(after.params), jax.tree.leaves(changed))
        )


def _one_level_unet():
    """A bfloat16 U-Net of one level (no resampling), its random params and inputs."""
    one_level = {"spatial_attention": (True,), "cross_attention": (True,), "num_res_blocks": (1,)}
    config = stage_config(
        "base", channel_mult=(1,), temporal_mixing=("attention",), remat="block", **one_level
    )
    params = random_tree(nn.unbox(abstract_params(config.model)), seed=0)
    inputs = stage_inputs(config, batch=2, frames=4)
    return VideoUNet.from_config(config.model), params, inputs


def test_cast_kernels_casts_the_kernels_alone():
    _, params, _ = _one_level_unet()
    cast = jax.tree_util.tree_leaves_with_path(cast_kernels(params, jnp.bfloat16))
    names = [jax.tree_util.keystr(path) for path, _ in cast]
    kernels = [leaf for (path, leaf) in cast if path[-1].key == "kernel"]
    others = [leaf for (path, leaf) in cast if path[-1].key != "kernel"]
    assert len(kernels) > 10 and len(others) > 10
    assert all(leaf.dtype == jnp.bfloat16 for leaf in kernels)
    assert all(leaf.dtype == jnp.float32 for leaf in others)
    assert any("conv_in" in n for n in names) and any("relative" in n for n in names)
    for (_, before), (_, after) in zip(jax.tree_util.tree_leaves_with_path(params), cast):
        np.testing.assert_array_equal(
            np.asarray(after, np.float32), np.asarray(before.astype(after.dtype), np.float32)
        )


def test_kernels_cast_before_the_loss_keep_the_loss_and_round_only_kernel_gradients():
    """Every module casts its kernels to the compute dtype itself, so casting them first gives
    the same loss bit for bit. The kernels' gradients then come out of bfloat16 products:
    bfloat16 values within a few bfloat16 steps of the float32 ones (2^-8 of the leaf's
    largest); every other gradient is unchanged."""
    model, params, inputs = _one_level_unet()
    target = jnp.asarray(np.random.default_rng(1).normal(size=inputs["z"].shape), jnp.float32)

    def loss_fn(p, batch, key):
        del key
        return jnp.mean(jnp.square(model.apply({"params": p}, **batch) - target))

    key = jax.random.PRNGKey(0)
    run = jax.jit(_loss_and_grads, static_argnums=(0, 4, 5))
    loss, grads = run(loss_fn, params, inputs, key, 1, None)
    cast_loss, cast_grads = run(loss_fn, params, inputs, key, 1, "bfloat16")
    assert float(cast_loss) == float(loss)
    pairs = zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(cast_grads))
    for (path, g), c in pairs:
        name = jax.tree_util.keystr(path)
        assert c.dtype == jnp.float32, name
        g, c = np.asarray(g), np.asarray(c)
        if path[-1].key != "kernel":
            np.testing.assert_array_equal(c, g, err_msg=name)
            continue
        np.testing.assert_array_equal(c, c.astype(jnp.bfloat16).astype(np.float32), err_msg=name)
        np.testing.assert_allclose(c, g, rtol=0, atol=2**-8 * np.abs(g).max(), err_msg=name)
