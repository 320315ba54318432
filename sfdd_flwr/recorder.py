"""Round bookkeeping shared by the SFDD server and the centralized baseline.

Creates or resumes the run directory, initialises S, and after every round saves S,
evaluates it when due, appends a metrics line and reports one progress line with an
ETA. No Flower import: the strategy and `centralized.py` both drive it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from .artifacts import RunDirectory, colluders_folder, scored_trigger, trigger_files, trigger_files_in
from .attacks.backdoor import Trigger, attack_success_rate
from .config import ConfigError, Settings
from .data import LabelledImages
from .distill import initial_synthetic_images, synthetic_labels
from .evaluate import EvalResult, evaluate_synthetic_set, mean_and_std
from .federated_eval import FederatedEvalResult
from .seeding import make_generator

Evaluator = Callable[[int, torch.Tensor, "Trigger | None"], EvalResult]
FederatedEvaluator = Callable[[int, torch.Tensor], FederatedEvalResult]


def find_trigger(run_dir: Path, colluding_round: int | None = None) -> tuple[Trigger, str] | None:
    """The trigger a backdoor client of this run saved (the first by file name), or with
    `colluding_round` the mean of the colluding clients' triggers of that round, if any.

    Simulated malicious clients write `<run-dir>/attack/trigger_client<id>.pt` so that an
    experiment can score its attack success rate; a real attacker would not.
    """
    if colluding_round is None:
        return scored_trigger(trigger_files(run_dir), colluding=False)
    return scored_trigger(trigger_files_in(colluders_folder(run_dir, colluding_round)), colluding=True)


def format_seconds(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def resolve_device(choice: str) -> torch.device:
    """'auto' -> CUDA when available, else CPU; 'cuda' without a GPU is an error."""
    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda' is not allowed: no CUDA device is available here")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def server_evaluator(
    settings: Settings,
    test_set: LabelledImages | None,
    device: torch.device,
    report: Callable[[str], None],
) -> Evaluator | None:
    """Evaluate S with the DC protocol on a test set the evaluating process holds
    (None when `num-eval` is 0: pictures are still saved at evaluation rounds)."""
    if settings.num_eval == 0 or test_set is None:
        return None
    labels = synthetic_labels(settings.dataset_spec.num_classes, settings.ipc)
    test_on_device = test_set.to(device)

    def evaluate(round_number: int, images: torch.Tensor, trigger: Trigger | None = None) -> EvalResult:
        score = None
        if trigger is not None:
            on_device = trigger.to(device)
            score = lambda network: attack_success_rate(network, test_on_device, on_device)  # noqa: E731
        return evaluate_synthetic_set(
            images,
            labels,
            test_on_device,
            settings.network_spec,
            settings.eval_params,
            settings.seed,
            round_number,
            device,
            progress=report,
            progress_seconds=settings.progress_seconds,
            score_trigger=score,
        )

    return evaluate


class RunRecorder:
    """Checkpoints, evaluation schedule, metrics and progress lines of one run.

    `evaluator` tests S on a test set this process holds (server-side evaluation);
    `federated_evaluator` has the nodes test it on their held-out data.
    """

    def __init__(
        self,
        settings: Settings,
        mode: str,
        evaluator: Evaluator | None,
        report: Callable[[str], None],
        federated_evaluator: FederatedEvaluator | None = None,
    ) -> None:
        self.settings = settings
        self.mode = mode
        self.evaluator = evaluator
        self.federated_evaluator = federated_evaluator
        self.report = report
        self.spec = settings.dataset_spec
        self.labels = synthetic_labels(self.spec.num_classes, settings.ipc)
        if settings.resume_from:
            self.run_dir = RunDirectory(Path(settings.resume_from).expanduser())
        else:
            name = settings.run_name or (
                f"{settings.dataset}-ipc{settings.ipc}-{mode}-{datetime.now():%Y%m%d-%H%M%S}"
            )
            self.run_dir = RunDirectory(settings.output_path / name)
        self.session_started = time.monotonic()
        self.first_round = 1
        self.rounds_done_in_session = 0
        self.round_seconds_total = 0.0
        self.last_evaluation: dict[str, Any] | None = None
        self.last_federated_evaluation: dict[str, Any] | None = None

    # ----- start -----
    def start(self) -> torch.Tensor:
        """Initial (or resumed) synthetic images; sets `first_round`."""
        self.run_dir.prepare()
        if self.settings.resume_from:
            return self._resume()
        self.run_dir.save_config(self.settings.to_record())
        images = initial_synthetic_images(
            self.settings.network_spec, self.settings.ipc, make_generator(self.settings.seed, "init")
        )
        self.run_dir.save_synthetic_set(images, self.labels, self._metadata(0), keep_round_copy=False)
        self.report(
            f"{self.mode}: {self.settings.dataset}, IPC {self.settings.ipc}, "
            f"{self.settings.num_server_rounds} rounds; outputs in {self.run_dir.path}"
        )
        return images

    def _resume(self) -> torch.Tensor:
        saved = self.run_dir.load_latest()
        expected = (self.spec.num_classes * self.settings.ipc, self.spec.channels, *self.spec.image_size)
        if tuple(saved.images.shape) != expected or saved.metadata.get("dataset") != self.settings.dataset:
            raise ConfigError(
                f"resume-from={self.settings.resume_from!r} is not allowed: it holds "
                f"{saved.metadata.get('dataset')} images of shape {tuple(saved.images.shape)}, "
                f"this run needs {self.settings.dataset} images of shape {expected}"
            )
        self.first_round = saved.round + 1
        self.run_dir.keep_metrics_up_to(saved.round)
        records = self.run_dir.read_metrics()
        if saved.round > 0 and not any(r.get("round") == saved.round for r in records):
            restored = dict(saved.metadata.get("round_metrics") or {"round": saved.round})
            self.report(f"round {saved.round}: metrics restored from the checkpoint (the run stopped before recording them)")
            if self.should_evaluate(saved.round) and (self.evaluator or self.federated_evaluator):
                self.report(f"round {saved.round}: its evaluation was cut off; evaluating the saved set now")
                restored.update(self._evaluate(saved.round, saved.images))
            self.run_dir.append_metrics(restored)
        evaluated = [r for r in self.run_dir.read_metrics() if "accuracy_mean" in r]
        if evaluated:
            self.last_evaluation = {
                key: value
                for key, value in evaluated[-1].items()
                if key in ("round", "accuracy_mean", "accuracy_std", "accuracies", "eval_seconds")
                or key.startswith("attack_success")
            }
        federated = [r for r in self.run_dir.read_metrics() if r.get("federated_accuracy_mean") is not None]
        if federated:
            self.last_federated_evaluation = {
                "round": federated[-1]["round"],
                **{k: v for k, v in federated[-1].items() if k.startswith("federated_")},
            }
        self.run_dir.save_config(self.settings.to_record())
        self.report(
            f"{self.mode}: resuming {self.run_dir.path} after round {saved.round}; "
            f"continuing with round {self.first_round}/{self.settings.num_server_rounds}"
        )
        return saved.images

    # ----- per round -----
    def should_evaluate(self, round_number: int) -> bool:
        every = self.settings.eval_every
        return round_number == self.settings.num_server_rounds or (
            every > 0 and round_number % every == 0
        )

    def end_round(
        self, round_number: int, images: torch.Tensor, round_metrics: dict[str, Any], final: bool = False
    ) -> dict[str, Any]:
        """Save S (the round is then complete), log, evaluate if due, append metrics.

        The round's metrics travel inside the checkpoint too, so a crash during a long
        evaluation loses neither the round nor its training figures. `final` marks a round
        that ends the run before `num-server-rounds` (a time budget): it is evaluated too.
        """
        evaluate_now = final or self.should_evaluate(round_number)
        record: dict[str, Any] = {"round": round_number, **round_metrics}
        self.run_dir.save_synthetic_set(
            images, self.labels, self._metadata(round_number, record), keep_round_copy=evaluate_now
        )
        if evaluate_now:
            self.run_dir.keep_triggers(round_number)
        self.rounds_done_in_session += 1
        self.round_seconds_total += float(round_metrics.get("round_seconds", 0.0))
        remaining = self.settings.num_server_rounds - round_number
        eta = remaining * self.round_seconds_total / self.rounds_done_in_session
        parts = [
            f"round {round_number}/{self.settings.num_server_rounds}",
            f"matching loss {round_metrics.get('matching_loss', math.nan):.3f}",
        ]
        if "clients_ok" in round_metrics:
            asked = round_metrics["clients_ok"] + round_metrics["clients_failed"]
            parts.append(f"{round_metrics['clients_ok']}/{asked} clients")
        parts.append(f"{round_metrics.get('round_seconds', 0.0):.1f} s")
        parts.append(f"ETA {format_seconds(eta)} (rounds only)")
        self.report(" | ".join(parts))
        if evaluate_now and (self.evaluator is not None or self.federated_evaluator is not None):
            record.update(self._evaluate(round_number, images))
        elif evaluate_now:
            self.run_dir.save_grid(images, self.spec, self.settings.ipc, round_number)
        record["elapsed_seconds"] = round(time.monotonic() - self.session_started, 3)
        self.run_dir.append_metrics(record)
        return record

    def _evaluate(self, round_number: int, images: torch.Tensor) -> dict[str, Any]:
        params = self.settings.eval_params
        where = [
            text
            for text, hook in (
                ("the server's test set", self.evaluator),
                ("the nodes' held-out data", self.federated_evaluator),
            )
            if hook is not None
        ]
        colluding_round = round_number if self.settings.doorping_collude else None
        found = find_trigger(self.run_dir.path, colluding_round) if self.evaluator is not None else None
        self.report(
            f"round {round_number}: evaluating S with {params.num_models} fresh networks "
            f"x {params.epochs} epochs{' with augmentation' if params.augment else ''} "
            f"on {' and on '.join(where)}"
            + (f"; scoring the backdoor of {found[1]}" if found else "")
        )
        record: dict[str, Any] = {}
        grid = self.run_dir.save_grid(images, self.spec, self.settings.ipc, round_number)
        if self.evaluator is not None:
            result = self.evaluator(round_number, images, found[0] if found else None)
            attack = ""
            if result.attack_success:
                attack_mean, attack_std = mean_and_std(result.attack_success)
                attack = f"; attack success {100 * attack_mean:.2f} ± {100 * attack_std:.2f} %"
            self.report(
                f"round {round_number}: accuracy {100 * result.mean:.2f} ± {100 * result.std:.2f} % "
                f"over {len(result.accuracies)} models{attack} ({format_seconds(result.seconds)}); "
                f"picture: {grid}"
            )
            self.last_evaluation = {
                "round": round_number,
                "accuracy_mean": result.mean,
                "accuracy_std": result.std,
                "accuracies": result.accuracies,
                "eval_seconds": round(result.seconds, 3),
            }
            if result.attack_success:
                self.last_evaluation |= {
                    "attack_success_mean": attack_mean,
                    "attack_success_std": attack_std,
                    "attack_success": result.attack_success,
                }
            record.update({k: v for k, v in self.last_evaluation.items() if k != "round"})
        if self.federated_evaluator is not None:
            federated = self.federated_evaluator(round_number, images)
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
        federated = self.last_federated_evaluation
        summary: dict[str, Any] = {
            "mode": self.mode,
            "dataset": self.settings.dataset,
            "ipc": self.settings.ipc,
            "rounds": records[-1]["round"] if records else 0,
            "final_accuracy_mean": self.last_evaluation["accuracy_mean"] if self.last_evaluation else None,
            "final_accuracy_std": self.last_evaluation["accuracy_std"] if self.last_evaluation else None,
            "final_attack_success_mean": (self.last_evaluation or {}).get("attack_success_mean"),
            "final_federated_accuracy_mean": federated["federated_accuracy_mean"] if federated else None,
            "final_federated_accuracy_std": federated["federated_accuracy_std"] if federated else None,
            "federated_test_examples": federated["federated_test_examples"] if federated else None,
            "num_eval_models": self.settings.num_eval,
            "eval_epochs": self.settings.eval_params.epochs,
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
            f"SUMMARY {self.mode} {self.settings.dataset} IPC {self.settings.ipc}: "
            f"{summary['rounds']} rounds in {format_seconds(total_seconds)}; {accuracy}; "
            f"outputs in {self.run_dir.path}"
        )
        return summary

    def _metadata(self, round_number: int, round_metrics: dict[str, Any] | None = None) -> dict[str, Any]:
        return {
            "round": round_number,
            "round_metrics": round_metrics or {},
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
