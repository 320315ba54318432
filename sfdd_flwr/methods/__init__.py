"""Ways of building a synthetic set, one room each, behind one interface (`base`).

Built in: `gradient-matching` (DC, the SFDD paper; DSA with `dsa=true`),
`distribution-matching` (DM) and `diffusion` (a federated class-conditional diffusion
generator). Add one: a module (or package) with a
`SynthesisMethod` subclass and its settings group, plus one line in `METHODS` below; or,
without editing the package, name it in the run config as `module.path:ClassName`
(importable on the server and on every node).
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..settings.schema import Rule, SettingsGroup, at_least, setting
from .base import LocalJob, LocalResult, State, SynthesisMethod, UpdateHooks, class_labels
from .diffusion import Diffusion
from .distribution_matching import DistributionMatching
from .gradient_matching import GradientMatching

if TYPE_CHECKING:
    from ..settings import Settings

__all__ = [
    "METHODS", "LocalJob", "LocalResult", "State", "SynthesisMethod", "SynthesisSettings", "UpdateHooks",
    "class_labels", "is_builtin_method", "load_method",
]

METHODS: dict[str, type[SynthesisMethod]] = {
    GradientMatching.name: GradientMatching,
    Diffusion.name: Diffusion,
    DistributionMatching.name: DistributionMatching,
}

PLUGIN_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def is_builtin_method(name: str) -> bool:
    return name in METHODS


def load_method(name: str) -> type[SynthesisMethod]:
    """The method class for a registered name or a `module.path:ClassName`."""
    if name in METHODS:
        return METHODS[name]
    if not PLUGIN_PATH.match(name):
        raise ValueError(
            f"method={name!r} is not allowed: must be one of {', '.join(sorted(METHODS))} or module.path:ClassName"
        )
    module_name, class_name = name.split(":")
    try:
        method = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"method={name!r} cannot be loaded: {error}") from error
    if not (isinstance(method, type) and issubclass(method, SynthesisMethod)):
        raise ValueError(f"method={name!r} is not a subclass of sfdd_flwr.methods.SynthesisMethod")
    return method


@dataclass(frozen=True)
class SynthesisSettings(SettingsGroup):
    title = "Synthesis"

    method: str = setting(
        "gradient-matching",
        Rule(lambda v: v in METHODS or bool(PLUGIN_PATH.match(v)),
             "a registered method (" + ", ".join(METHODS) + ") or module.path:ClassName"),
        "how the synthetic set is built: `gradient-matching` (DC, the SFDD paper), `distribution-matching` (DM), "
        "`diffusion` (a federated diffusion generator, sampled for evaluation), or your own `module.path:ClassName`",
    )
    ipc: int = setting(1, at_least(1), "synthetic images per class")

    def check(self, settings: Settings) -> str | None:
        try:
            load_method(self.method)
        except ValueError as error:
            return str(error)
        return None
