"""Round bookkeeping shared by the Flower server and the lab's drivers (centralized
baseline, local federation).

Creates or resumes the run directory, takes the method's initial shared state, and
after every round saves the method's checkpoint, evaluates the labelled synthetic set
when due, appends a metrics line and reports one progress line with an ETA. Method-
agnostic: the method says what its checkpoint holds, how its round reads and how its
state becomes a labelled set. No Flower import.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

from ..data.datasets import LabelledImages
from ..evaluation.federated import FederatedEvalResult
from ..evaluation.protocol import EvalResult, evaluate_synthetic_set, mean_and_std
from ..methods.base import State, SynthesisMethod
from ..progress import format_seconds
from ..settings.schema import ConfigError
from .artifacts import RunDirectory

if TYPE_CHECKING:
    from ..settings import Settings

# scorer(trained network, test set) -> a score in [0, 1], recorded per evaluation model.
Scorer = Callable[[torch.nn.Module, LabelledImages], float]
Evaluator = Callable[[int, LabelledImages, Mapping[str, Scorer]], EvalResult]
FederatedEvaluator = Callable[[int, LabelledImages], FederatedEvalResult]


class RoundObserver(Protocol):
    """Something the recorder consults at each evaluation (e.g. a simulated backdoor)."""

    def keep(self, run_dir: Path, round_number: int) -> None:
        """Keep what scoring this round later needs (called at every evaluated round)."""

    def scorers(self, run_dir: Path, round_number: int) -> dict[str, tuple[str, Scorer]]:
        """Extra per-network scores for this evaluation: name -> (description, scorer)."""


def server_evaluator(
    settings: Settings,
    test_set: LabelledImages | None,
    device: torch.device,
    report: Callable[[str], None],
) -> Evaluator | None:
    """Evaluate a labelled set with the evaluation protocol on a test set the evaluating
    process holds (None when `num-eval` is 0: pictures are still saved at evaluation
    rounds)."""
    if settings.num_eval == 0 or test_set is None:
        return None
    test_on_device = test_set.to(device)

    def evaluate(round_number: int, labelled: LabelledImages, scorers: Mapping[str, Scorer]) -> EvalResult:
        return evaluate_synthetic_set(
            labelled.images,
            labelled.labels,
            test_on_device,
            settings.network_spec,
            settings.eval_params,
            settings.seed,
            round_number,
            device,
            progress=report,
            progress_seconds=settings.progress_seconds,
            scorers={name: (lambda network, s=scorer: s(network, test_on_device)) for name, scorer in scorers.items()},
        )

    return evaluate


class RunRecorder:
    """Checkpoints, evaluation schedule, metrics and progress lines of one run.

    `evaluator` tests the labelled set on a test set this process holds (server-side
    evaluation); `federated_evaluator` has the nodes test it on their held-out data;
    `observers` add scores to the server's evaluation. `mode` says how the rounds run
    ('federated', 'centralized', ...).
    """

    def __init__(
        self,
        settings: Settings,
        method: SynthesisMethod,
        mode: str,
        evaluator: Evaluator | None,
        report: Callable[[str], None],
        federated_evaluator: FederatedEvaluator | None = None,
        observers: Sequence[RoundObserver] = (),
        device: torch.device | str = "cpu",
    ) -> None:
        self.settings = settings
        self.method = method
        self.mode = mode
        self.evaluator = evaluator
        self.federated_evaluator = federated_evaluator
        self.observers = list(observers)
        self.device = torch.device(device)
        self.report = report
        self.spec = settings.dataset_spec
        if settings.resume_from:
            self.run_dir = RunDirectory(Path(settings.resume_from).expanduser())
        else:
            name = settings.run_name or (
                f"{settings.dataset}-ipc{settings.ipc}-{method.name}-{mode}-{datetime.now():%Y%m%d-%H%M%S}"
            )
            self.run_dir = RunDirectory(settings.output_path / name)
        self.started = time.monotonic()
        self.first_round = 1
        self.rounds_done_here = 0
        self.round_seconds_total = 0.0
        self.last_evaluation: dict[str, Any] | None = None
        self.last_federated_evaluation: dict[str, Any] | None = None

    @property
    def title(self) -> str:
        return f"{self.method.name} {self.settings.dataset} {self.method.describe_set_size()} ({self.mode})"

    # ----- start -----
    def start(self) -> State:
        """The initial (or resumed) shared state; sets `first_round`."""
        self.run_dir.prepare()
        if self.settings.resume_from:
            return self._resume()
        if self.run_dir.holds_run():
            raise ConfigError(
                f"run-name={self.run_dir.path.name!r} is not allowed: {self.run_dir.path} already holds a run; "
                f"choose another run-name, continue it with resume-from='{self.run_dir.path}', or remove the folder"
            )
        self.run_dir.save_config(self.settings.to_record())
        state = self.method.initial_state()
        self._save_checkpoint(state, 0)
        self.report(f"{self.title}: {self.settings.num_server_rounds} rounds; outputs in {self.run_dir.path}")
        return state

    def _resume(self) -> State:
        checkpoint = self.method.checkpoint_file
        if not self.run_dir.file(checkpoint).is_file():
            raise ConfigError(
                f"resume-from={self.settings.resume_from!r} is not allowed: it holds no {checkpoint} "
                f"(the checkpoint of method={self.method.name!r})"
            )
        saved = self.run_dir.load_checkpoint(checkpoint)
        metadata = saved["metadata"]
        state = self.method.restore(saved)
        problem = self.method.reply_problem(self.method.initial_state(), state)
        if problem or metadata.get("dataset") != self.settings.dataset:
            raise ConfigError(
                f"resume-from={self.settings.resume_from!r} is not allowed: it holds a {metadata.get('dataset')} "
                f"checkpoint that does not fit this run ({problem or 'another dataset'})"
            )
        saved_round = int(metadata["round"])
        self.first_round = saved_round + 1
        self.run_dir.keep_metrics_up_to(saved_round)
        records = self.run_dir.read_metrics()
        if saved_round > 0 and not any(r.get("round") == saved_round for r in records):
            restored = dict(metadata.get("round_metrics") or {"round": saved_round})
            self.report(f"round {saved_round}: metrics restored from the checkpoint (the run stopped before recording them)")
            if self.should_evaluate(saved_round) and (self.evaluator or self.federated_evaluator):
                self.report(f"round {saved_round}: its evaluation was cut off; evaluating the saved state now")
                restored.update(self._evaluate(saved_round, state))
            self.run_dir.append_metrics(restored)
        evaluated = [r for r in self.run_dir.read_metrics() if "accuracy_mean" in r]
        if evaluated:
            score_keys = self._score_keys(evaluated[-1])
            self.last_evaluation = {
                key: value
                for key, value in evaluated[-1].items()
                if key in ("round", "accuracy_mean", "accuracy_std", "accuracies", "eval_seconds") or key in score_keys
            }
        federated = [r for r in self.run_dir.read_metrics() if r.get("federated_accuracy_mean") is not None]
        if federated:
            self.last_federated_evaluation = {
                "round": federated[-1]["round"],
                **{k: v for k, v in federated[-1].items() if k.startswith("federated_")},
            }
        self.run_dir.save_config(self.settings.to_record())
        self.report(
            f"{self.title}: resuming {self.run_dir.path} after round {saved_round}; "
            f"continuing with round {self.first_round}/{self.settings.num_server_rounds}"
        )
        return state

    @staticmethod
    def _score_keys(record: Mapping[str, Any]) -> set[str]:
        """The keys of extra scores in an evaluated round's record (`<name>_mean` and kin)."""
        names = {key[: -len("_mean")] for key in record if key.endswith("_mean")} - {"accuracy", "federated_accuracy"}
        return {f"{name}{suffix}" for name in names for suffix in ("", "_mean", "_std") if f"{name}{suffix}" in record}

    # ----- per round -----
    def should_evaluate(self, round_number: int) -> bool:
        every = self.settings.eval_every
        return round_number == self.settings.num_server_rounds or (every > 0 and round_number % every == 0)

    def end_round(
        self, round_number: int, state: State, round_metrics: dict[str, Any], final: bool = False,
        seconds_left: float | None = None,
    ) -> dict[str, Any]:
        """Save the checkpoint (the round is then complete), log, evaluate if due, append
        metrics.

        The round's metrics travel inside the checkpoint too, so a crash during a long
        evaluation loses neither the round nor its training figures. `final` marks a round
        that ends the run before `num-server-rounds` (a time budget): it is evaluated too;
        `seconds_left`, what such a budget still allows, caps the ETA.
        """
        evaluate_now = final or self.should_evaluate(round_number)
        record: dict[str, Any] = {"round": round_number, **round_metrics}
        self._save_checkpoint(state, round_number, record)
        if evaluate_now:
            for observer in self.observers:
                observer.keep(self.run_dir.path, round_number)
        self.rounds_done_here += 1
        self.round_seconds_total += float(round_metrics.get("round_seconds", 0.0))
        remaining = self.settings.num_server_rounds - round_number
        eta = remaining * self.round_seconds_total / self.rounds_done_here
        if seconds_left is not None:
            eta = min(eta, max(seconds_left, 0.0))
        parts = [f"round {round_number}/{self.settings.num_server_rounds}"]
        described = self.method.describe_round(round_metrics)
        if described:
            parts.append(described)
        if "clients_ok" in round_metrics:
            asked = round_metrics["clients_ok"] + round_metrics["clients_failed"]
            parts.append(f"{round_metrics['clients_ok']}/{asked} clients")
        parts.append(f"{round_metrics.get('round_seconds', 0.0):.1f} s")
        parts.append(f"ETA {format_seconds(eta)} (rounds only)")
        self.report(" | ".join(parts))
        if evaluate_now:
            record.update(self._evaluate(round_number, state))
        record["elapsed_seconds"] = round(time.monotonic() - self.started, 3)
        self.run_dir.append_metrics(record)
        return record

    def _evaluate(self, round_number: int, state: State) -> dict[str, Any]:
        """Materialise the labelled set, save it and its picture, and evaluate it where
        the settings say (nothing but the files when `num-eval` is 0)."""
        labelled = self.method.labelled_set(state, round_number, self.device, self.report)
        self.run_dir.save_labelled_set(labelled, self._metadata(round_number))
        grid = self.run_dir.save_grid(labelled, self.spec, round_number)
        if self.evaluator is None and self.federated_evaluator is None:
            return {}
        params = self.settings.eval_params
        where = [
            text
            for text, hook in (("the server's test set", self.evaluator), ("the nodes' held-out data", self.federated_evaluator))
            if hook is not None
        ]
        scorers: dict[str, tuple[str, Any]] = {}
        if self.evaluator is not None:
            for observer in self.observers:
                scorers.update(observer.scorers(self.run_dir.path, round_number))
        self.report(
            f"round {round_number}: evaluating the synthetic set with {params.num_eval} fresh networks "
            f"x {params.eval_epochs} epochs{' with ' + params.augmentation_name if params.augmentation_name else ''} "
            f"on {' and on '.join(where)}"
            + "".join(f"; scoring {description}" for description, _ in scorers.values())
        )
        record: dict[str, Any] = {}
        if self.evaluator is not None:
            result = self.evaluator(round_number, labelled, {name: scorer for name, (_, scorer) in scorers.items()})
            self.last_evaluation = {
                "round": round_number,
                "accuracy_mean": result.mean,
                "accuracy_std": result.std,
                "accuracies": result.accuracies,
                "eval_seconds": round(result.seconds, 3),
            }
            extra = ""
            for name, values in result.scores.items():
                mean, std = mean_and_std(values)
                self.last_evaluation |= {f"{name}_mean": mean, f"{name}_std": std, name: values}
                extra += f"; {name.replace('_', ' ')} {100 * mean:.2f} ± {100 * std:.2f} %"
            self.report(
                f"round {round_number}: accuracy {100 * result.mean:.2f} ± {100 * result.std:.2f} % "
                f"over {len(result.accuracies)} models{extra} ({format_seconds(result.seconds)}); "
                f"picture: {grid}"
            )
            record.update({k: v for k, v in self.last_evaluation.items() if k != "round"})
        if self.federated_evaluator is not None:
            federated = self.federated_evaluator(round_number, labelled)
            picture = "" if self.evaluator is not None else f"; picture: {grid}"
            record.update(self._federated_record(round_number, federated, picture))
        return record

    def _federated_record(self, round_number: int, result: FederatedEvalResult, picture: str) -> dict[str, Any]:
        answered = len(result.nodes)
        asked = answered + len(result.failures)
        record: dict[str, Any] = {
            "federated_accuracy_mean": result.mean if answered else None,
            "federated_accuracy_std": result.std if answered else None,
            "federated_accuracies": result.accuracies,
            "federated_test_examples": result.num_examples,
            "federated_nodes": [
                {"node": n.node, "examples": n.num_examples, "accuracy_mean": n.mean, "seconds": round(n.seconds, 3)}
                for n in result.nodes
            ],
            "federated_failures": result.failures,
            "federated_eval_seconds": round(result.seconds, 3),
        }
        if not answered:
            self.report(
                f"round {round_number}: federated accuracy not available: no node answered "
                f"({'; '.join(result.failures)}){picture}"
            )
            return record
        self.report(
            f"round {round_number}: federated accuracy {100 * result.mean:.2f} ± {100 * result.std:.2f} % "
            f"over {len(result.accuracies)} models on {result.num_examples} held-out images of "
            f"{answered}/{asked} nodes ({format_seconds(result.seconds)}){picture}"
        )
        self.report(
            f"round {round_number}: per node: "
            + ", ".join(f"{n.node} {100 * n.mean:.2f} % on {n.num_examples} images" for n in result.nodes)
        )
        self.last_federated_evaluation = {"round": round_number, **record}
        return record

    # ----- end -----
    def finish(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Write summary.json and report the final summary line."""
        records = self.run_dir.read_metrics()
        total_seconds = sum(
            float(r.get("round_seconds", 0.0)) + float(r.get("eval_seconds", 0.0)) + float(r.get("federated_eval_seconds", 0.0))
            for r in records
        )
        last = self.last_evaluation or {}
        federated = self.last_federated_evaluation
        params = self.settings.eval_params
        summary: dict[str, Any] = {
            "method": self.method.name,
            "mode": self.mode,
            "dataset": self.settings.dataset,
            "ipc": self.settings.ipc,
            "rounds": records[-1]["round"] if records else 0,
            "final_accuracy_mean": last.get("accuracy_mean"),
            "final_accuracy_std": last.get("accuracy_std"),
            **{f"final_{key}": value for key, value in last.items() if key.endswith("_mean") and key != "accuracy_mean"},
            "final_federated_accuracy_mean": federated["federated_accuracy_mean"] if federated else None,
            "final_federated_accuracy_std": federated["federated_accuracy_std"] if federated else None,
            "federated_test_examples": federated["federated_test_examples"] if federated else None,
            "last_round": {
                key: value for key, value in (records[-1] if records else {}).items()
                if isinstance(value, (int, float)) and not isinstance(value, bool)
            },
            "num_eval_models": self.settings.num_eval,
            "eval_epochs": params.eval_epochs,
            "seconds": round(total_seconds, 1),
            "run_dir": str(self.run_dir.path),
            **(extra or {}),
        }
        self.run_dir.write_summary(summary)
        results = []
        if self.last_evaluation:
            results.append(
                f"final accuracy {100 * summary['final_accuracy_mean']:.2f} ± "
                f"{100 * summary['final_accuracy_std']:.2f} % ({self.settings.num_eval} models, "
                f"{summary['eval_epochs']} epochs)"
            )
        if federated:
            results.append(
                f"final federated accuracy {100 * federated['federated_accuracy_mean']:.2f} ± "
                f"{100 * federated['federated_accuracy_std']:.2f} % ({self.settings.num_eval} models, "
                f"{summary['eval_epochs']} epochs, {federated['federated_test_examples']} held-out images "
                f"of {len(federated['federated_nodes'])} nodes)"
            )
        accuracy = "; ".join(results) or "no evaluation"
        self.report(
            f"SUMMARY {self.title}: {summary['rounds']} rounds in {format_seconds(total_seconds)}; {accuracy}; "
            f"outputs in {self.run_dir.path}"
        )
        return summary

    def _save_checkpoint(self, state: State, round_number: int, round_metrics: dict[str, Any] | None = None) -> None:
        self.run_dir.save_checkpoint(
            self.method.checkpoint_file, self.method.checkpoint(state), self._metadata(round_number, round_metrics)
        )

    def _metadata(self, round_number: int, round_metrics: dict[str, Any] | None = None) -> dict[str, Any]:
        return {
            "round": round_number,
            "round_metrics": round_metrics or {},
            "method": self.method.name,
            "mode": self.mode,
            "dataset": self.settings.dataset,
            "ipc": self.settings.ipc,
            "num_classes": self.spec.num_classes,
            "channels": self.spec.channels,
            "image_size": list(self.spec.image_size),
            "mean": list(self.spec.mean),
            "std": list(self.spec.std),
            "class_names": list(self.settings.class_name_list),
            "seed": self.settings.seed,
            "settings": self.settings.to_record(),
        }
