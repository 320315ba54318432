"""How the lab's experiment commands run one federated training.

By default a `flwr run` simulation on a private loopback SuperLink: the product's own
path. With `in_process=True` the same client code, seeds and server-side rules run in
the calling process (`sfdd_lab.full_protocol`, checked against the Flower apps by
`tests/test_full_protocol.py`): no Flower or Ray start-up, about 20 s less per run, for
quick checks of an experiment's plumbing. Either way the run's output goes to a log file
as it comes and its outputs to its run directory.
"""

from __future__ import annotations

import shutil
import traceback
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from sfdd_flwr.settings import settings_from_run_configs

from . import full_protocol
from .launch import LocalSuperLink


class Federations:
    """Runs federated trainings one after another; a context manager (it may hold a SuperLink)."""

    def __init__(self, workdir: Path, in_process: bool = False) -> None:
        self.workdir, self.in_process = workdir, in_process
        self.link: LocalSuperLink | None = None

    def __enter__(self) -> Federations:
        if not self.in_process:
            self.link = LocalSuperLink(self.workdir / "superlink").start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if self.link is not None:
            self.link.stop()
            self.link = None

    def run(self, run_config: str, clients: int, log_path: Path, timeout_seconds: float = 48 * 3600) -> None:
        """Run `run_config` (its `min-clients` included) with `clients` simulated nodes to its
        end; stop the experiment with a line naming the log if it fails. In process, the
        config's `min-clients` clients take turns and `timeout_seconds` does not apply."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        if self.link is not None:
            ok = self.link.run(run_config, num_supernodes=clients, timeout_seconds=timeout_seconds,
                               log_path=log_path).returncode == 0
        else:
            ok = run_in_process(run_config, log_path)
        if not ok:
            raise SystemExit(f"a run failed; see {log_path}")


def start_afresh(run_dir: Path) -> None:
    """Remove what an earlier attempt left in `run_dir` before the run starts again there
    (a fresh run refuses a folder that holds a run)."""
    if run_dir.is_dir():
        print(f"{run_dir.name}: starting again; what an earlier attempt left in {run_dir} is removed", flush=True)
        shutil.rmtree(run_dir)


def run_logged(work: Callable[[Callable[[str], None]], object], log_path: Path) -> bool:
    """Call `work(report)`, `report` writing each line to `log_path` as it comes; False,
    with the traceback in the log, if it raised."""
    with log_path.open("w") as log:
        def report(text: str) -> None:
            log.write(text + "\n")
            log.flush()

        try:
            work(report)
        except Exception:
            log.write(traceback.format_exc())
            return False
    return True


def run_in_process(run_config: str, log_path: Path) -> bool:
    """One federated training without Flower (`sfdd_lab.full_protocol`), logged to
    `log_path`; False if it failed."""
    return run_logged(lambda report: full_protocol.run(settings_from_run_configs([run_config]), None, report), log_path)
