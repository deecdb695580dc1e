"""Guided and progressive distillation of one cascade stage (Meng et al. 2022; Salimans & Ho
2022), so that the stage samples in ``distill.final_steps`` steps with one model call each.

Round 0 (guided): the student is the teacher's params plus the zero-initialised guidance-weight
input of the Video U-Net (so it starts as the teacher's conditional model); it learns the
teacher's classifier-free-guided prediction, both branches in one batched call, for
``w ~ U[distill.guidance_range]``. Round k >= 1 (progressive): the student starts from the EMA
params of round k-1, which are also its teacher, and learns to do in ONE DDIM step t -> s what
the teacher does in two, t -> t' -> s (the target of :func:`diffusion.teacher_target`), on the
grid of ``start_steps / 2^k`` steps, until ``final_steps``. The teacher's x predictions are
dynamically thresholded as its sampler does (``sample.dynamic_threshold``). SR stages see the
low-res video noise-augmented at random levels of the training range (``distill.cond_aug``
"train"; "sample": only the level the stage samples with), in teacher and student alike.

Each round trains with the train loop's pieces (state, optimizer, jitted sharded step, data,
text, logs, :class:`StepLoop`) and checkpoints in the train format to
``<workdir>/<stage>/round_<k>/<step>/``, its config being the student's (``model.guidance_input``
on, ``sample.num_steps`` the round's, the stochastic N-step sampler after round 0), so any
round loads for sampling. A killed run resumes at the round and step it reached. One compiled
step serves every round of equal length: the round's kind and step count are inputs, not
constants. (``imagen-video distill`` then exports the last round compactly: distill_cli.py.)
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from etils import epath
from flax import traverse_util
from jax.sharding import NamedSharding, PartitionSpec

from imagen_video_jax.diffusion.distillation import teacher_target
from imagen_video_jax.diffusion.guidance import cfg_combine, dynamic_threshold
from imagen_video_jax.diffusion.parameterization import (
    diffuse,
    eps_from_x,
    prediction_target,
    to_x_eps,
)
from imagen_video_jax.models import VideoUNet
from imagen_video_jax.parallel import (
    axis_rules,
    check_global_batch,
    make_mesh,
    mesh_context,
)
from imagen_video_jax.train.checkpoint import Checkpointer
from imagen_video_jax.train.logs import TrainLogger
from imagen_video_jax.train.loop import (
    StepLoop,
    check_config,
    default_data_iterator,
    encoder_placement,
    example_inputs,
    text_conditioning,
)
from imagen_video_jax.train.objective import (
    ApplyFn,
    StageObjective,
    model_inputs,
    null_text,
    video_to_float,
)
from imagen_video_jax.train.optimizer import make_optimizer
from imagen_video_jax.train.state import (
    TrainState,
    create_train_state,
    params_mismatches,
    sharded_state_init,
)
from imagen_video_jax.train.step import StepFn, jit_train_step, make_update_step

# Sections of the teacher's saved config that define it (its network, what it makes, what it
# was trained on and how it samples); they replace those of the distillation config.
TEACHER_SECTIONS = ("stage", "text_encoder", "model", "diffusion", "sample", "data")
# The parameters a student has beyond its teacher's.
GUIDANCE_PARAMS = "guidance_embedding"
STUDENT_SAMPLER = "stochastic"
# distill.cond_aug: the conditioning's noise level while distilling an SR stage.
COND_AUG_MODES = ("sample", "train")


# ----------------------------------------------------------------------------- configs


@dataclasses.dataclass(frozen=True)
class Round:
    """One distillation round: guided (round 0) or halving the student's steps."""

    index: int
    count: int  # rounds in all
    guided: bool
    student_steps: int  # sampling steps of the student this round trains
    num_steps: int  # optimizer steps

    @property
    def name(self) -> str:
        return f"round_{self.index}"

    def describe(self, stage: str) -> str:
        kind = "guided" if self.guided else f"{2 * self.student_steps}->{self.student_steps} steps"
        return f"{stage} round {self.index}/{self.count - 1} ({kind})"


def start_steps(config: Mapping) -> int:
    """The teacher's sampling steps: distill.start_steps, or sample.num_steps when 0."""
    return int(config["distill"]["start_steps"]) or int(config["sample"]["num_steps"])


def plan_rounds(config: Mapping) -> list[Round]:
    """The rounds of ``config.distill``: guided, then halvings from the start steps to the
    final ones. Clear errors for settings that cannot make such a plan."""
    distill = config["distill"]
    start, final = start_steps(config), int(distill["final_steps"])
    halvings = (start // final).bit_length() - 1 if final >= 1 else -1
    if final < 1 or start < final or start != final * 2**halvings:
        raise ValueError(
            f"distillation halves the steps from {start} (distill.start_steps, or "
            f"sample.num_steps when 0) down to distill.final_steps={final}: the start must be "
            "the final count times a power of 2"
        )
    guided, per_round = int(distill["guided_steps"]), int(distill["steps_per_round"])
    if guided < 1 or per_round < 1:
        raise ValueError(
            f"distill.guided_steps={guided} and distill.steps_per_round={per_round} must be >= 1"
        )
    low, high = (float(w) for w in distill["guidance_range"])
    if not 0.0 <= low <= high:
        raise ValueError(
            f"distill.guidance_range must be (w_min, w_max) with 0 <= w_min <= w_max; got "
            f"{tuple(distill['guidance_range'])}"
        )
    if distill["cond_aug"] not in COND_AUG_MODES:
        raise ValueError(
            f"distill.cond_aug must be one of {COND_AUG_MODES} (the sampling level or the "
            f"training range of the SR conditioning's noise); got {distill['cond_aug']!r}"
        )
    count = halvings + 1
    rounds = [Round(0, count, True, start, guided)]
    rounds += [Round(k, count, False, start >> k, per_round) for k in range(1, count)]
    return rounds


def _merged(base: Mapping, values: Mapping) -> dict:
    """``base`` with ``values`` written over it, nested mappings merged key by key."""
    out = dict(base)
    for key, value in values.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            value = _merged(out[key], value)
        out[key] = value
    return out


def _as_dict(node: Any) -> Any:
    return node.to_dict() if hasattr(node, "to_dict") else node


def with_teacher_config(
    config: ml_collections.ConfigDict, teacher: Mapping, overrides: tuple[str, ...] = ()
) -> ml_collections.ConfigDict:
    """The distillation config: ``config`` (train, distill, mesh settings) with the sections
    that define the teacher taken from its saved config, then ``overrides`` applied again so
    that ``--set`` wins over both. Raises ValueError if the teacher is of another stage."""
    from imagen_video_jax.config import apply_override

    wanted, got = str(config["stage"]["name"]), str(teacher["stage"]["name"])
    if wanted != got:
        raise ValueError(
            f"the teacher is a checkpoint of stage {got!r}, but the config distills stage "
            f"{wanted!r}: pass the teacher of {wanted!r} or the config of stage={got}"
        )
    config = copy.deepcopy(config)
    for section in TEACHER_SECTIONS:
        if section in teacher:
            merged = _merged(
                _as_dict(config[section]) if section in config else {}, teacher[section]
            )
            config[section] = ml_collections.ConfigDict(merged)
    for override in overrides:
        apply_override(config, override)
    return config


def round_config(config: ml_collections.ConfigDict, round_: Round) -> ml_collections.ConfigDict:
    """What round ``round_`` trains and saves: the student (w as a model input), sampling as
    the round leaves it, and the train settings of config.distill."""
    config = copy.deepcopy(config)
    distill = config.distill
    config.model.guidance_input = True
    config.sample.num_steps = round_.student_steps
    if not round_.guided:
        config.sample.sampler = STUDENT_SAMPLER
    config.train.num_steps = round_.num_steps
    config.train.learning_rate = float(distill.learning_rate)
    config.train.lr_schedule = distill.lr_schedule
    config.train.warmup_steps = min(int(distill.warmup_steps), round_.num_steps - 1)
    config.train.ema_decay = float(distill.ema_decay)
    config.train.sample_every = 0
    multiplier = float(distill.get("guidance_lr_multiplier", 1.0))
    if multiplier != 1.0:
        config.train.lr_multipliers = {**config.train.lr_multipliers, GUIDANCE_PARAMS: multiplier}
    return config


# ----------------------------------------------------------------------------- the loss


@dataclasses.dataclass(frozen=True)
class DistillObjective:
    """What the distillation loss needs to know about a stage (hashable)."""

    stage: StageObjective
    guidance_range: tuple[float, float]
    threshold: float  # percentile of the teacher's dynamic thresholding; 0: none

    @classmethod
    def from_config(cls, config: Mapping) -> DistillObjective:
        stage = StageObjective.from_config(config)
        if config["distill"]["cond_aug"] == "sample":
            level = float(config["diffusion"]["cond_aug_logsnr_sample"])
            stage = dataclasses.replace(stage, cond_aug_logsnr_range=(level, level))
        return cls(
            stage=dataclasses.replace(stage, text_drop_prob=0.0),
            guidance_range=tuple(float(w) for w in config["distill"]["guidance_range"]),
            threshold=float(config["sample"].get("dynamic_threshold", 0.0)),
        )


def round_inputs(round_: Round) -> dict[str, jax.Array]:
    """The round as step inputs (so one compiled step serves every round)."""
    return {
        "guided": jnp.asarray(round_.guided),
        "student_steps": jnp.asarray(round_.student_steps, jnp.int32),
    }


def grid_times(key: jax.Array, batch: int, steps: jax.Array) -> tuple[jax.Array, ...]:
    """Per example, a student step of the ``steps``-step grid: t = i / N with i ~ U{1..N},
    the teacher's midpoint t - 1/(2N) and the end s = t - 1/N."""
    n = steps.astype(jnp.float32)
    t = jax.random.randint(key, (batch,), 1, steps + 1).astype(jnp.float32) / n
    return t, t - 0.5 / n, t - 1.0 / n


def double(x: jax.Array) -> jax.Array:
    return jnp.concatenate([x, x])


def cfg_inputs(inputs: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """Model inputs of a batch of 2B: the conditioning, then the same with the null text
    (the two branches of classifier-free guidance as one call)."""
    both = {name: double(value) for name, value in inputs.items()}
    null, null_mask = null_text(inputs["text"], inputs["text_mask"])
    both["text"] = jnp.concatenate([inputs["text"], null])
    both["text_mask"] = jnp.concatenate([inputs["text_mask"], null_mask])
    return both


def make_distill_loss(apply_fn: ApplyFn, objective: DistillObjective):
    """``loss(params, batch, key, teacher_params, round) -> scalar``: mean squared error of the
    student's prediction (at z_t, with w as input) against the target x of the round, written
    in the student's parameterization (for v: an x error weighted by 1 + SNR)."""
    stage = objective.stage
    prediction = stage.prediction

    def teacher_x(x: jax.Array) -> jax.Array:
        return dynamic_threshold(x, objective.threshold) if objective.threshold > 0 else x

    def loss(params, batch, key, teacher_params, round_):
        input_key, time_key, noise_key, w_key, dropout_key = jax.random.split(key, 5)
        inputs = model_inputs(stage, batch, input_key)
        x = video_to_float(batch["video"])
        size = x.shape[0]
        t, t_mid, s = grid_times(time_key, size, round_["student_steps"])
        logsnr_t, logsnr_mid, logsnr_s = stage.schedule(t), stage.schedule(t_mid), stage.schedule(s)
        z_t = diffuse(x, jax.random.normal(noise_key, x.shape, x.dtype), logsnr_t)
        low, high = objective.guidance_range
        w = jax.random.uniform(w_key, (size,), minval=low, maxval=high)
        teacher = {"params": teacher_params}

        def guided_target() -> jax.Array:
            pred = apply_fn(
                teacher, double(z_t), double(logsnr_t), guidance=double(w), **cfg_inputs(inputs)
            )
            guided = cfg_combine(pred[:size], pred[size:], w)
            return teacher_x(to_x_eps(prediction, z_t, guided, logsnr_t)[0])

        def progressive_target() -> jax.Array:
            def teacher_fn(z: jax.Array, logsnr: jax.Array) -> jax.Array:
                pred = apply_fn(teacher, z, logsnr, guidance=w, **inputs)
                return teacher_x(to_x_eps(prediction, z, pred, logsnr)[0])

            return teacher_target(teacher_fn, z_t, logsnr_t, logsnr_mid, logsnr_s, prediction="x")

        target_x = jax.lax.stop_gradient(
            jax.lax.cond(round_["guided"], guided_target, progressive_target)
        )
        target = prediction_target(
            prediction, target_x, eps_from_x(z_t, target_x, logsnr_t), logsnr_t
        )
        student = {"params": params}
        rngs = {"dropout": dropout_key}
        pred = apply_fn(student, z_t, logsnr_t, guidance=w, train=True, rngs=rngs, **inputs)
        return jnp.mean(jnp.square(pred - target))

    return loss


def make_distill_step(
    apply_fn: ApplyFn,
    tx: optax.GradientTransformation,
    config: Mapping,
    rules: Any,
    *,
    text_encoder: Any = None,
) -> StepFn:
    """``step(state, batch, encoder_params, teacher_params, round) -> (state, metrics)``: the
    train step's update, non-finite guard and EMA around the distillation loss."""
    loss = make_distill_loss(apply_fn, DistillObjective.from_config(config))
    return make_update_step(loss, tx, config, rules, text_encoder=text_encoder)


# ----------------------------------------------------------------------------- params


def student_params(teacher_params: Any, init_params: Any) -> dict:
    """The student's first params (host arrays): the teacher's, plus the freshly initialised
    guidance-weight embedding of ``init_params``, whose zero output layer keeps the teacher's
    function. Raises ValueError when the teacher does not fit the stage's model."""
    problems = params_mismatches(
        teacher_params, init_params, given_name="teacher", optional=GUIDANCE_PARAMS
    )
    if problems:
        raise ValueError(
            f"the teacher's params do not fit the model of its config ({'; '.join(problems[:3])}); "
            "was the checkpoint written with another model config?"
        )
    teacher = traverse_util.flatten_dict(jax.device_get(teacher_params), sep="/")
    student = traverse_util.flatten_dict(jax.device_get(init_params), sep="/")
    merged = {key: teacher.get(key, value) for key, value in student.items()}
    return traverse_util.unflatten_dict(merged, sep="/")


# ----------------------------------------------------------------------------- the rounds


@dataclasses.dataclass
class DistillResult:
    """The last round's student state and config; ``finished`` is False when the run stopped
    early (SIGTERM, data ran out): run again to resume."""

    state: TrainState
    config: ml_collections.ConfigDict
    finished: bool


class _Rounds:
    """The rounds of one stage: their configs, checkpoints, compiled steps and data."""

    def __init__(self, config, *, devices, model, text_encoder, iterator, progress_bar, workdir):
        self.rounds = plan_rounds(config)
        self.configs = [round_config(config, r) for r in self.rounds]
        self.stage = str(config["stage"]["name"])
        self.stage_dir = epath.Path(workdir) / self.stage
        self.mesh = make_mesh(config["mesh"], devices)
        self.rules = axis_rules(config["mesh"])
        check_global_batch(int(config["data"]["batch_size"]), self.mesh, self.rules)
        self.iterator, self.text_encoder = iterator, text_encoder
        self.encoder = None  # (params, shardings) of the text encoder once placed
        self.progress_bar = progress_bar
        self.train = config["train"]
        first = self.configs[0]
        self.model = VideoUNet.from_config(first["model"]) if model is None else model
        inputs = {**example_inputs(first), "guidance": jnp.zeros((1,))}
        self.init_state, self.shardings, self.abstract = sharded_state_init(
            lambda key: self.model.init(key, **inputs)["params"],
            make_optimizer(first["train"]),
            self.mesh,
            self.rules,
        )
        self._steps: dict[int, StepFn] = {}

    def checkpointer(self, round_: Round) -> Checkpointer:
        return Checkpointer(
            self.stage_dir / round_.name,
            keep=int(self.train["keep_checkpoints"]),
            async_save=bool(self.train["async_checkpointing"]),
        )

    def finished(self, round_: Round) -> bool:
        if not (self.stage_dir / round_.name).exists():
            return False
        checkpointer = self.checkpointer(round_)
        try:
            return (checkpointer.latest_step() or 0) >= round_.num_steps
        finally:
            checkpointer.close()

    def restore(self, round_: Round) -> tuple[TrainState, Any]:
        """(state, data state) of the round's latest checkpoint."""
        checkpointer = self.checkpointer(round_)
        try:
            return checkpointer.restore(self.abstract)
        finally:
            checkpointer.close()

    def first_teacher(self, teacher_params: Any) -> Any:
        """Round 0's teacher in the student's param layout, placed as the params are."""
        seed = int(self.train["seed"])
        init = self.init_state(jax.random.PRNGKey(seed)).params
        return jax.device_put(student_params(teacher_params, init), self.shardings.params)

    def start(self, round_: Round, teacher: Any) -> TrainState:
        """The round's state: its latest checkpoint (the data put back where it was), or a
        fresh student equal to the teacher with a new optimizer."""
        if (self.stage_dir / round_.name).exists():
            checkpointer = self.checkpointer(round_)
            try:
                if checkpointer.latest_step() is not None:
                    state, data_state = checkpointer.restore(self.abstract)
                    self.set_data_state(data_state)
                    return state
            finally:
                checkpointer.close()
        tx = make_optimizer(self.configs[round_.index]["train"])
        fresh = jax.jit(
            lambda params, key: create_train_state(jax.tree.map(jnp.copy, params), tx, key),
            out_shardings=self.shardings,
        )
        key = jax.random.fold_in(jax.random.PRNGKey(int(self.train["seed"])), round_.index)
        return fresh(teacher, key)

    def set_data_state(self, data_state: Any) -> None:
        if data_state is not None and hasattr(self.iterator, "set_state"):
            self.iterator.set_state(data_state)

    def _step(self, round_: Round) -> StepFn:
        """The compiled step of rounds this long (their learning-rate schedule is the same)."""
        if round_.num_steps not in self._steps:
            config = self.configs[round_.index]
            replicated = NamedSharding(self.mesh, PartitionSpec())
            self._steps[round_.num_steps] = jit_train_step(
                make_distill_step(
                    self.model.apply,
                    make_optimizer(config["train"]),
                    config,
                    self.rules,
                    text_encoder=self.text_encoder,
                ),
                self.shardings,
                self.encoder[1],
                self.mesh,
                self.rules,
                extra_shardings=(self.shardings.params, replicated),
            )
        return self._steps[round_.num_steps]

    def run(self, round_: Round, state: TrainState, teacher: Any) -> TrainState:
        """Train the round from ``state`` to its last step (or a stop request)."""
        config = self.configs[round_.index]
        batches, self.text_encoder = text_conditioning(config, self.iterator, self.text_encoder)
        if self.encoder is None:
            self.encoder = encoder_placement(self.text_encoder, self.mesh, self.rules)
        step = self._step(round_)
        inputs = round_inputs(round_)
        start = int(jax.device_get(state.step))
        logger = TrainLogger(
            self.stage_dir / round_.name / "logs",
            start_step=start,
            total_steps=round_.num_steps,
            enabled=jax.process_index() == 0,
            progress_bar=self.progress_bar,
            description=round_.describe(self.stage),
        )
        checkpointer = self.checkpointer(round_)
        loop = StepLoop(
            config,
            checkpointer=checkpointer,
            logger=logger,
            iterator=self.iterator,
            preview=None,
            mesh=self.mesh,
            rules=self.rules,
        )
        logger.message(
            f"{round_.describe(self.stage)}: the student samples in {round_.student_steps} "
            f"steps; from step {start} of {round_.num_steps}"
        )
        try:
            with mesh_context(self.mesh, self.rules):
                return loop.run(
                    state,
                    lambda state, batch, encoder_params: step(
                        state, batch, encoder_params, teacher, inputs
                    ),
                    batches,
                    self.encoder[0],
                )
        finally:
            logger.close()
            checkpointer.close()


def check_teacher_config(config: Mapping) -> None:
    """Clear errors for a stage that cannot be distilled, before anything is built."""
    check_config(config)
    model = config["model"]
    if model.get("guidance_input", False):
        raise ValueError(
            "the teacher is already a distilled student (model.guidance_input is True); "
            "distill the undistilled stage instead"
        )
    if not model.get("use_text", True):
        raise ValueError(
            "guided distillation needs a text-conditioned teacher; this stage's model.use_text "
            "is False"
        )
    plan_rounds(config)


def distill(
    config: ml_collections.ConfigDict,
    teacher_params: Any,
    workdir: str | epath.Path,
    *,
    devices: list | None = None,
    model: Any = None,
    text_encoder: Any = None,
    data_iterator: Iterator | None = None,
    data_dir: str | None = None,
    progress_bar: bool = True,
) -> DistillResult:
    """Distill ``config``'s stage from the teacher's (EMA) params into
    ``<workdir>/<stage>/round_<k>/``, resuming at the round and step a previous run reached.

    ``config`` holds the teacher's model, diffusion, sample and data sections (see
    :func:`with_teacher_config`) and the distillation settings in ``config.distill``. Config
    mistakes raise ValueError before anything is compiled. Tests may pass their own ``model``
    (with the Video U-Net's call signature and a ``guidance_embedding``), text encoder, data
    iterator or devices, as to :func:`train`.
    """
    check_teacher_config(config)
    iterator = (
        data_iterator if data_iterator is not None else default_data_iterator(config, data_dir)
    )
    rounds = _Rounds(
        config,
        devices=devices,
        model=model,
        text_encoder=text_encoder,
        iterator=iterator,
        progress_bar=progress_bar,
        workdir=workdir,
    )
    todo = [r for r in rounds.rounds if not rounds.finished(r)]
    if not todo:
        state, _ = rounds.restore(rounds.rounds[-1])
        return DistillResult(state, rounds.configs[-1], True)
    first = todo[0]
    if first.index == 0:
        teacher = rounds.first_teacher(teacher_params)
    else:
        previous, data_state = rounds.restore(rounds.rounds[first.index - 1])
        rounds.set_data_state(data_state)
        teacher = previous.ema_params
    for round_ in todo:
        state = rounds.run(round_, rounds.start(round_, teacher), teacher)
        if int(jax.device_get(state.step)) < round_.num_steps:
            return DistillResult(state, rounds.configs[round_.index], False)
        teacher = state.ema_params
    return DistillResult(state, rounds.configs[-1], True)
