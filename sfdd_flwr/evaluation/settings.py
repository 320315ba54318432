"""The evaluation settings: when a run evaluates its synthetic set, where, and how."""

from __future__ import annotations

from dataclasses import dataclass

from ..settings.schema import POSITIVE, ZERO_OR_POSITIVE_INT, Rule, SettingsGroup, at_least, choice, setting
from .protocol import EvalParams

EVAL_MODES = ("server", "federated", "both")


def protocol_defaults(dataset: str) -> tuple[int, bool]:
    """(epochs, augment) of the DC reference: MNIST 1000 epochs with augmentation."""
    return (1000, True) if dataset == "mnist" else (300, False)


@dataclass(frozen=True)
class EvaluationSettings(SettingsGroup):
    title = "Evaluation"

    eval_every: int = setting(
        0, Rule(lambda v: v >= 0, "0 (evaluate only at the end) or an integer >= 1"),
        "evaluate every N rounds; 0 = only after the last round",
    )
    eval_mode: str = setting(
        "server",
        choice(EVAL_MODES),
        "`server`: on the test set the ServerApp holds (the paper's protocol); `federated`: every node tests "
        "the set on its held-out split, accuracy weighted by test size; `both`",
    )
    eval_timeout: float = setting(3600.0, POSITIVE, "seconds to wait for the nodes' evaluations (`federated`, `both`)")
    num_eval: int = setting(
        5, Rule(lambda v: v >= 0, "0 (no evaluation, pictures only) or an integer >= 1"),
        "fresh ConvNets per evaluation (mean ± std reported); 0 = no evaluation",
    )
    eval_epochs: int = setting(
        0, ZERO_OR_POSITIVE_INT, "training epochs per network; 0 = DC protocol: MNIST 1000, others 300"
    )
    eval_augment: str = setting(
        "auto", choice(("auto", "on", "off")), "DC's augmentation while training; `auto` = on for MNIST only (DC protocol)"
    )
    eval_lr: float = setting(0.01, POSITIVE, "learning rate (momentum 0.9, weight decay 5e-4, lr x0.1 at half)")
    eval_batch: int = setting(256, at_least(1), "batch size of evaluation training")

    def params(self, dataset: str) -> EvalParams:
        epochs, augment = protocol_defaults(dataset)
        if self.eval_augment != "auto":
            augment = self.eval_augment == "on"
        return EvalParams(
            eval_epochs=self.eval_epochs or epochs,
            num_eval=self.num_eval,
            eval_lr=self.eval_lr,
            eval_batch=self.eval_batch,
            eval_augment=augment,
        )
