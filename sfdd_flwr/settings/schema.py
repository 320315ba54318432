"""How a room declares its settings: a frozen dataclass whose fields are the settings.

Field `foo_bar` is run-config key `foo-bar`; its default is the one source of that
setting's default (pyproject's `[tool.flwr.app.config]` and the README table are
generated from it and checked against it by the tests); its rule says what is allowed,
and a bad value fails with one line naming the key, the value and that rule. A group
may also check rules that involve other settings (`check`). No Flower import.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from . import Settings


class ConfigError(ValueError):
    """A configuration value is missing, of the wrong type, or out of range."""


@dataclass(frozen=True)
class Rule:
    """What a value must satisfy, and how the error line says so."""

    check: Callable[[Any], bool]
    allowed: str


def setting(default: Any, rule: Rule | None = None, help: str = "") -> Any:
    """A settings-group field: its default, its rule and its README line."""
    return dataclasses.field(default=default, metadata={"rule": rule, "help": help})


def choice(options: tuple[str, ...] | list[str]) -> Rule:
    return Rule(lambda v: v in options, "one of " + ", ".join(options))


def at_least(minimum: float) -> Rule:
    return Rule(lambda v: v >= minimum, f"a number >= {minimum}")


def in_open_interval(low: float, high: float) -> Rule:
    return Rule(lambda v: low < v < high, f"a number in ({low:g}, {high:g})")


POSITIVE = Rule(lambda v: v > 0 and math.isfinite(v), "a finite number > 0")
NON_NEGATIVE = Rule(lambda v: v >= 0 and math.isfinite(v), "a finite number >= 0")
ZERO_OR_POSITIVE_INT = Rule(lambda v: v >= 0, "0 or an integer >= 1")

_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def key_of(field_name: str) -> str:
    return field_name.replace("_", "-")


def field_of(key: str) -> str:
    return key.replace("-", "_")


class SettingsGroup:
    """Base of a settings group: subclass it as a frozen dataclass of `setting(...)` fields.

    `title` heads the group in the README; `check(settings)` returns why a combination
    with other groups' settings is not allowed, or None.
    """

    title: ClassVar[str] = ""

    def check(self, settings: Settings) -> str | None:
        return None

    @classmethod
    def settings_fields(cls) -> Iterator[dataclasses.Field]:
        return iter(dataclasses.fields(cls))

    @classmethod
    def keys(cls) -> list[str]:
        return [key_of(f.name) for f in dataclasses.fields(cls)]

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {key_of(f.name): f.default for f in dataclasses.fields(cls)}

    def values(self) -> dict[str, Any]:
        return {key_of(f.name): getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def build(cls, values: dict[str, Any]) -> SettingsGroup:
        """The group from kebab-case values (missing keys take their defaults), each value
        coerced to its default's type and checked against its rule."""
        parsed = {}
        for f in dataclasses.fields(cls):
            key = key_of(f.name)
            if key in values:
                parsed[f.name] = coerce(key, values[key], type(f.default))
        group = cls(**parsed)
        for f in dataclasses.fields(cls):
            rule = f.metadata.get("rule")
            value = getattr(group, f.name)
            if rule is not None and not rule.check(value):
                raise ConfigError(f"{key_of(f.name)}={value!r} is not allowed: must be {rule.allowed}")
        return group


def coerce(key: str, value: Any, kind: type) -> Any:
    """`value` as `kind` (bool, int, float or str), or a ConfigError naming the key."""
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(value, str):
        return value
    raise ConfigError(f"{key}={value!r} is not allowed: must be {_TYPE_NAMES[kind]}")
