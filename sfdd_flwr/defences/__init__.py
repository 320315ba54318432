"""Client-side defences against a curious server: LDPO-RLD (the paper's label
obfuscation) and the LocalDP baseline, one module each, behind one interface (`base`).

Add one: a `Defence` subclass with its settings group in a module here, plus one line
in `DEFENCES`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..methods import load_method
from ..settings.schema import SettingsGroup, choice, setting
from .base import Defence
from .ldpo_rld import LdpoRld
from .local_dp import LocalDp

if TYPE_CHECKING:
    from ..settings import Settings

DEFENCES: dict[str, type[Defence]] = {
    Defence.name: Defence,
    LdpoRld.name: LdpoRld,
    LocalDp.name: LocalDp,
}


def defence_for(settings: Settings) -> Defence:
    return DEFENCES[settings.defence]()


@dataclass(frozen=True)
class DefenceSettings(SettingsGroup):
    title = "Defences against a curious server"

    defence: str = setting(
        "none", choice(tuple(DEFENCES)),
        "`ldpo-rld` (the paper's label obfuscation) or `local-dp` (clipping + noise); see "
        "[docs/privacy.md](docs/privacy.md)",
    )

    def check(self, settings: Settings) -> str | None:
        defence = DEFENCES[self.defence]
        try:
            method = load_method(settings.method)
        except ValueError:
            return None  # the synthesis settings report it
        missing = defence.required_hooks - method.supported_hooks
        if missing:
            return (
                f"defence={self.defence!r} is not allowed with method={settings.method!r}: it needs the "
                f"method's {', '.join(sorted(missing))} hook, which that method does not offer"
            )
        return None
