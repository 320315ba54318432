"""YAML presets: named sets of settings in `conf/<name>.yaml` (or any .yaml file)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .schema import ConfigError

CONF_DIR = Path(__file__).resolve().parent.parent.parent / "conf"


def preset_path(preset: str, conf_dir: Path = CONF_DIR) -> Path:
    """`conf/<preset>.yaml`, or `preset` itself when it is a path to a .yaml file."""
    candidate = Path(preset).expanduser()
    if candidate.suffix in (".yaml", ".yml"):
        if candidate.is_file():
            return candidate
    else:
        candidate = conf_dir / f"{preset}.yaml"
        if candidate.is_file():
            return candidate
    available = sorted(p.stem for p in conf_dir.glob("*.yaml")) if conf_dir.is_dir() else []
    raise ConfigError(
        f"preset={preset!r} is not allowed: must be one of {', '.join(available) or '(none)'} "
        f"(files in {conf_dir}) or a path to a .yaml file"
    )


def load_preset(preset: str, conf_dir: Path = CONF_DIR) -> dict[str, Any]:
    """The key/value pairs of a YAML preset (kebab-case keys, scalar values)."""
    path = preset_path(preset, conf_dir)
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"preset={preset!r} is not allowed: {path} is not valid YAML ({error})") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"preset={preset!r} is not allowed: {path} must hold key: value pairs")
    if "preset" in loaded:
        raise ConfigError(f"preset={preset!r} is not allowed: {path} may not name another preset")
    return loaded
