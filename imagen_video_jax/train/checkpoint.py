"""Orbax checkpoints of one stage in ``<workdir>/<stage>/<step>/``.

Each step folder holds the items 'params', 'ema_params', 'opt_state', 'progress' (step, RNG,
non-finite counters), 'config' (the run's config as JSON) and 'data' (each process's data
iterator state as JSON). Restoring takes target shardings, so a checkpoint written on one mesh
restores onto any other; :func:`load_params` reads only the (EMA) params for sampling.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

from imagen_video_jax.train.state import TrainState

STATE_ITEMS = ("params", "ema_params", "opt_state", "progress")
CONFIG_ITEM = "config"
DATA_ITEM = "data"

log = logging.getLogger(__name__)


class DataStateHandler(ocp.CheckpointHandler):
    """Saves each process's data-iterator state to ``process_<i>-of-<n>.json``.

    The state (a JSON-able dict, or bytes as grain's DataLoader gives) is taken when the save
    is requested, so an asynchronous save never sees the iterator move on.
    """

    @staticmethod
    def _path(directory: epath.Path) -> epath.Path:
        return (
            epath.Path(directory) / f"process_{jax.process_index()}-of-{jax.process_count()}.json"
        )

    def save(self, directory: epath.Path, args: DataStateSave) -> None:
        state = args.state
        record = {"bytes": state.decode()} if isinstance(state, bytes) else {"json": state}
        self._path(directory).write_text(json.dumps(record))

    def restore(self, directory: epath.Path, args: DataStateRestore | None = None) -> Any:
        path = self._path(directory)
        if not path.exists():
            return None
        record = json.loads(path.read_text())
        return record["bytes"].encode() if "bytes" in record else record["json"]

    def metadata(self, directory: epath.Path) -> None:
        return None

    def finalize(self, directory: epath.Path) -> None:
        pass

    def close(self) -> None:
        pass


@ocp.args.register_with_handler(DataStateHandler, for_save=True)
@dataclasses.dataclass
class DataStateSave(ocp.args.CheckpointArgs):
    state: Any


@ocp.args.register_with_handler(DataStateHandler, for_restore=True)
@dataclasses.dataclass
class DataStateRestore(ocp.args.CheckpointArgs):
    pass


def _progress(state: TrainState) -> dict[str, jax.Array]:
    return {
        "step": state.step,
        "rng": state.rng,
        "nonfinite_run": state.nonfinite_run,
        "nonfinite_total": state.nonfinite_total,
    }


def _state_items(state: TrainState) -> dict[str, Any]:
    return {
        "params": state.params,
        "ema_params": state.ema_params,
        "opt_state": state.opt_state,
        "progress": _progress(state),
    }


def _manager(
    directory: epath.Path, options: ocp.CheckpointManagerOptions | None = None
) -> ocp.CheckpointManager:
    """A manager that knows the handler of every item (so metadata and partial restores work).
    The path is made absolute: newer Orbax versions refuse relative ones."""
    handlers = {name: ocp.StandardCheckpointHandler() for name in STATE_ITEMS}
    handlers[CONFIG_ITEM] = ocp.JsonCheckpointHandler()
    handlers[DATA_ITEM] = DataStateHandler()
    return ocp.CheckpointManager(
        epath.Path(directory).absolute(), options=options, item_handlers=handlers
    )


class Checkpointer:
    """Saves and restores train states of one stage directory (async, newest ``keep`` kept)."""

    def __init__(self, directory: str | epath.Path, *, keep: int = 3, async_save: bool = True):
        self.directory = epath.Path(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=async_save, create=True
        )
        self.manager = _manager(self.directory, options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, state: TrainState, *, config: Mapping, data_state: Any = None) -> int:
        """Start saving ``state`` at its step (returns the step; the write may go on after)."""
        step = int(jax.device_get(state.step))
        items = {name: ocp.args.StandardSave(tree) for name, tree in _state_items(state).items()}
        items[CONFIG_ITEM] = ocp.args.JsonSave(dict(config))
        if data_state is not None:
            items[DATA_ITEM] = DataStateSave(data_state)
        self.manager.save(step, args=ocp.args.Composite(**items), force=True)
        return step

    def restore(self, abstract: TrainState, step: int | None = None) -> tuple[TrainState, Any]:
        """(state, data state or None) of ``step`` (default: latest), placed as ``abstract``'s
        shardings say."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        targets = _state_items(abstract)
        items = {name: ocp.args.StandardRestore(tree) for name, tree in targets.items()}
        if (self.directory / str(step) / DATA_ITEM).exists():
            items[DATA_ITEM] = DataStateRestore()
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        progress = restored["progress"]
        state = abstract.replace(
            params=restored["params"],
            ema_params=restored["ema_params"],
            opt_state=restored["opt_state"],
            **progress,
        )
        data_state = restored.get(DATA_ITEM) if DATA_ITEM in items else None
        if DATA_ITEM in items and data_state is None:
            log.warning(
                "checkpoint %s has no data state for process %d of %d (written with another "
                "process count); the data iterator starts afresh",
                step,
                jax.process_index(),
                jax.process_count(),
            )
        return state, data_state

    def wait(self) -> None:
        """Block until pending asynchronous saves are written."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def load_config(stage_dir: str | epath.Path, step: int | None = None) -> dict:
    """The config (as a dict) saved with a stage's checkpoint (default: the latest)."""
    manager = _manager(epath.Path(stage_dir))
    step = _existing_step(manager, stage_dir, step)
    return manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]


def load_params(
    stage_dir: str | epath.Path,
    step: int | None = None,
    *,
    ema: bool = True,
    sharding: jax.sharding.Sharding | None = None,
) -> tuple[Any, dict, int]:
    """``(params, config, step)`` of a stage's checkpoint for sampling: the EMA params by
    default, placed with ``sharding`` (default: replicated on this process's devices)."""
    manager = _manager(epath.Path(stage_dir))
    step = _existing_step(manager, stage_dir, step)
    item = "ema_params" if ema else "params"
    if sharding is None:
        devices = jax.local_devices()
        mesh = jax.sharding.Mesh(devices, ("replica",))
        sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    metadata = manager.item_metadata(step)[item]
    target = jax.tree_util.tree_map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), metadata
    )
    restored = manager.restore(
        step,
        args=ocp.args.Composite(
            **{item: ocp.args.StandardRestore(target), CONFIG_ITEM: ocp.args.JsonRestore()}
        ),
    )
    return restored[item], restored[CONFIG_ITEM], step


def _existing_step(manager: ocp.CheckpointManager, stage_dir: Any, step: int | None) -> int:
    steps = manager.all_steps()
    if not steps:
        raise FileNotFoundError(f"no checkpoint in {stage_dir} (expected <stage_dir>/<step>/)")
    if step is None:
        return max(steps)
    if step not in steps:
        raise FileNotFoundError(f"no checkpoint of step {step} in {stage_dir}; it has {steps}")
    return step
