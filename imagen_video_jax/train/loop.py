"""The train loop of one cascade stage: set up the mesh, data, model and state (fresh or
resumed from the stage's latest checkpoint), then step, log, sample and checkpoint.

``train(config, workdir)`` is what ``imagen-video train`` runs; tests and notebooks may pass
their own model, text encoder, data iterator or devices.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from jax.experimental import multihost_utils

from imagen_video_jax.models import VideoUNet
from imagen_video_jax.models.text_cache import EmbeddingCache, load_embedding_cache
from imagen_video_jax.models.text_encoder import load_text_encoder
from imagen_video_jax.parallel import (
    axis_rules,
    check_global_batch,
    logical_shardings,
    make_global_batch,
    make_mesh,
    mesh_context,
    unbox,
)
from imagen_video_jax.stages import STAGE_ORDER
from imagen_video_jax.train.checkpoint import Checkpointer
from imagen_video_jax.train.logs import TrainLogger
from imagen_video_jax.train.optimizer import make_optimizer
from imagen_video_jax.train.previews import jit_preview_sampler, make_preview_sampler
from imagen_video_jax.train.state import TrainState, params_mismatches, sharded_state_init
from imagen_video_jax.train.step import jit_train_step, make_train_step

TEXT_SOURCES = ("auto", "batch", "encoder")


class NonFiniteError(RuntimeError):
    """Training stopped after too many NaN/inf steps in a row."""


def nonfinite_message(step: int, run: int, total: int) -> str:
    first = step - run + 1
    return (
        f"training stopped at step {step}: the last {run} steps (steps {first}-{step}) had a "
        f"NaN/inf loss or gradient and were skipped ({total} skipped in all); the parameters "
        f"are those after step {first - 1}. Try a lower train.learning_rate, a longer "
        "train.warmup_steps or a smaller train.grad_clip_norm, model.dtype='float32', or look "
        "for broken videos in the data; then resume from the last checkpoint with --set."
    )


class StopRequest:
    """SIGTERM (a TPU preemption, a SLURM time limit) asks the loop to save and stop.

    One process: a signal handler sets a flag read at each step. Several processes: JAX's
    preemption service (started by ``jax.distributed.initialize``) catches the signal and
    every process reaches the same sync step.
    """

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self) -> StopRequest:
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True

    def __call__(self, step: int) -> bool:
        if not self.requested and jax.process_count() > 1:
            with contextlib.suppress(RuntimeError):  # RuntimeError: the service is off
                self.requested = multihost_utils.reached_preemption_sync_point(step)
        return self.requested


# ----------------------------------------------------------------------------- set-up


def check_config(config: Mapping) -> None:
    """Clear errors for config mistakes, before anything is built or compiled."""
    stage = config["stage"]["name"]
    if stage not in STAGE_ORDER:
        raise ValueError(f"unknown stage {stage!r}; expected one of {list(STAGE_ORDER)}")
    train = config["train"]
    if train["text_source"] not in TEXT_SOURCES:
        raise ValueError(f"train.text_source {train['text_source']!r} is not one of {TEXT_SOURCES}")
    accum, batch_size = int(train["grad_accum_steps"]), int(config["data"]["batch_size"])
    if accum < 1 or batch_size % accum:
        raise ValueError(
            f"train.grad_accum_steps={accum} must be >= 1 and divide data.batch_size={batch_size}"
        )


def example_inputs(config: Mapping) -> dict[str, jax.Array]:
    """Batch-1 model inputs for initialization, at the smallest size the U-Net levels allow."""
    model, stage = config["model"], config["stage"]
    side = 2 ** (len(model.get("channel_mult", (1,))) - 1)
    frames = stage["frames"]
    inputs = {"z": jnp.zeros((1, frames, side, side, 3)), "logsnr": jnp.zeros((1,))}
    if model.get("use_text", True):
        length = config["text_encoder"]["max_length"]
        inputs["text"] = jnp.zeros((1, length, model["text_dim"]))
        inputs["text_mask"] = jnp.ones((1, length), bool)
    if model.get("cond_channels", 0):
        cond_frames = frames // stage.get("temporal_factor", 1)
        inputs["cond"] = jnp.zeros((1, cond_frames, side, side, model["cond_channels"]))
        if model.get("cond_augmentation", True):
            inputs["cond_logsnr"] = jnp.zeros((1,))
    inputs["frame_mask"] = jnp.zeros((1, frames), bool)
    return inputs


def default_data_iterator(config: Mapping, data_dir: str | None) -> Iterator:
    """This process's batches of the config's dataset (data/ is imported only when used: it
    brings in tensorflow_datasets)."""
    from imagen_video_jax.data import make_train_iterator

    return make_train_iterator(
        config,
        data_dir=data_dir,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )


def default_text_encoder(config: Mapping) -> Any:
    """The frozen encoder of config.text_encoder; its width must be the model's text_dim."""
    encoder = config["text_encoder"]
    text_encoder = load_text_encoder(encoder["name"], max_length=encoder["max_length"])
    if text_encoder.dim != config["model"]["text_dim"]:
        raise ValueError(
            f"text encoder {encoder['name']!r} gives {text_encoder.dim}-wide embeddings but "
            f"model.text_dim is {config['model']['text_dim']}"
        )
    return text_encoder


def encoder_placement(text_encoder: Any, mesh, rules) -> tuple[Any, Any]:
    """(params, shardings) of a frozen text encoder, sharded by its logical axes."""
    if text_encoder is None:
        return None, None
    ids = jnp.zeros((1, text_encoder.max_length), jnp.int32)
    boxed = jax.eval_shape(text_encoder.module.init, jax.random.PRNGKey(0), ids, ids == 0)
    shardings = logical_shardings(boxed["params"], mesh, rules)
    return jax.device_put(unbox(text_encoder.params), shardings), shardings


class HostBatches:
    """Numpy batches of this process, reduced to what goes to the devices.

    Text comes as precomputed embeddings ('text_emb' -> 'text'), as embeddings of the captions
    looked up in an embedding cache (train.text_cache), or as token ids of the captions
    ('text_ids', tokenized here for the frozen encoder inside the step).
    """

    def __init__(
        self,
        iterator: Iterator,
        source: str,
        use_text: bool,
        text_encoder: Any,
        cache: EmbeddingCache | None = None,
    ):
        self.iterator, self.source, self.use_text = iterator, source, use_text
        self.text_encoder, self.cache = text_encoder, cache

    def __next__(self) -> dict[str, np.ndarray]:
        batch = next(self.iterator)
        fields = {name: batch[name] for name in ("video", "cond", "frame_mask") if name in batch}
        if self.use_text and self.source == "batch":
            fields["text"] = np.asarray(batch["text_emb"], np.float32)
            fields["text_mask"] = np.asarray(batch["text_mask"], bool)
        elif self.use_text and self.source == "cache":
            fields["text"], fields["text_mask"] = self.cache.lookup(captions_of(batch))
        elif self.use_text:
            fields["text_ids"], fields["text_mask"] = self.text_encoder.tokenize(captions_of(batch))
        return fields


def captions_of(batch: Mapping[str, Any]) -> list[str]:
    """The batch's captions as Python strings."""
    return [str(c) for c in np.asarray(batch["caption"]).reshape(-1)]


def open_text_cache(config: Mapping) -> EmbeddingCache | None:
    """The embedding cache of train.text_cache (None when unset), checked against the
    config's text encoder so that training sees the embeddings sampling will."""
    path = config["train"].get("text_cache", "")
    if not path:
        return None
    cache = load_embedding_cache(path)
    encoder = config["text_encoder"]
    if (cache.encoder_name, cache.max_length) != (encoder["name"], encoder["max_length"]):
        raise ValueError(
            f"train.text_cache {path} holds embeddings of {cache.encoder_name!r} at max_length "
            f"{cache.max_length}; the config's text encoder is {encoder['name']!r} at "
            f"{encoder['max_length']}"
        )
    return cache


def resolve_text_source(config: Mapping, first_batch: Mapping) -> str:
    """'batch' (precomputed embeddings) or 'encoder' (tokens for the frozen encoder)."""
    source = config["train"]["text_source"]
    if source == "auto":
        return "batch" if "text_emb" in first_batch else "encoder"
    if source == "batch" and "text_emb" not in first_batch:
        raise ValueError(
            "train.text_source='batch' needs precomputed 'text_emb' in the data; this dataset "
            "gives only captions: use train.text_source='encoder' or precompute embeddings"
        )
    return source


class _Peeked:
    """An iterator with its first element taken out and put back in front."""

    def __init__(self, first: Any, rest: Iterator):
        self._first, self._rest = [first], rest

    def __next__(self) -> Any:
        return self._first.pop() if self._first else next(self._rest)


# ----------------------------------------------------------------------------- the loop


class _MetricWindow:
    """Host-side metrics between two log lines (non-finite steps left out of the means)."""

    def __init__(self):
        self.reset(time.perf_counter())

    def reset(self, now: float) -> None:
        self.start, self.steps, self.sums, self.finite = now, 0, {}, 0

    def add(self, metrics: Mapping[str, float]) -> None:
        self.steps += 1
        self.last = dict(metrics)
        if np.isfinite(metrics["loss"]) and np.isfinite(metrics["grad_norm"]):
            self.finite += 1
            for name in ("loss", "grad_norm"):
                self.sums[name] = self.sums.get(name, 0.0) + metrics[name]

    def summary(self, now: float) -> dict[str, float]:
        means = {name: total / max(self.finite, 1) for name, total in self.sums.items()}
        return {
            **means,
            "learning_rate": self.last["learning_rate"],
            "nonfinite_total": self.last["nonfinite_total"],
            "steps_per_sec": self.steps / max(now - self.start, 1e-9),
        }


def restore_or_init(
    checkpointer: Checkpointer,
    abstract: TrainState,
    init_state: Any,
    iterator: Any,
    seed: int,
    init_params: Any = None,
) -> TrainState:
    """The stage's latest checkpoint (with the data iterator put back where it was), or a
    fresh state: at random, or from ``init_params`` (params and EMA both; optimizer fresh)."""
    if checkpointer.latest_step() is None:
        state = init_state(jax.random.PRNGKey(seed))
        if init_params is None:
            return state
        problems = params_mismatches(init_params, abstract.params, given_name="initial params")
        if problems:
            raise ValueError(
                f"the initial params do not fit this stage's model: {'; '.join(problems[:3])}"
            )
        placed = jax.tree_util.tree_map(
            lambda p, target: jax.device_put(np.asarray(p, target.dtype), target.sharding),
            init_params,
            abstract.params,
        )
        return state.replace(params=placed, ema_params=jax.tree_util.tree_map(jnp.copy, placed))
    state, data_state = checkpointer.restore(abstract)
    if data_state is not None:
        iterator.set_state(data_state)
    return state


def text_conditioning(
    config: Mapping, iterator: Iterator, text_encoder: Any
) -> tuple[HostBatches, Any]:
    """Host batches with text in the form the data allows, and the encoder the step needs
    (None when embeddings come precomputed or the model takes no text)."""
    first = next(iterator)
    use_text = bool(config["model"].get("use_text", True))
    cache = open_text_cache(config) if use_text else None
    if cache is not None:
        source = "cache"
    else:
        source = resolve_text_source(config, first) if use_text else "none"
    if source != "encoder":
        text_encoder = None
    elif text_encoder is None:
        text_encoder = default_text_encoder(config)
    batches = HostBatches(_Peeked(first, iterator), source, use_text, text_encoder, cache)
    return batches, text_encoder


class StepLoop:
    """Runs steps from ``start`` to ``config.train.num_steps``: metrics (read one step late, so
    the host never waits on the step in flight), checkpoints, samples, stop requests."""

    def __init__(self, config: Mapping, *, checkpointer, logger, iterator, preview, mesh, rules):
        train_cfg = config["train"]
        self.config = config
        self.config_dict = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        self.total = int(train_cfg["num_steps"])
        self.log_every = int(train_cfg["log_every"])
        self.checkpoint_every = int(train_cfg["checkpoint_every"])
        self.sample_every = int(train_cfg["sample_every"])
        self.max_nonfinite = int(train_cfg["max_nonfinite_steps"])
        self.seed = int(train_cfg["seed"])
        self.checkpointer, self.logger, self.iterator = checkpointer, logger, iterator
        self.preview, self.mesh, self.rules = preview, mesh, rules
        self.window = _MetricWindow()

    def absorb(self, step: int, device_metrics: Mapping[str, jax.Array]) -> None:
        """Host-side bookkeeping of a finished step; raises NonFiniteError on a long NaN run."""
        metrics = {k: float(v) for k, v in jax.device_get(device_metrics).items()}
        self.window.add(metrics)
        self.logger.step(step, metrics["loss"])
        if step % self.log_every == 0 or step == self.total:
            self.logger.scalars(step, self.window.summary(time.perf_counter()))
            self.window.reset(time.perf_counter())
        run = int(metrics["nonfinite_run"])
        if run >= self.max_nonfinite:
            raise NonFiniteError(nonfinite_message(step, run, int(metrics["nonfinite_total"])))

    def save(self, state: TrainState) -> None:
        get_state = getattr(self.iterator, "get_state", None)
        data_state = get_state() if get_state is not None else None
        self.checkpointer.save(state, config=self.config_dict, data_state=data_state)

    def samples(self, state: TrainState, step: int, batch: Any, encoder_params: Any) -> None:
        key = jax.random.fold_in(jax.random.PRNGKey(self.seed), step)
        videos = jax.device_get(self.preview(state.ema_params, batch, encoder_params, key))
        self.logger.samples(step, np.asarray(videos), float(self.config["stage"]["fps"]))

    def run(
        self, state: TrainState, step_fn: Any, batches: HostBatches, encoder_params: Any
    ) -> TrainState:
        step = int(jax.device_get(state.step))
        pending = None
        with StopRequest() as stop_requested:
            while step < self.total:
                try:
                    host_batch = next(batches)
                except StopIteration:
                    self.logger.message(f"the data ran out after step {step}")
                    self.save(state)
                    break
                batch = make_global_batch(host_batch, self.mesh, self.rules)
                state, metrics = step_fn(state, batch, encoder_params)
                step += 1
                if pending is not None:
                    self.absorb(*pending)
                pending = (step, metrics)
                stopping = stop_requested(step)
                if stopping or step % self.checkpoint_every == 0 or step == self.total:
                    self.save(state)
                if self.preview is not None and step % self.sample_every == 0:
                    self.samples(state, step, batch, encoder_params)
                if stopping:
                    self.logger.message(f"stop requested: saved step {step}, exiting")
                    break
            if pending is not None:
                self.absorb(*pending)
        return state


def train(
    config: Any,
    workdir: str | epath.Path,
    *,
    devices: list | None = None,
    model: Any = None,
    text_encoder: Any = None,
    data_iterator: Iterator | None = None,
    data_dir: str | None = None,
    progress_bar: bool = True,
    init_params: Any = None,
) -> TrainState:
    """Train ``config``'s stage in ``<workdir>/<stage>/``, resuming from its latest checkpoint.

    ``init_params``: where the stage has no checkpoint yet, start from these params (e.g. an
    exported stage's, to train it further) instead of at random; they must fit the model.

    Stops after ``config.train.num_steps`` steps, or at the next step after SIGTERM (having
    saved a checkpoint); raises NonFiniteError after ``train.max_nonfinite_steps`` NaN/inf steps
    in a row. Config mistakes raise ValueError before anything is compiled. Returns the final
    train state.
    """
    check_config(config)
    train_cfg = config["train"]
    mesh = make_mesh(config["mesh"], devices)
    rules = axis_rules(config["mesh"])
    check_global_batch(int(config["data"]["batch_size"]), mesh, rules)
    iterator = (
        data_iterator if data_iterator is not None else default_data_iterator(config, data_dir)
    )
    if model is None:
        model = VideoUNet.from_config(config["model"])

    stage_dir = epath.Path(workdir) / config["stage"]["name"]
    tx = make_optimizer(train_cfg)
    inputs = example_inputs(config)
    init_state, state_shardings, abstract = sharded_state_init(
        lambda key: model.init(key, **inputs)["params"], tx, mesh, rules
    )
    checkpointer = Checkpointer(
        stage_dir,
        keep=int(train_cfg["keep_checkpoints"]),
        async_save=bool(train_cfg["async_checkpointing"]),
    )
    try:
        state = restore_or_init(
            checkpointer, abstract, init_state, iterator, int(train_cfg["seed"]), init_params
        )
        start = int(jax.device_get(state.step))
        if start >= int(train_cfg["num_steps"]):
            return state
        batches, text_encoder = text_conditioning(config, iterator, text_encoder)
        encoder_params, encoder_shardings = encoder_placement(text_encoder, mesh, rules)
        step_fn = jit_train_step(
            make_train_step(model.apply, tx, config, rules, text_encoder=text_encoder),
            state_shardings,
            encoder_shardings,
            mesh,
            rules,
        )
        preview = None
        if int(train_cfg["sample_every"]) > 0:
            preview = jit_preview_sampler(
                make_preview_sampler(model.apply, config, rules, text_encoder=text_encoder),
                state_shardings.ema_params,
                encoder_shardings,
                mesh,
                rules,
            )
        logger = TrainLogger(
            stage_dir / "logs",
            start_step=start,
            total_steps=int(train_cfg["num_steps"]),
            enabled=jax.process_index() == 0,
            progress_bar=progress_bar,
        )
        loop = StepLoop(
            config,
            checkpointer=checkpointer,
            logger=logger,
            iterator=iterator,
            preview=preview,
            mesh=mesh,
            rules=rules,
        )
        try:
            with mesh_context(mesh, rules):
                return loop.run(state, step_fn, batches, encoder_params)
        finally:
            logger.close()
    finally:
        checkpointer.close()
