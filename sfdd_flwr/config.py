"""The one place that turns raw configuration into a typed, validated `Settings`.

Precedence: built-in defaults (mirrored in pyproject's [tool.flwr.app.config]) <
the YAML preset named by `preset` (from `conf/`) < explicit `--run-config` overrides.
Every bad value stops the run with one line naming the key, the value and what is
allowed. Nothing else in the project reads raw configuration.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .data import DATASETS, PARTITIONINGS, DatasetSpec
from .distill import DistillParams, loops_for_ipc
from .evaluate import EvalParams, protocol_defaults
from .matching import MATCH_METRICS
from .models import ACTIVATIONS, NORMALIZATIONS, POOLINGS, NetworkSpec
from .node_data import IMAGEFOLDER, Task
from .privacy.ldpo_rld import TARGET_MODES
from .privacy.local_dp import MECHANISMS

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"

EVAL_MODES = ("server", "federated", "both")
DEFENCES = ("none", "ldpo-rld", "local-dp")
AGGREGATORS = ("fedavg", "median", "trimmed-mean", "krum", "multi-krum")


class ConfigError(ValueError):
    """A configuration value is missing, of the wrong type, or out of range."""


@dataclass(frozen=True)
class Settings:
    """Every setting of a run; field `foo_bar` is run-config key `foo-bar`."""

    preset: str = "quickstart"
    seed: int = 0
    num_server_rounds: int = 30
    dataset: str = "mnist"
    data_dir: str = "~/.cache/sfdd-flwr/data"
    class_names: str = ""
    channels: int = 0
    image_size: str = ""
    norm_mean: str = ""
    norm_std: str = ""
    partitioning: str = "iid"
    dirichlet_beta: float = 0.5
    ipc: int = 1
    outer_loop: int = 0
    inner_loop: int = 0
    batch_real: int = 256
    lr_img: float = 0.1
    momentum_img: float = 0.5
    lr_net: float = 0.01
    batch_train: int = 256
    match_metric: str = "ours"
    persist_momentum: bool = True
    central_networks: int = 1
    net_width: int = 128
    net_hidden: int = 0
    net_depth: int = 3
    net_activation: str = "relu"
    net_norm: str = "instancenorm"
    net_pooling: str = "avgpooling"
    fraction_train: float = 1.0
    min_clients: int = 2
    round_timeout: float = 3600.0
    eval_every: int = 0
    eval_mode: str = "server"
    eval_timeout: float = 3600.0
    num_eval: int = 5
    eval_epochs: int = 0
    eval_augment: str = "auto"
    eval_lr: float = 0.01
    eval_batch: int = 256
    output_dir: str = "~/sfdd-flwr-outputs"
    run_name: str = ""
    resume_from: str = ""
    device: str = "auto"
    progress_seconds: float = 30.0
    defence: str = "none"
    ldpo_alpha: float = 0.5
    ldpo_k: int = 3
    ldpo_targets: str = "both"
    local_dp_clip: float = 1.0
    local_dp_noise: float = 0.1
    local_dp_mechanism: str = "gaussian"
    local_dp_delta: float = 1e-5
    malicious_clients: str = ""
    malicious_fraction: float = 0.0
    malicious_behaviour: str = "doorping"
    doorping_target: int = 0
    doorping_poison_fraction: float = 0.01
    doorping_trigger_size: int = 2
    doorping_trigger_steps: int = 1000
    doorping_clamp: bool = True
    doorping_collude: bool = False
    aggregator: str = "fedavg"
    trim_fraction: float = 0.2
    krum_malicious: int = 1
    multi_krum_select: int = 2

    # ----- derived, typed views for the core modules -----
    @property
    def dataset_spec(self) -> DatasetSpec:
        """The task: a named dataset's, or the one declared for `dataset='imagefolder'`."""
        if self.dataset != IMAGEFOLDER:
            return DATASETS[self.dataset]
        return DatasetSpec(
            name=IMAGEFOLDER,
            num_classes=len(self.class_name_list),
            channels=self.channels,
            image_size=parse_image_size(self.image_size),
            mean=parse_floats(self.norm_mean),
            std=parse_floats(self.norm_std),
        )

    @property
    def class_name_list(self) -> tuple[str, ...]:
        """Declared class folder names in label order (imagefolder), else ()."""
        return parse_class_names(self.class_names) if self.class_names else ()

    @property
    def task(self) -> Task:
        """What every node's data must fit (and where named datasets are by default)."""
        return Task(
            dataset=self.dataset,
            spec=self.dataset_spec,
            class_names=self.class_name_list,
            data_dir=str(self.data_path),
            partitioning=self.partitioning,
            dirichlet_beta=self.dirichlet_beta,
            seed=self.seed,
        )

    @property
    def evaluates_on_server(self) -> bool:
        return self.num_eval > 0 and self.eval_mode in ("server", "both")

    @property
    def evaluates_federated(self) -> bool:
        return self.num_eval > 0 and self.eval_mode in ("federated", "both")

    @property
    def network_spec(self) -> NetworkSpec:
        spec = self.dataset_spec
        return NetworkSpec(
            channels=spec.channels,
            num_classes=spec.num_classes,
            image_size=spec.image_size,
            width=self.net_width,
            depth=self.net_depth,
            activation=self.net_activation,
            normalization=self.net_norm,
            pooling=self.net_pooling,
            hidden=self.net_hidden,
        )

    @property
    def loops(self) -> tuple[int, int]:
        """(outer, inner): explicit values, or DC's table by IPC where 0."""
        table_outer, table_inner = loops_for_ipc(self.ipc)
        return (self.outer_loop or table_outer, self.inner_loop or table_inner)

    @property
    def distill_params(self) -> DistillParams:
        outer, inner = self.loops
        return DistillParams(
            outer_loop=outer,
            inner_loop=inner,
            batch_real=self.batch_real,
            lr_images=self.lr_img,
            momentum_images=self.momentum_img,
            lr_network=self.lr_net,
            batch_train=self.batch_train,
            metric=self.match_metric,
        )

    @property
    def eval_params(self) -> EvalParams:
        epochs, augment = protocol_defaults(self.dataset)
        if self.eval_augment != "auto":
            augment = self.eval_augment == "on"
        return EvalParams(
            epochs=self.eval_epochs or epochs,
            num_models=self.num_eval,
            lr=self.eval_lr,
            batch_size=self.eval_batch,
            augment=augment,
        )

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser()

    @property
    def output_path(self) -> Path:
        return Path(self.output_dir).expanduser()

    def to_record(self) -> dict[str, Any]:
        """Run-config style mapping (kebab-case keys), e.g. to ship to clients."""
        return {_key(f.name): getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], ignore: tuple[str, ...] = ()) -> Settings:
        """Validate a complete or partial kebab-case mapping over the defaults."""
        return _build(dict(values), ignore)


def _key(field_name: str) -> str:
    return field_name.replace("_", "-")


def parse_class_names(text: str) -> tuple[str, ...]:
    """'normal, pneumonia' -> ('normal', 'pneumonia'): at least two distinct folder names."""
    names = tuple(name.strip() for name in text.split(","))
    if len(names) < 2 or len(set(names)) != len(names):
        raise ValueError("need at least two distinct names")
    if any(not name or name.startswith(".") or "/" in name or "\\" in name for name in names):
        raise ValueError("names must be plain folder names")
    return names


def parse_image_size(text: str) -> tuple[int, int]:
    """'28x28' or '28' -> (height, width)."""
    parts = text.lower().replace(" ", "").split("x")
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or not all(part.isdigit() and int(part) >= 1 for part in parts):
        raise ValueError(f"not HEIGHTxWIDTH: {text!r}")
    return int(parts[0]), int(parts[1])


def parse_floats(text: str) -> tuple[float, ...]:
    """'0.5,0.5,0.5' -> (0.5, 0.5, 0.5): finite numbers."""
    values = tuple(float(part) for part in text.split(","))
    if not all(math.isfinite(value) for value in values):
        raise ValueError(f"not finite: {text!r}")
    return values


def _parses(parse: Callable[[str], Any], text: str) -> bool:
    try:
        parse(text)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class _Rule:
    check: Callable[[Any], bool]
    allowed: str


def _choice(options: tuple[str, ...] | list[str]) -> _Rule:
    return _Rule(lambda v: v in options, "one of " + ", ".join(options))


def _at_least(minimum: float) -> _Rule:
    return _Rule(lambda v: v >= minimum, f"a number >= {minimum}")


_POSITIVE = _Rule(lambda v: v > 0 and math.isfinite(v), "a finite number > 0")

_RULES: dict[str, _Rule] = {
    "seed": _at_least(0),
    "num_server_rounds": _at_least(1),
    "dataset": _choice([*sorted(DATASETS), IMAGEFOLDER]),
    "data_dir": _Rule(
        lambda v: bool(v)
        and (not Path(v).expanduser().exists() or (
            Path(v).expanduser().is_dir() and os.access(Path(v).expanduser(), os.R_OK | os.X_OK)
        )),
        "a readable directory (or a path where the dataset may be downloaded)",
    ),
    "class_names": _Rule(
        lambda v: v == "" or _parses(parse_class_names, v),
        "'' or the class folder names in label order, comma-separated, at least two, "
        "distinct (e.g. 'normal,pneumonia')",
    ),
    "channels": _Rule(lambda v: v in (0, 1, 3), "0 (the named dataset's), 1 or 3"),
    "image_size": _Rule(
        lambda v: v == "" or _parses(parse_image_size, v),
        "'' or HEIGHTxWIDTH in pixels (e.g. '28x28'; one number for square images)",
    ),
    "norm_mean": _Rule(
        lambda v: v == "" or _parses(parse_floats, v),
        "'' or one number per channel, comma-separated (e.g. '0.5' or '0.5,0.5,0.5')",
    ),
    "norm_std": _Rule(
        lambda v: v == "" or (_parses(parse_floats, v) and min(parse_floats(v)) > 0),
        "'' or one number > 0 per channel, comma-separated (e.g. '0.25' or '0.2,0.2,0.2')",
    ),
    "partitioning": _choice(PARTITIONINGS),
    "dirichlet_beta": _POSITIVE,
    "ipc": _at_least(1),
    "outer_loop": _Rule(lambda v: v >= 0, "0 (DC table by IPC) or an integer >= 1"),
    "inner_loop": _Rule(lambda v: v >= 0, "0 (DC table by IPC) or an integer >= 1"),
    "batch_real": _at_least(1),
    "central_networks": _at_least(1),
    "lr_img": _POSITIVE,
    "momentum_img": _Rule(lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "lr_net": _POSITIVE,
    "batch_train": _at_least(1),
    "match_metric": _choice(MATCH_METRICS),
    "net_width": _at_least(1),
    "net_hidden": _Rule(lambda v: v >= 0, "0 (DC's ConvNet) or the width of a hidden dense layer (Doorping's reference: 192)"),
    "net_depth": _at_least(1),
    "net_activation": _choice(ACTIVATIONS),
    "net_norm": _choice(NORMALIZATIONS),
    "net_pooling": _choice(POOLINGS),
    "fraction_train": _Rule(lambda v: 0 < v <= 1, "a number in (0, 1]"),
    "min_clients": _at_least(1),
    "round_timeout": _POSITIVE,
    "eval_every": _Rule(lambda v: v >= 0, "0 (evaluate only at the end) or an integer >= 1"),
    "eval_mode": _choice(EVAL_MODES),
    "eval_timeout": _POSITIVE,
    "num_eval": _Rule(lambda v: v >= 0, "0 (no evaluation, pictures only) or an integer >= 1"),
    "eval_epochs": _Rule(lambda v: v >= 0, "0 (protocol default) or an integer >= 1"),
    "eval_augment": _choice(("auto", "on", "off")),
    "eval_lr": _POSITIVE,
    "eval_batch": _at_least(1),
    "output_dir": _Rule(
        lambda v: Path(v).expanduser().is_absolute(),
        "an absolute path (apps run in the SuperLink's working directory)",
    ),
    "resume_from": _Rule(
        lambda v: v == "" or (Path(v).expanduser() / "synthetic_set.pt").is_file(),
        "'' or a run directory holding synthetic_set.pt",
    ),
    "device": _choice(("auto", "cpu", "cuda")),
    "progress_seconds": _POSITIVE,
    "defence": _choice(DEFENCES),
    "ldpo_alpha": _Rule(lambda v: 0 < v < 1, "a number in (0, 1)"),
    "ldpo_k": _at_least(1),
    "ldpo_targets": _choice(TARGET_MODES),
    "local_dp_clip": _POSITIVE,
    "local_dp_noise": _Rule(lambda v: v >= 0 and math.isfinite(v), "a finite number >= 0"),
    "local_dp_mechanism": _choice(MECHANISMS),
    "local_dp_delta": _Rule(lambda v: 0 < v < 1, "a number in (0, 1)"),
    "malicious_clients": _Rule(
        lambda v: v == "" or all(part.strip().isdigit() for part in v.split(",")),
        "'' or comma-separated partition ids such as '0,3'",
    ),
    "malicious_fraction": _Rule(lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    "malicious_behaviour": _Rule(
        lambda v: _known_behaviour(v), "a registered behaviour (honest, doorping, naive-backdoor) or module.path:ClassName"
    ),
    "doorping_target": _at_least(0),
    "doorping_poison_fraction": _Rule(lambda v: 0 < v <= 1, "a number in (0, 1]"),
    "doorping_trigger_size": _at_least(1),
    "doorping_trigger_steps": _at_least(1),
    "aggregator": _choice(AGGREGATORS),
    "trim_fraction": _Rule(lambda v: 0 <= v < 0.5, "a number in [0, 0.5)"),
    "krum_malicious": _at_least(0),
    "multi_krum_select": _at_least(1),
}


def _known_behaviour(name: str) -> bool:
    from .behaviours import is_behaviour_name  # behaviours imports this module

    return is_behaviour_name(name)


def _check_combinations(settings: Settings) -> None:
    """Rules that involve several settings (checked for the features a run turns on)."""
    classes = settings.dataset_spec.num_classes
    if settings.defence == "ldpo-rld" and settings.ldpo_k > classes - 1:
        raise ConfigError(
            f"ldpo-k={settings.ldpo_k} is not allowed: must be at most num classes - 1 = {classes - 1}"
        )
    if settings.malicious_clients or settings.malicious_fraction > 0:
        backdoor_problem = doorping_problem(settings)
        if backdoor_problem:
            raise ConfigError(backdoor_problem)


def doorping_problem(settings: Settings) -> str | None:
    """Why the Doorping settings do not fit the task, or None (also checked on the nodes)."""
    classes = settings.dataset_spec.num_classes
    if settings.doorping_target >= classes:
        return (
            f"doorping-target={settings.doorping_target} is not allowed: must be a class of "
            f"{settings.dataset} (0..{classes - 1})"
        )
    if settings.doorping_trigger_size + 1 > min(settings.dataset_spec.image_size):
        return (
            f"doorping-trigger-size={settings.doorping_trigger_size} is not allowed: the patch "
            "and its 1 px margin must fit in the image"
        )
    return None


_TASK_FIELDS = ("class_names", "channels", "image_size", "norm_mean", "norm_std")


def _task_problem(settings: Settings) -> str | None:
    """Why the task declaration does not fit `dataset`, or None.

    A named dataset brings its own classes, size and normalisation; an ImageFolder task
    must declare all of them, with one mean and one std per channel.
    """
    if settings.dataset != IMAGEFOLDER:
        for name in _TASK_FIELDS:
            value = getattr(settings, name)
            if value != getattr(Settings, name):
                return (
                    f"{_key(name)}={value!r} is not allowed: must be left unset unless "
                    f"dataset='{IMAGEFOLDER}' ({settings.dataset} defines its own classes, "
                    "image size and normalisation)"
                )
        return None
    for name in _TASK_FIELDS:
        value = getattr(settings, name)
        if value == getattr(Settings, name):
            return (
                f"{_key(name)}={value!r} is not allowed: must be set when "
                f"dataset='{IMAGEFOLDER}' (the task declares class-names, channels, "
                "image-size, norm-mean and norm-std)"
            )
    for name in ("norm_mean", "norm_std"):
        value = getattr(settings, name)
        if len(parse_floats(value)) != settings.channels:
            return (
                f"{_key(name)}={value!r} is not allowed: must hold one number per channel "
                f"(channels={settings.channels})"
            )
    return None


_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}
_TYPE_NAMES = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}


def _coerce(name: str, value: Any) -> Any:
    kind = _FIELDS[name].type
    key = _key(name)
    if kind == "bool":
        if isinstance(value, bool):
            return value
    elif kind == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif kind == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(value, str):
        return value
    raise ConfigError(f"{key}={value!r} is not allowed: must be {_TYPE_NAMES[kind]}")


def _build(values: dict[str, Any], ignore: tuple[str, ...] = ()) -> Settings:
    parsed: dict[str, Any] = {}
    for key, value in values.items():
        if key in ignore:
            continue
        name = key.replace("-", "_")
        if name not in _FIELDS:
            raise ConfigError(
                f"unknown setting {key!r}: known settings are "
                + ", ".join(_key(n) for n in _FIELDS)
            )
        parsed[name] = _coerce(name, value)
    settings = Settings(**parsed)
    for name, rule in _RULES.items():
        value = getattr(settings, name)
        if not rule.check(value):
            raise ConfigError(f"{_key(name)}={value!r} is not allowed: must be {rule.allowed}")
    problem = _task_problem(settings)
    if problem:
        raise ConfigError(problem)
    _check_combinations(settings)
    return settings


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
        raise ConfigError(f"preset={preset!r} is not allowed: {path} is not valid YAML ({error})")
    if not isinstance(loaded, dict):
        raise ConfigError(f"preset={preset!r} is not allowed: {path} must hold key: value pairs")
    if "preset" in loaded:
        raise ConfigError(f"preset={preset!r} is not allowed: {path} may not name another preset")
    return loaded


def resolve_settings(
    run_config: Mapping[str, Any],
    overrides: Mapping[str, Any] | None = None,
    conf_dir: Path = CONF_DIR,
) -> Settings:
    """Settings from Flower's fused run config and the explicit overrides in it.

    `run_config` is pyproject defaults already fused with `--run-config` overrides (as
    Flower hands it over); `overrides` are those explicit overrides alone, so that they
    win over the preset while pyproject defaults lose to it.
    """
    overrides = dict(overrides or {})
    layered = dict(run_config)
    preset = str(layered.get("preset", Settings.preset))
    if preset:
        for key, value in load_preset(preset, conf_dir).items():
            layered[key] = value
        layered.update(overrides)
    return _build(layered)
