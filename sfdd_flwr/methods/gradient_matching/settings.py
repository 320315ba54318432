"""Gradient matching's settings: DC's loops and its two optimisers."""

from __future__ import annotations

from dataclasses import dataclass

from ...settings.schema import POSITIVE, ZERO_OR_POSITIVE_INT, Rule, SettingsGroup, at_least, choice, setting
from .distance import MATCH_METRICS

# (outer_loop, inner_loop) of the DC reference, by images per class.
IPC_LOOPS: dict[int, tuple[int, int]] = {
    1: (1, 1),
    10: (10, 50),
    20: (20, 25),
    30: (30, 20),
    40: (40, 15),
    50: (50, 10),
}


def loops_for_ipc(ipc: int) -> tuple[int, int]:
    """DC's (outer, inner) loop counts for `ipc` images per class.

    For IPC values outside DC's table, our rule: outer = ipc (as in every DC entry
    from 10 up) and inner = the inner count of the next larger table entry (so 2-9 ->
    50, 11-19 -> 25, ...), or 10 above 50.
    """
    if ipc < 1:
        raise ValueError(f"ipc must be >= 1, got {ipc}")
    if ipc in IPC_LOOPS:
        return IPC_LOOPS[ipc]
    larger = [entry for entry in sorted(IPC_LOOPS) if entry >= ipc]
    inner = IPC_LOOPS[larger[0]][1] if larger else IPC_LOOPS[max(IPC_LOOPS)][1]
    return ipc, inner


_MOMENTUM = Rule(lambda v: 0 <= v < 1, "a number in [0, 1)")


@dataclass(frozen=True)
class GradientMatchingSettings(SettingsGroup):
    """DC's hyperparameters (the reference's defaults); the typed object the update takes."""

    title = "Gradient matching (`method='gradient-matching'`)"

    outer_loop: int = setting(
        0, ZERO_OR_POSITIVE_INT,
        "outer steps per round (image updates); 0 = DC's table by IPC (1→1; 10→10; 20→20; 30→30; 40→40; "
        "50→50; other IPC: outer = IPC)",
    )
    inner_loop: int = setting(
        0, ZERO_OR_POSITIVE_INT,
        "network epochs between outer steps; 0 = DC's table by IPC (1→1; 10→50; 20→25; 30→20; 40→15; 50→10; "
        "other IPC: that of the next larger entry, 10 above 50)",
    )
    batch_real: int = setting(256, at_least(1), "real images per class per matching step")
    lr_img: float = setting(0.1, POSITIVE, "SGD learning rate of the synthetic images")
    momentum_img: float = setting(0.5, _MOMENTUM, "SGD momentum of the synthetic images")
    persist_momentum: bool = setting(
        True, help="each client keeps its image momentum across rounds (client state, never sent); without it, "
        "IPC 1 loses DC's momentum entirely (see RESULTS.md)",
    )
    lr_net: float = setting(0.01, POSITIVE, "SGD learning rate of the inner-loop network")
    momentum_net: float = setting(
        0.0, _MOMENTUM, "SGD momentum of the inner-loop network (DC's code: plain SGD; its first versions used 0.5)"
    )
    batch_train: int = setting(256, at_least(1), "batch size of the inner-loop network training")
    match_metric: str = setting("ours", choice(MATCH_METRICS), "`ours` (DC's per-row cosine distance), `mse`, `cos`")
    dsa: bool = setting(
        False, help="differentiable siamese augmentation (DSA): each class's real batch and synthetic images are "
        "matched under one random transformation, and the inner-loop network trains on augmented S (groups: "
        "`dsa-strategy`; evaluate as DSA with `eval-augment='dsa'`)",
    )
    vectorised_matching: bool = setting(
        False, help="all classes' gradients in one batched `torch.func.vmap` computation (the per-class loop's "
        "result to float rounding; for GPUs: on a CPU it is slower than the loop, RESULTS.md section 3); "
        "`net-norm='batchnorm'` always uses the loop",
    )

    def loops(self, ipc: int) -> tuple[int, int]:
        """(outer, inner): explicit values, or DC's table by IPC where 0."""
        table_outer, table_inner = loops_for_ipc(ipc)
        return (self.outer_loop or table_outer, self.inner_loop or table_inner)
