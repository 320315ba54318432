"""Start and stop Flower processes on loopback, and submit runs: for tests, benchmarks
and local demos. Every process started here is tracked by PID and stopped by PID.

A `LocalSuperLink` has its own FLWR_HOME and free ports, so it neither uses nor
disturbs a developer's `flwr run` SuperLink.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def flower_command(name: str) -> str:
    """A Flower CLI entry point of this interpreter's environment (venv need not be active)."""
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"`{name}` is not installed: pip install -e '.[dev]'")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def descendants(pid: int) -> list[int]:
    """PIDs of every live descendant of `pid` (Linux /proc; empty elsewhere).

    Flower's SuperExec starts the simulation in a new session and Ray starts its own
    daemons, so killing a process group is not enough: the tree is walked instead.
    """
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, frontier = [], [pid]
    while frontier:
        for child in children.get(frontier.pop(), []):
            found.append(child)
            frontier.append(child)
    return found


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def stop_process_tree(process: subprocess.Popen, grace_seconds: float = 20.0) -> None:
    """SIGTERM `process` and all its descendants; SIGKILL whatever is left after a grace period."""
    if process.poll() is not None:
        return
    tree = descendants(process.pid)
    _signal_all([process.pid, *tree], signal.SIGTERM)
    try:
        process.wait(timeout=grace_seconds)
    except subprocess.TimeoutExpired:
        pass
    deadline = time.monotonic() + grace_seconds
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in tree):
        time.sleep(0.2)
    _signal_all([process.pid, *tree, *descendants(process.pid)], signal.SIGKILL)
    process.wait()


def kill_process_tree(process: subprocess.Popen) -> None:
    """SIGKILL `process` and all its descendants at once (a simulated crash)."""
    tree = descendants(process.pid)
    _signal_all([process.pid, *tree], signal.SIGKILL)
    process.wait()


class LocalSuperLink:
    """A simulation SuperLink on free loopback ports with a private FLWR_HOME."""

    def __init__(self, workdir: Path, extra_env: dict[str, str] | None = None) -> None:
        self.workdir = Path(workdir)
        self.home = self.workdir / "flwr-home"
        self.http_port = free_port()
        self.control_port = free_port()
        self.fleet_port = free_port()
        self.log_path = self.workdir / "superlink.log"
        self.process: subprocess.Popen | None = None
        self.env = os.environ | {
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "FLWR_HOME": str(self.home),
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
            "PYTHONUNBUFFERED": "1",
            **(extra_env or {}),
        }

    def start(self, timeout_seconds: float = 60.0) -> LocalSuperLink:
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "config.toml").write_text(
            '[superlink]\ndefault = "local-test"\n\n'
            f'[superlink.local-test]\naddress = "127.0.0.1:{self.http_port}"\ninsecure = true\n'
        )
        with self.log_path.open("a") as log:
            self.process = subprocess.Popen(
                [
                    flower_command("flower-superlink"), "--insecure", "--simulation",
                    "--host", "127.0.0.1", "--port", str(self.http_port),
                    "--control-api-address", f"127.0.0.1:{self.control_port}",
                    "--fleet-api-address", f"127.0.0.1:{self.fleet_port}",
                ],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout_seconds
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/health", timeout=1):
                    return self
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"SuperLink did not start; see {self.log_path}") from None
                time.sleep(0.5)

    def stop(self) -> None:
        if self.process is not None:
            stop_process_tree(self.process)

    def kill(self) -> None:
        """SIGKILL the SuperLink and everything it started (a crash, for resume tests)."""
        if self.process is not None and self.process.poll() is None:
            kill_process_tree(self.process)

    def __enter__(self) -> LocalSuperLink:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def run_command(self, run_config: str, num_supernodes: int, num_cpus: float | None = None) -> list[str]:
        federation = f"num-supernodes={num_supernodes}"
        if num_cpus is not None:
            federation += f" client-resources-num-cpus={num_cpus:g}"
        return [
            flower_command("flwr"), "run", str(PROJECT_ROOT), "--stream",
            "--federation-config", federation, "--run-config", run_config,
        ]

    def run(self, run_config: str, num_supernodes: int, num_cpus: float | None = None,
            timeout_seconds: float = 3600.0) -> subprocess.CompletedProcess:
        """`flwr run . --stream` against this SuperLink; returns once the run ends."""
        return subprocess.run(
            self.run_command(run_config, num_supernodes, num_cpus),
            env=self.env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=timeout_seconds,
        )

    def submit(self, run_config: str, num_supernodes: int, log_path: Path) -> subprocess.Popen:
        """Start `flwr run . --stream` in the background, streaming into `log_path`."""
        log = log_path.open("w")
        return subprocess.Popen(
            self.run_command(run_config, num_supernodes),
            env=self.env, cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
