"""The run's settings: every room's settings group, composed into one typed, validated whole.

Precedence: the defaults the groups declare (mirrored, by generation, in pyproject's
`[tool.flwr.app.config]`) < the YAML preset named by `preset` (from `conf/`) <
explicit `--run-config` overrides. Keys are flat (`lr-img`, `ipc`); each belongs to
exactly one group: the room that uses it declares it (`methods/gradient_matching`,
`defences/ldpo_rld`, ...). `settings.lr_img` reads a value, `settings.group(Group)` gives
the room's typed group object. Every bad value stops the run with one line naming the
key, the value and what is allowed. No Flower import.

The rooms' registries are imported when the groups are first needed (`settings_groups`),
not when this module is: every room imports `settings.schema`, which runs this package's
`__init__` first.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from .presets import CONF_DIR, load_preset, preset_path
from .run_config import parse_run_config
from .schema import ConfigError, SettingsGroup, field_of, key_of

__all__ = [
    "CONF_DIR",
    "ConfigError",
    "Settings",
    "SettingsGroup",
    "load_preset",
    "parse_run_config",
    "preset_path",
    "resolve_settings",
    "settings_from_run_configs",
    "settings_groups",
]

Group = TypeVar("Group", bound=SettingsGroup)


@functools.cache
def builtin_groups() -> tuple[type[SettingsGroup], ...]:
    """Every settings group of the app, in the order the README lists them: the run, the
    data and the synthesis first, then each registered method's, defence's, behaviour's
    and the aggregators' own."""
    from ..aggregators import AggregationSettings
    from ..aggregators.bounds import BoundsSettings
    from ..augmentation.settings import AugmentationSettings
    from ..behaviours.registry import BEHAVIOURS, BehaviourSettings
    from ..data.settings import DataSettings
    from ..defences import DEFENCES, DefenceSettings
    from ..evaluation.settings import EvaluationSettings
    from ..methods import METHODS, SynthesisSettings
    from ..models.settings import NetworkSettings
    from .run import FederationSettings, RunSettings

    ordered = [
        RunSettings,
        DataSettings,
        SynthesisSettings,
        *(method.settings_group for method in METHODS.values()),
        AugmentationSettings,
        NetworkSettings,
        FederationSettings,
        AggregationSettings,
        BoundsSettings,
        EvaluationSettings,
        DefenceSettings,
        *(defence.settings_group for defence in DEFENCES.values()),
        BehaviourSettings,
        *(behaviour.settings_group for behaviour in BEHAVIOURS.values()),
    ]
    return tuple(dict.fromkeys(group for group in ordered if group is not None))


def settings_groups(method: str = "", extra: Iterable[type[SettingsGroup]] = ()) -> tuple[type[SettingsGroup], ...]:
    """The built-in groups, plus the group of a method given as `module:Class` (a plug-in
    outside the package) and `extra` groups (e.g. the lab's centralized baseline)."""
    groups = list(builtin_groups())
    if method:
        from ..methods import is_builtin_method, load_method

        if not is_builtin_method(method):
            try:
                plugin = load_method(method)
            except ValueError as error:
                raise ConfigError(str(error)) from None
            if plugin.settings_group is not None:
                groups.append(plugin.settings_group)
    groups.extend(extra)
    groups = list(dict.fromkeys(groups))
    seen: dict[str, str] = {}
    for group in groups:
        for key in group.keys():
            if key in seen:
                raise ConfigError(f"setting {key!r} is declared twice: by {seen[key]} and by {group.__name__}")
            seen[key] = group.__name__
    return tuple(groups)


class Settings:
    """Every setting of a run, validated: `settings.ipc`, or `settings.group(Group)`."""

    __slots__ = ("_groups", "_owners")

    def __init__(self, groups: Mapping[type[SettingsGroup], SettingsGroup]) -> None:
        owners = {f.name: group for group in groups.values() for f in group.settings_fields()}
        object.__setattr__(self, "_groups", dict(groups))
        object.__setattr__(self, "_owners", owners)

    # ----- reading -----
    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return getattr(self._owners[name], name)
        except KeyError:
            raise AttributeError(f"no setting {key_of(name)!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("settings are read-only: use settings.replace(...)")

    def group(self, group_class: type[Group]) -> Group:
        """The typed object of one group (e.g. a method's hyperparameters)."""
        try:
            return self._groups[group_class]  # type: ignore[return-value]
        except KeyError:
            raise KeyError(f"this run has no settings group {group_class.__name__}") from None

    def group_classes(self) -> tuple[type[SettingsGroup], ...]:
        return tuple(self._groups)

    def to_record(self) -> dict[str, Any]:
        """Run-config style mapping (kebab-case keys), e.g. to ship to clients."""
        record: dict[str, Any] = {}
        for group in self._groups.values():
            record.update(group.values())
        return record

    def replace(self, **changes: Any) -> Settings:
        """A validated copy with some values changed (snake_case or kebab-case names)."""
        values = self.to_record() | {key_of(name): value for name, value in changes.items()}
        return Settings.from_mapping(values, extra_groups=self._extra_groups())

    def _extra_groups(self) -> tuple[type[SettingsGroup], ...]:
        builtin = set(settings_groups(self.method))
        return tuple(group for group in self._groups if group not in builtin)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Settings) and self.to_record() == other.to_record()

    def __hash__(self) -> int:
        return hash(tuple(sorted((k, str(v)) for k, v in self.to_record().items())))

    def __repr__(self) -> str:
        return f"Settings({self.to_record()!r})"

    def __reduce__(self) -> tuple:
        return (_rebuild, (self.to_record(), self._extra_groups()))

    # ----- derived, typed views for the core modules -----
    @property
    def data(self):
        """The data group (`DataSettings`): the task, where the data is, the partition."""
        return self._owners["dataset"]

    @property
    def dataset_spec(self):
        """The task's classes, image shape and normalisation (`DatasetSpec`)."""
        return self.data.spec

    @property
    def class_name_list(self) -> tuple[str, ...]:
        return self.data.class_name_list

    @property
    def task(self):
        """What every node's data must fit (`Task`)."""
        return self.data.task(self.seed)

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser()

    @property
    def output_path(self) -> Path:
        return Path(self.output_dir).expanduser()

    @property
    def network_spec(self):
        """The ConvNet used for distillation and evaluation (`NetworkSpec`)."""
        return self._owners["net_width"].spec(self.dataset_spec)

    @property
    def eval_params(self):
        """The evaluation protocol with its dataset defaults resolved (`EvalParams`)."""
        return self._owners["num_eval"].params(self.dataset, self._owners["dsa_strategy"].params(self.dataset))

    @property
    def evaluates_on_server(self) -> bool:
        return self.num_eval > 0 and self.eval_mode in ("server", "both")

    @property
    def evaluates_federated(self) -> bool:
        return self.num_eval > 0 and self.eval_mode in ("federated", "both")

    # ----- building -----
    @classmethod
    def from_mapping(
        cls,
        values: Mapping[str, Any],
        ignore: tuple[str, ...] = (),
        extra_groups: Iterable[type[SettingsGroup]] = (),
    ) -> Settings:
        """Validate a complete or partial kebab-case mapping over the defaults."""
        values = {key: value for key, value in values.items() if key not in ignore}
        method = values.get("method", "")
        groups = settings_groups(method if isinstance(method, str) else "", extra_groups)
        known = {key for group in groups for key in group.keys()}
        for key in values:
            if key not in known:
                raise ConfigError(f"unknown setting {key!r}: known settings are " + ", ".join(
                    key for group in groups for key in group.keys()
                ))
        settings = cls({group: group.build(values) for group in groups})
        for group in settings._groups.values():
            problem = group.check(settings)
            if problem:
                raise ConfigError(problem)
        return settings


def _rebuild(record: dict[str, Any], extra_groups: tuple[type[SettingsGroup], ...]) -> Settings:
    return Settings.from_mapping(record, extra_groups=extra_groups)


def resolve_settings(
    run_config: Mapping[str, Any],
    overrides: Mapping[str, Any] | None = None,
    conf_dir: Path = CONF_DIR,
    extra_groups: Iterable[type[SettingsGroup]] = (),
) -> Settings:
    """Settings from Flower's fused run config and the explicit overrides in it.

    `run_config` is pyproject defaults already fused with `--run-config` overrides (as
    Flower hands it over); `overrides` are those explicit overrides alone, so that they
    win over the preset while pyproject defaults lose to it.
    """
    overrides = dict(overrides or {})
    layered = dict(run_config)
    preset = str(layered.get("preset", default_of("preset")))
    if preset:
        layered.update(load_preset(preset, conf_dir))
        layered.update(overrides)
    return Settings.from_mapping(layered, extra_groups=extra_groups)


def settings_from_run_configs(texts: list[str], extra_groups: Iterable[type[SettingsGroup]] = ()) -> Settings:
    """Settings from `--run-config` texts (later texts win), resolved as `flwr run` does:
    for commands that run the app's code without Flower (the lab's)."""
    extra_groups = tuple(extra_groups)
    overrides: dict[str, Any] = {}
    for text in texts:
        overrides.update(parse_run_config(text))
    defaults: dict[str, Any] = {}
    for group in settings_groups(str(overrides.get("method", "")), extra_groups):
        defaults.update(group.defaults())
    return resolve_settings(defaults | overrides, overrides, extra_groups=extra_groups)


def default_of(key: str) -> Any:
    """The declared default of a built-in setting."""
    for group in builtin_groups():
        defaults = group.defaults()
        if key in defaults:
            return defaults[key]
    raise KeyError(key)


__all__ += ["builtin_groups", "default_of", "field_of", "key_of"]
