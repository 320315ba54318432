"""What a client-side defence against a curious server plugs into: the method's update
hooks before the update, and the released state after it."""

from __future__ import annotations

from typing import ClassVar

from ..methods.base import LocalJob, LocalResult, UpdateHooks
from ..settings.schema import SettingsGroup


class Defence:
    """Base and the no-op defence. `required_hooks`: the `UpdateHooks` a method must
    honour for this defence to act (checked before a run starts)."""

    name: ClassVar[str] = "none"
    settings_group: ClassVar[type[SettingsGroup] | None] = None
    required_hooks: ClassVar[frozenset[str]] = frozenset()
    # How this defence's client metrics reduce into a round's (see methods.base.REDUCTIONS).
    round_metrics: ClassVar[dict[str, str]] = {}

    def update_hooks(self, job: LocalJob, hooks: UpdateHooks) -> UpdateHooks:
        """The hooks of this client's update (e.g. obfuscated targets)."""
        return hooks

    def release(self, job: LocalJob, result: LocalResult) -> LocalResult:
        """What the client sends instead of `result` (e.g. a clipped, noised update)."""
        return result
