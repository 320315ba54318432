"""The evaluation settings: when a run evaluates its synthetic set, where, and how."""

from __future__ import annotations

from dataclasses import dataclass

from typing import TYPE_CHECKING

from ..settings.schema import POSITIVE, ZERO_OR_POSITIVE_INT, Rule, SettingsGroup, at_least, choice, setting
from .protocol import EvalParams

if TYPE_CHECKING:
    from ..augmentation.dsa import DsaParams

EVAL_MODES = ("server", "federated", "both")


def protocol_defaults(dataset: str, augment: str) -> tuple[int, str]:
    """(epochs, augmentation) of the references: DC trains MNIST models 1000 epochs with
    its augmentation and others 300 without; DSA and DM train 1000 epochs with DSA."""
    if augment == "dsa":
        return 1000, "dsa"
    epochs, mode = (1000, "dc") if dataset == "mnist" else (300, "none")
    if augment != "auto":
        mode = "dc" if augment == "on" else "none"
    return epochs, mode


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
        0, ZERO_OR_POSITIVE_INT,
        "training epochs per network; 0 = the reference protocol: MNIST 1000, others 300 (DC), 1000 with `dsa`"
    )
    eval_augment: str = setting(
        "auto", choice(("auto", "on", "off", "dsa")),
        "augmentation while training: `on` DC's, `off` none, `auto` DC's on MNIST only (DC protocol), `dsa` DSA's "
        "per-image transformations (`dsa-strategy`; the DSA and DM protocol, 1000 epochs by default)",
    )
    eval_lr: float = setting(0.01, POSITIVE, "learning rate (momentum 0.9, weight decay 5e-4, lr x0.1 at half)")
    eval_batch: int = setting(256, at_least(1), "batch size of evaluation training")

    def params(self, dataset: str, dsa: DsaParams | None = None) -> EvalParams:
        """The protocol on `dataset`; `dsa` gives DSA's parameters for `eval-augment='dsa'`."""
        epochs, augment = protocol_defaults(dataset, self.eval_augment)
        return EvalParams(
            eval_epochs=self.eval_epochs or epochs,
            num_eval=self.num_eval,
            eval_lr=self.eval_lr,
            eval_batch=self.eval_batch,
            eval_augment=augment,
            dsa=dsa if augment == "dsa" else None,
        )
