"""Guided and progressive distillation (train/distill.py, `imagen-video distill`): the student
beats the teacher's own single step at matching two teacher steps, the guided student beats the
conditional model at matching the guided prediction, rounds resume exactly, a distilled SR stage
samples in a cascade next to an undistilled stage, and mistakes give one clear error."""

import os
import signal
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from test_train_support import FakeVideoData, compilation_cache

from imagen_video_jax.cascade import Cascade, save_stage
from imagen_video_jax.cascade.sampler import guidance_mode
from imagen_video_jax.cli import main as cli_main
from imagen_video_jax.config import load_config
from imagen_video_jax.diffusion import cfg_combine, ddim_step, diffuse
from imagen_video_jax.train import Checkpointer, load_params
from imagen_video_jax.train.distill import distill, plan_rounds, round_config, student_params
from imagen_video_jax.train.objective import diffusion_schedule, null_text
from imagen_video_jax.train.optimizer import make_optimizer

pytestmark = pytest.mark.usefixtures(compilation_cache.__name__)

CONFIG = "configs/imagen_video.py"
ROUND_STEPS = 80
W_RANGE = (0.0, 4.0)
# Tiny stages distilled from 4 teacher steps to 2: round 0 guided, round 1 halving. Text of
# width 8 (FakeVideoData's), no dynamic thresholding (errors are compared with plain DDIM).
OVERRIDES = [
    "model.dtype=float32", "model.text_dim=8", "text_encoder.max_length=4", "text_encoder.dim=8",
    "model.channel_mult=(1,)", "distill.start_steps=4", "distill.final_steps=2",
    f"distill.guided_steps={ROUND_STEPS}", f"distill.steps_per_round={ROUND_STEPS}",
    f"distill.guidance_range={W_RANGE}", "distill.learning_rate=5e-3",
    "sample.dynamic_threshold=0.0", "train.async_checkpointing=False", "train.log_every=10",
    "train.checkpoint_every=100",
]  # fmt: skip
ONE_DEVICE = jax.devices()[:1]
ON_ONE_DEVICE = jax.sharding.SingleDeviceSharding(ONE_DEVICE[0])


def tiny_config(stage="base", *extra):
    return load_config(f"{CONFIG}:stage={stage},size=tiny", [*OVERRIDES, *extra])


def sinusoids(x, count=8):
    angles = x.astype(jnp.float32)[:, None] * np.geomspace(0.05, 2.0, count)
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], -1)


class GuidanceEmbedding(nn.Module):
    """w -> [B, channels], zero at initialisation (as the Video U-Net's)."""

    channels: int

    @nn.compact
    def __call__(self, w):
        h = nn.silu(nn.Dense(self.channels)(sinusoids(w)))
        return nn.Dense(self.channels, kernel_init=nn.initializers.zeros)(h)


class TinyStudent(nn.Module):
    """A per-pixel MLP with the Video U-Net's call signature (compiles in seconds): noise-level,
    pooled-text and (when given w) guidance embeddings, a mean over the video frames."""

    channels: int = 32

    @nn.compact
    def __call__(self, z, logsnr, *, text, text_mask, frame_mask=None, guidance=None,
                 train=False):  # fmt: skip
        b, t = z.shape[:2]
        weights = text_mask.astype(jnp.float32)[..., None]
        pooled = (text * weights).sum(1) / jnp.maximum(weights.sum(1), 1.0)
        emb = nn.Dense(self.channels)(sinusoids(logsnr)) + nn.Dense(self.channels)(pooled)
        if guidance is not None:
            emb += GuidanceEmbedding(self.channels, name="guidance_embedding")(guidance)
        hidden = nn.silu(nn.Dense(self.channels)(z) + emb[:, None, None, None])
        video = jnp.ones((b, t), bool) if frame_mask is None else ~frame_mask.astype(bool)
        gate = video.astype(jnp.float32)[:, :, None, None, None]
        mean = (hidden * gate).sum(1, keepdims=True) / jnp.maximum(gate.sum(1, keepdims=True), 1)
        hidden = nn.silu(nn.Dense(self.channels)(hidden + gate * mean))
        return nn.Dense(z.shape[-1])(hidden)


MODEL = TinyStudent()


def random_teacher(seed=5):
    """A random teacher (no guidance input): a non-trivial function of z, level and text."""
    text = jnp.zeros((1, 4, 8))
    args = (jnp.zeros((1, 2, 8, 8, 3)), jnp.zeros((1,)))
    return MODEL.init(jax.random.key(seed), *args, text=text, text_mask=text[..., 0] == 0)["params"]


def run_distill(workdir, data, config=None):
    config = config or tiny_config()
    return distill(config, random_teacher(), workdir, devices=ONE_DEVICE, model=MODEL,
                   data_iterator=data, progress_bar=False)  # fmt: skip


@pytest.fixture(scope="module")
def distilled(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("distill")
    data = FakeVideoData(tiny_config())
    result = run_distill(workdir, data)
    return workdir, result, data


def ema(workdir, round_name):
    return load_params(workdir / "base" / round_name, sharding=ON_ONE_DEVICE)[0]


def held_out(seed=7):
    """A batch the distillation never saw: clean videos in [-1, 1], text and mask."""
    batch = FakeVideoData(tiny_config(), seed=seed).make(0)
    video = jnp.asarray(batch["video"], jnp.float32) / 127.5 - 1.0
    return video, jnp.asarray(batch["text_emb"]), jnp.asarray(batch["text_mask"])


def test_student_step_matches_two_teacher_steps_better_than_one_teacher_step(distilled):
    workdir, result, _ = distilled
    assert result.finished and int(result.state.step) == ROUND_STEPS
    teacher, student = ema(workdir, "round_0"), ema(workdir, "round_1")
    schedule = diffusion_schedule(tiny_config().diffusion)
    x, text, mask = held_out()
    w = jnp.full((x.shape[0],), 2.0)

    def v(params, z, logsnr):
        return MODEL.apply({"params": params}, z, logsnr, text=text, text_mask=mask, guidance=w)

    @jax.jit
    def squared_errors(eps, t, mid, s):
        logsnr_t, logsnr_mid, logsnr_s = (jnp.full((x.shape[0],), schedule(u)) for u in (t, mid, s))
        z_t = diffuse(x, eps, logsnr_t)
        z_mid = ddim_step(z_t, v(teacher, z_t, logsnr_t), logsnr_t, logsnr_mid)
        two_steps = ddim_step(z_mid, v(teacher, z_mid, logsnr_mid), logsnr_mid, logsnr_s)
        one_teacher = ddim_step(z_t, v(teacher, z_t, logsnr_t), logsnr_t, logsnr_s)
        one_student = ddim_step(z_t, v(student, z_t, logsnr_t), logsnr_t, logsnr_s)
        return jnp.mean((one_teacher - two_steps) ** 2), jnp.mean((one_student - two_steps) ** 2)

    n = 2  # the student's steps: t = i / n -> s = (i - 1) / n, the teacher via the midpoint
    noises = [jax.random.normal(jax.random.key(r), x.shape) for r in range(2)]
    errors = [
        squared_errors(eps, i / n, (i - 0.5) / n, (i - 1) / n)
        for i in range(1, n + 1)
        for eps in noises
    ]
    teacher_error, student_error = np.mean(np.asarray(errors), axis=0)
    print(
        f"vs two teacher steps: teacher one step {teacher_error:.5f}, student {student_error:.5f}"
    )
    assert student_error < 0.5 * teacher_error


def test_guided_student_matches_guided_teacher_better_than_conditional_model(distilled):
    workdir, _, _ = distilled
    teacher, student = random_teacher(), ema(workdir, "round_0")
    schedule = diffusion_schedule(tiny_config().diffusion)
    x, text, mask = held_out()
    null, null_mask = null_text(text, mask)

    @jax.jit
    def squared_errors(key, w):
        t_key, eps_key = jax.random.split(key)
        logsnr = schedule(jax.random.uniform(t_key, (x.shape[0],)))
        z = diffuse(x, jax.random.normal(eps_key, x.shape), logsnr)
        cond = MODEL.apply({"params": teacher}, z, logsnr, text=text, text_mask=mask)
        uncond = MODEL.apply({"params": teacher}, z, logsnr, text=null, text_mask=null_mask)
        guided = cfg_combine(cond, uncond, w)
        w_input = jnp.full((x.shape[0],), w)
        pred = MODEL.apply(
            {"params": student}, z, logsnr, text=text, text_mask=mask, guidance=w_input
        )
        return jnp.mean((cond - guided) ** 2), jnp.mean((pred - guided) ** 2)

    for w in (2.0, 4.0):  # the upper half of the range, where the stage samples
        errors = [squared_errors(jax.random.key(100 + r), w) for r in range(4)]
        conditional, student_error = np.mean(np.asarray(errors), axis=0)
        print(
            f"w={w} vs guided teacher: conditional {conditional:.4f}, student {student_error:.4f}"
        )
        assert student_error < 0.5 * conditional


def test_rounds_halve_the_steps_and_save_student_configs(distilled):
    workdir, result, _ = distilled
    assert [(r.guided, r.student_steps) for r in plan_rounds(tiny_config())] == [
        (True, 4),
        (False, 2),
    ]
    plan = plan_rounds(load_config(f"{CONFIG}:stage=base,size=mini"))
    assert [r.student_steps for r in plan] == [256, 128, 64, 32, 16, 8]
    for name, steps, sampler in (("round_0", 4, "ddim"), ("round_1", 2, "stochastic")):
        params, config, step = load_params(workdir / "base" / name, sharding=ON_ONE_DEVICE)
        assert step == ROUND_STEPS and "guidance_embedding" in params
        assert config["model"]["guidance_input"]
        assert (config["sample"]["num_steps"], config["sample"]["sampler"]) == (steps, sampler)
    assert result.config.sample.num_steps == 2 and result.config.model.guidance_input


class SigtermAt(FakeVideoData):
    """Sends SIGTERM to this process while handing out batch ``index``."""

    def __init__(self, config, index):
        super().__init__(config)
        self.kill_at = index

    def __next__(self):
        if self.index == self.kill_at:
            os.kill(os.getpid(), signal.SIGTERM)
        return super().__next__()


def test_a_stopped_run_resumes_at_its_round_and_step(distilled, tmp_path):
    _, straight, straight_data = distilled
    first_data = SigtermAt(tiny_config(), ROUND_STEPS + 5)  # round 1, step 6
    stopped = run_distill(tmp_path, first_data)
    assert not stopped.finished and int(stopped.state.step) == 6
    assert stopped.config.sample.num_steps == 2
    assert Checkpointer(tmp_path / "base" / "round_1").latest_step() == 6

    resumed_data = FakeVideoData(tiny_config())
    resumed = run_distill(tmp_path, resumed_data)
    assert resumed.finished and int(resumed.state.step) == ROUND_STEPS
    assert first_data.drawn + resumed_data.drawn == straight_data.drawn
    assert straight_data.drawn == list(range(2 * ROUND_STEPS))
    pairs = zip(
        jax.tree.leaves(straight.state.ema_params), jax.tree.leaves(resumed.state.ema_params)
    )
    for a, b in pairs:
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-6, atol=1e-7)


def distill_cli(tmp_path, teacher, *extra, stage="base"):
    return cli_main([
        "distill", "--config", f"{CONFIG}:stage={stage},size=tiny", "--teacher", str(teacher),
        "--workdir", str(tmp_path / "out"), "--no-progress", *extra,
    ])  # fmt: skip


def write_teacher(folder, stage, *extra):
    """A compact teacher folder: random tiny params and the stage's config."""
    config = load_config(f"{CONFIG}:stage={stage},size=tiny", ["model.dtype=float32", *extra])
    cascade = Cascade.from_configs([config]) if stage == "base" else None
    params = cascade.stages["base"].params if cascade else {"unused": np.zeros(1)}
    save_stage(folder, params, config, "float16")
    return folder


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """Teacher folders: none, empty, of another stage, distilled, and a good one."""
    folder = tmp_path_factory.mktemp("teachers")
    (folder / "empty").mkdir()
    write_teacher(folder / "tsr1", "tsr1")
    write_teacher(folder / "distilled", "base", "model.guidance_input=True")
    write_teacher(folder / "cascade" / "base", "base")
    return folder


@pytest.mark.parametrize(
    "teacher, extra, message",
    [
        ("nowhere", [], "teacher folder {dir}/nowhere does not exist"),
        ("empty", [], "no teacher checkpoint of stage 'base' in {dir}/empty"),
        ("tsr1", [], "the teacher is a checkpoint of stage 'tsr1', but the config distills "
         "stage 'base'"),
        ("distilled", [], "the teacher is already a distilled student"),
        ("cascade", ["--set", "distill.final_steps=3"], "the start must be the final count "
         "times a power of 2"),
        ("cascade", ["--set", "distill.guidance_range=(2.0,1.0)"], "0 <= w_min <= w_max"),
    ],
)  # fmt: skip
def test_mistakes_give_one_clear_error_before_compiling(
    teachers, tmp_path, capsys, teacher, extra, message
):
    started = time.perf_counter()
    code = distill_cli(tmp_path, teachers / teacher, *extra)
    err = capsys.readouterr().err
    assert code == 2 and err.count("error:") == 1
    assert message.format(dir=teachers) in err
    assert time.perf_counter() - started < 10  # nothing compiled


class FakeEncoder:
    """Random 384-wide embeddings keyed by text: stands in for the tiny stages' MiniLM."""

    name, max_length, dim = "minilm", 32, 384

    def encode(self, texts):
        rows = [np.random.default_rng(list(t.encode())).standard_normal((32, 384)) for t in texts]
        mask = np.zeros((len(texts), 32), bool)
        mask[:, :6] = True
        return jnp.asarray(np.stack(rows), jnp.float32) * mask[..., None], jnp.asarray(mask)


@pytest.mark.slow
def test_a_distilled_sr_stage_samples_next_to_an_undistilled_base(tmp_path):
    """A tiny Video U-Net tsr1 stage distilled from a float16 compact teacher on the real
    moving-digits pipeline with cached caption embeddings, exported, then sampled in a cascade
    after an undistilled base."""
    from imagen_video_jax.data.captions import caption_vocabulary
    from imagen_video_jax.eval.cascade_eval import CachedTextEncoder
    from imagen_video_jax.models.text_cache import cache_embeddings, load_embedding_cache
    from imagen_video_jax.train.distill import with_teacher_config
    from imagen_video_jax.train.distill_cli import export_student, load_teacher

    small = ["model.dtype=float32", "model.channel_mult=(1,)", "model.num_res_blocks=(1,)",
             "model.spatial_attention=(False,)", "model.cross_attention=(True,)",
             "model.temporal_mixing=('conv',)"]  # fmt: skip
    teachers = tmp_path / "teachers"
    configs = [load_config(f"{CONFIG}:stage={name},size=tiny", small) for name in ("base", "tsr1")]
    Cascade.from_configs(configs, seed=3).save(teachers, "float16")
    cache = tmp_path / "captions.npz"
    cache_embeddings(FakeEncoder(), caption_vocabulary(two_digits=False, bouncing=False), cache)
    overrides = (
        f"train.text_cache={cache}", "data.moving_digits.two_digit_prob=0.0",
        "distill.guided_steps=3", "distill.steps_per_round=3", "distill.start_steps=4",
        "distill.final_steps=2", "train.async_checkpointing=False",
    )  # fmt: skip
    params, teacher_config = load_teacher(teachers, "tsr1")
    assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(params))
    config = load_config(f"{CONFIG}:stage=tsr1,size=tiny", overrides)
    config = with_teacher_config(config, teacher_config, overrides)
    assert config.model.channel_mult == [1] and config.data.moving_digits.two_digit_prob == 0
    out = tmp_path / "out"
    result = distill(config, params, out, devices=ONE_DEVICE, progress_bar=False)
    assert result.finished and Checkpointer(out / "tsr1" / "round_1").latest_step() == 3
    export_student(result, out)

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "base").symlink_to(teachers / "base")
    (mixed / "tsr1").symlink_to(out / "tsr1")
    encoder = CachedTextEncoder(load_embedding_cache(cache))
    cascade = Cascade.from_checkpoints(mixed, text_encoder=encoder)
    base, tsr1 = cascade.stages["base"], cascade.stages["tsr1"]
    assert not base.distilled and tsr1.distilled
    assert (tsr1.settings.sampler, tsr1.settings.num_steps) == ("stochastic", 2)
    assert guidance_mode(tsr1.config, tsr1.settings.guidance_weights()) == "input"
    assert guidance_mode(base.config, base.settings.guidance_weights()) == "cfg"
    videos = cascade.sample(
        ["a handwritten 7 moving up"], num_steps={"base": 2}, seed=1, progress=False
    )
    assert videos.shape == (1, 4, 8, 8, 3) and videos.dtype == np.uint8
    assert max(cascade.trace_counts.values()) == 1


@pytest.mark.parametrize("mode", ["sample", "train"])
def test_an_sr_student_sees_its_conditioning_noised_at_the_level_asked(mode):
    """distill.cond_aug: "sample" noises the low-res video at the level the stage samples with
    (every example; the student's call is recorded, the teacher's take the same inputs);
    "train" draws levels from the training range."""
    from imagen_video_jax.train.distill import (
        DistillObjective,
        Round,
        make_distill_loss,
        round_inputs,
    )

    config = tiny_config("tsr1", f"distill.cond_aug={mode}")
    data = FakeVideoData(config).make(0)
    batch = {"video": data["video"], "cond": data["cond"], "text": data["text_emb"]}
    batch = {**batch, "text_mask": data["text_mask"]}
    levels = []

    def apply_fn(variables, z, logsnr, *, cond, cond_logsnr, train=False, **inputs):
        if train:  # the student's call; the teachers' calls take the same inputs
            levels.append(np.asarray(cond_logsnr))
        return jnp.zeros_like(z)

    loss = make_distill_loss(apply_fn, DistillObjective.from_config(config))
    for guided, steps in ((True, 4), (False, 2)):
        loss(None, batch, jax.random.key(3), None, round_inputs(Round(0, 2, guided, steps, 1)))
    levels = np.concatenate(levels)
    low, high = config.diffusion.cond_aug_logsnr_range
    if mode == "sample":
        np.testing.assert_allclose(levels, np.log(3.0), rtol=1e-6)
    else:
        assert levels.min() >= low and levels.max() <= high and levels.std() > 1.0


def test_the_guidance_embedding_can_learn_faster_than_the_rest():
    """distill.guidance_lr_multiplier becomes each round's learning-rate factor for the
    student's guidance embedding: its first update is that many times the plain one."""
    config = tiny_config(
        "base", "distill.guidance_lr_multiplier=10.0", "distill.warmup_steps=0",
        "distill.lr_schedule=constant",
    )  # fmt: skip
    first = plan_rounds(config)[0]
    assert dict(round_config(config, first).train.lr_multipliers) == {"guidance_embedding": 10.0}
    assert not round_config(tiny_config(), first).train.lr_multipliers
    config.train.lr_multipliers = {"encoder": 2.0}  # a factor of the user's is kept beside it
    merged = dict(round_config(config, first).train.lr_multipliers)
    assert merged == {"encoder": 2.0, "guidance_embedding": 10.0}
    config.train.lr_multipliers = {}
    params = {"guidance_embedding": {"kernel": jnp.zeros(3)}, "conv": {"kernel": jnp.zeros(3)}}
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.1), params)
    tx = make_optimizer(round_config(config, first).train)
    updates, _ = tx.update(grads, tx.init(params), params)
    assert float(updates["conv"]["kernel"][0]) == pytest.approx(-config.distill.learning_rate)
    np.testing.assert_allclose(
        updates["guidance_embedding"]["kernel"], 10 * updates["conv"]["kernel"], rtol=1e-6
    )


def test_an_unknown_cond_aug_mode_is_refused_before_compiling():
    with pytest.raises(ValueError, match="distill.cond_aug must be one of"):
        plan_rounds(tiny_config("tsr1", "distill.cond_aug=fixed"))


def test_a_teacher_that_does_not_fit_the_model_is_named():
    init = {"dense": {"kernel": np.zeros((3, 4))}, "guidance_embedding": {"bias": np.zeros(4)}}
    merged = student_params({"dense": {"kernel": np.ones((3, 4))}}, init)
    assert merged["dense"]["kernel"].sum() == 12 and "guidance_embedding" in merged
    with pytest.raises(ValueError, match=r"dense/kernel has shape \(3, 5\), the model's \(3, 4\)"):
        student_params({"dense": {"kernel": np.ones((3, 5))}}, init)
    with pytest.raises(ValueError, match=r"params the model lacks: \['extra/bias'\]"):
        student_params({"dense": {"kernel": np.ones((3, 4))}, "extra": {"bias": 0}}, init)
    with pytest.raises(ValueError, match=r"params the teacher lacks: \['dense/kernel'\]"):
        student_params({}, init)


def test_a_train_workdir_teacher_gives_its_ema_params_and_config(tmp_path):
    from imagen_video_jax.train import create_train_state
    from imagen_video_jax.train.distill_cli import load_teacher

    config = tiny_config()
    params = random_teacher()
    state = create_train_state(params, optax.sgd(0.1), jax.random.key(0))
    state = state.replace(params=jax.tree.map(lambda p: p + 1.0, params), step=state.step + 3)
    checkpointer = Checkpointer(tmp_path / "base", async_save=False)
    checkpointer.save(state, config=config.to_dict())
    checkpointer.close()
    for folder in (tmp_path, tmp_path / "base"):
        loaded, saved = load_teacher(folder, "base")
        assert saved["stage"]["name"] == "base" and saved["model"]["text_dim"] == 8
        for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(loaded)):
            np.testing.assert_array_equal(np.asarray(b), np.asarray(a))
