"""`--run-config` text as `flwr run` takes it, for the commands that run without Flower."""

from __future__ import annotations

import shlex
import tomllib
from typing import Any

from .schema import ConfigError


def parse_run_config(text: str) -> dict[str, Any]:
    """Parse `flwr run --run-config` style 'k1=v1 k2="v 2"' pairs (TOML values)."""
    values: dict[str, Any] = {}
    for pair in shlex.split(text, posix=False):
        key, separator, raw = pair.partition("=")
        if not separator or not key:
            raise ConfigError(f"run-config entry {pair!r} is not allowed: must be key=value")
        try:
            values[key.strip()] = tomllib.loads(f"value = {raw}")["value"]
        except tomllib.TOMLDecodeError:
            raise ConfigError(
                f"{key.strip()}={raw} is not allowed: must be a TOML value (quote strings: 'text')"
            ) from None
    return values
