"""Loading ml_collections configs from ``path/to/file.py:key=value,key=value`` strings.

Each config file defines ``get_config(arg: str | None) -> ConfigDict``; the text after the
colon is handed to it unchanged, and :func:`parse_config_arg` turns it into a dict.

The configs ship inside the package (imagen_video_jax/configs/). ``configs/<name>.py`` names
the bundled config ``<name>`` unless a file of that path exists (relative to the current
directory), so ``--config configs/imagen_video.py:stage=base`` works from any directory and
from an installed package, and a local copy of a config can still be edited and used.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types
from pathlib import Path

import ml_collections

BUNDLED_DIR = Path(__file__).resolve().parent / "configs"
SHORTHAND_DIR = "configs"  # configs/<name>.py: the bundled config <name>


def parse_config_arg(arg: str | None, defaults: dict[str, str]) -> dict[str, str]:
    """Parse ``"stage=ssr1,size=tiny"`` over ``defaults``; unknown keys raise ValueError."""
    values = dict(defaults)
    for item in (arg or "").split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"config argument {item!r} must look like key=value")
        if key not in defaults:
            raise ValueError(f"unknown config argument {key!r}; expected one of {sorted(defaults)}")
        values[key] = value
    return values


def load_config(
    spec: str, overrides: list[str] | tuple[str, ...] = ()
) -> ml_collections.ConfigDict:
    """Load ``file.py[:arg]`` and apply ``a.b=value`` overrides (Python literals or strings)."""
    path, _, arg = spec.partition(":")
    module = load_config_module(path)
    if not hasattr(module, "get_config"):
        raise ValueError(f"config file {path!r} defines no get_config(arg)")
    config = module.get_config(arg or None)
    for override in overrides:
        apply_override(config, override)
    return config


def bundled_configs() -> list[str]:
    """Names of the configs shipped in the package (imagen_video, vdm, ...)."""
    return sorted(p.stem for p in BUNDLED_DIR.glob("*.py") if p.stem != "__init__")


def bundled_config_file(name: str) -> Path:
    """The file of the bundled config ``name`` (e.g. 'imagen_video')."""
    path = BUNDLED_DIR / f"{name}.py"
    if name == "__init__" or not path.is_file():
        raise FileNotFoundError(
            f"no bundled config {name!r}; the bundled ones: {bundled_configs()}"
        )
    return path


def resolve_config_file(path: str | os.PathLike) -> str:
    """``path`` when that file exists; else ``configs/<name>.py`` is the bundled config."""
    if os.path.isfile(path):
        return str(path)
    parts = Path(path).parts
    if len(parts) == 2 and parts[0] == SHORTHAND_DIR and parts[1].endswith(".py"):
        name = parts[1][: -len(".py")]
        if name in bundled_configs():
            return str(bundled_config_file(name))
    raise FileNotFoundError(
        f"config file {str(path)!r} not found; the bundled configs are "
        + ", ".join(f"{SHORTHAND_DIR}/{name}.py" for name in bundled_configs())
    )


def load_config_module(path: str | os.PathLike) -> types.ModuleType:
    """Import a config file by path (``configs/<name>.py``: see :func:`resolve_config_file`)."""
    path = resolve_config_file(path)
    module_name = "_imagen_video_config_" + os.path.splitext(os.path.basename(path))[0]
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module
    module_spec.loader.exec_module(module)
    return module


def apply_override(config: ml_collections.ConfigDict, override: str) -> None:
    """Set ``a.b.c=value`` in place; the value is a Python literal or else a plain string."""
    import ast

    key, sep, text = override.partition("=")
    if not sep:
        raise ValueError(f"override {override!r} must look like key=value")
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
        if part not in node:
            raise ValueError(f"override {key!r}: no config field {part!r}")
        node = node[part]
    if leaf not in node:
        raise ValueError(f"override {key!r}: no config field {leaf!r}")
    if isinstance(node[leaf], tuple) and isinstance(value, list):
        value = tuple(value)
    node[leaf] = value
