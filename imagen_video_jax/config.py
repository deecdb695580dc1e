"""Loading ml_collections configs from ``path/to/file.py:key=value,key=value`` strings.

Each config file defines ``get_config(arg: str | None) -> ConfigDict``; the text after the
colon is handed to it unchanged, and :func:`parse_config_arg` turns it into a dict.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types

import ml_collections


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


def load_config_module(path: str) -> types.ModuleType:
    """Import a config file by path (config files may build on each other this way)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"config file {path!r} not found (expected e.g. configs/imagen_video.py)"
        )
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
