"""Finding, reading and writing the per-stage checkpoints a cascade samples from.

A cascade folder holds one subfolder per stage, named as the stage (``base``, ``tsr1``, ...).
Each is either what ``imagen-video train`` writes (orbax steps ``<stage>/<step>/``, of which
the newest EMA params are read) or the compact sampling format of :func:`save_stage`:
``<stage>/config.json`` and ``<stage>/params.npz`` (EMA params only, float16 or float32), which
is what the bundled demo cascade ships. Distilled students load alike: their config says so.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import traverse_util

from imagen_video_jax.stages import STAGE_ORDER

CONFIG_FILE = "config.json"
PARAMS_FILE = "params.npz"
SAVE_DTYPES = ("float16", "float32")
_SEPARATOR = "/"


def is_compact(stage_dir: Path) -> bool:
    return (stage_dir / PARAMS_FILE).is_file()


def _has_train_steps(stage_dir: Path) -> bool:
    return any(child.is_dir() and child.name.isdigit() for child in stage_dir.iterdir())


def _expected_layout(path: Path, name: str) -> str:
    return (
        f"{path / name}/<step>/ as `imagen-video train --workdir {path}` writes, or "
        f"{path / name / PARAMS_FILE} with {CONFIG_FILE}"
    )


def stage_dirs(path: str | Path, stop_after: str | None = None) -> dict[str, Path]:
    """``{stage: folder}`` of the cascade in ``path``, in sampling order: the stages present
    from ``base`` on (up to ``stop_after``). Clear errors name a missing stage and its path."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"cascade checkpoint folder {path} does not exist")
    if stop_after is not None and stop_after not in STAGE_ORDER:
        raise ValueError(f"unknown stage {stop_after!r}; expected one of {list(STAGE_ORDER)}")
    present = [name for name in STAGE_ORDER if (path / name).is_dir()]
    if stop_after is not None:
        wanted = STAGE_ORDER[: STAGE_ORDER.index(stop_after) + 1]
    elif present:
        wanted = STAGE_ORDER[: STAGE_ORDER.index(present[-1]) + 1]
    else:
        raise FileNotFoundError(
            f"no stage checkpoints in {path}: expected subfolders named {', '.join(STAGE_ORDER)} "
            f"(at least base), e.g. {_expected_layout(path, 'base')}"
        )
    found = {}
    for name in wanted:
        stage_dir = path / name
        if not stage_dir.is_dir():
            later = [n for n in present if STAGE_ORDER.index(n) > STAGE_ORDER.index(name)]
            reason = f" (later stage {later[0]!r} is present)" if later else ""
            raise FileNotFoundError(
                f"missing checkpoint of stage {name!r}{reason}: {stage_dir} does not exist; "
                f"expected {_expected_layout(path, name)}"
            )
        if not (is_compact(stage_dir) or _has_train_steps(stage_dir)):
            raise FileNotFoundError(
                f"no checkpoint of stage {name!r} in {stage_dir}: expected "
                f"{_expected_layout(path, name)}"
            )
        found[name] = stage_dir
    return found


def single_device_sharding() -> jax.sharding.Sharding:
    """Sampling params live on one device (the default one)."""
    return jax.sharding.SingleDeviceSharding(jax.devices()[0])


def find_stage_dir(folder: str | Path, stage: str, what: str = "stage") -> Path:
    """The folder of ``stage``'s checkpoint inside ``folder`` (a train workdir or an exported
    cascade), or ``folder`` itself when it is a stage folder; FileNotFoundError naming the
    layouts otherwise. ``what`` names the checkpoint's use in the messages (e.g. 'teacher')."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"{what} folder {folder} does not exist")
    if (folder / stage).is_dir():
        return folder / stage
    if is_compact(folder) or _has_train_steps(folder):
        return folder
    raise FileNotFoundError(
        f"no {what} checkpoint of stage {stage!r} in {folder}: expected {folder / stage}/<step>/ "
        f"(an `imagen-video train` workdir), {folder / stage / PARAMS_FILE} with {CONFIG_FILE} "
        "(an exported cascade), or the stage folder itself"
    )


def load_stage(stage_dir: str | Path, step: int | None = None) -> tuple[Any, dict]:
    """``(params float32, config dict)`` of one stage folder (compact or train checkpoint)."""
    stage_dir = Path(stage_dir)
    if is_compact(stage_dir):
        config = json.loads((stage_dir / CONFIG_FILE).read_text())
        with np.load(stage_dir / PARAMS_FILE) as arrays:
            flat = {tuple(k.split(_SEPARATOR)): arrays[k].astype(np.float32) for k in arrays.files}
        params = traverse_util.unflatten_dict(flat)
        return jax.device_put(params, single_device_sharding()), config
    from imagen_video_jax.train.checkpoint import load_params

    params, config, _ = load_params(stage_dir, step, sharding=single_device_sharding())
    params = jax.tree_util.tree_map(lambda p: p.astype(np.float32), params)
    return params, dict(config)


def save_stage(
    stage_dir: str | Path, params: Any, config: Mapping[str, Any], dtype: str = "float16"
) -> int:
    """Write one stage in the compact format; returns the bytes written."""
    if dtype not in SAVE_DTYPES:
        raise ValueError(f"dtype must be one of {SAVE_DTYPES}, got {dtype!r}")
    stage_dir = Path(stage_dir)
    stage_dir.mkdir(parents=True, exist_ok=True)
    flat = traverse_util.flatten_dict(jax.device_get(params))
    arrays = {_SEPARATOR.join(map(str, k)): np.asarray(v).astype(dtype) for k, v in flat.items()}
    _check_representable(arrays, dtype, stage_dir.name)
    np.savez(stage_dir / PARAMS_FILE, **arrays)
    config = to_plain(config)
    if config.get("train", {}).get("text_cache"):
        # A path on the training machine: meaningless wherever the stage is sampled.
        config["train"]["text_cache"] = ""
    (stage_dir / CONFIG_FILE).write_text(json.dumps(config, indent=1))
    return sum((stage_dir / f).stat().st_size for f in (PARAMS_FILE, CONFIG_FILE))


def _check_representable(arrays: Mapping[str, np.ndarray], dtype: str, stage: str) -> None:
    for key, value in arrays.items():
        if not np.all(np.isfinite(value)):
            raise ValueError(
                f"stage {stage!r}: parameter {key} is not finite in {dtype} (out of range or "
                "NaN); save it as float32"
            )


def to_plain(config: Any) -> Any:
    """A config (ConfigDict, dict, tuples) as plain JSON-able dicts and lists."""
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    if isinstance(config, Mapping):
        return {str(k): to_plain(v) for k, v in config.items()}
    if isinstance(config, (list, tuple)):
        return [to_plain(v) for v in config]
    if isinstance(config, np.generic):
        return config.item()
    return config
