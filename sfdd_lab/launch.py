"""Start and stop Flower processes on loopback, and submit runs: for tests, benchmarks
and local demos. Every process started here is tracked by PID and stopped by PID.

A `LocalSuperLink` has its own FLWR_HOME and free ports, so it neither uses nor
disturbs a developer's `flwr run` SuperLink. It runs the simulation runtime, or the
deployment runtime with TLS and SuperNode authentication, which `LocalSuperNode`s join
with their own node config, as hospitals would from their own machines.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import tomllib
import urllib.request
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
GENERATE_CERTS_SCRIPT = PROJECT_ROOT / "docker" / "generate-certs.sh"
CONNECTION_NAME = "local-test"


def flower_command(name: str) -> str:
    """A Flower CLI entry point of this interpreter's environment (venv need not be active)."""
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"`{name}` is not installed: pip install -e '.[dev]'")
    return found


def stage_app(destination: Path, root: Path = PROJECT_ROOT) -> Path:
    """A copy of what the app bundle (FAB) carries: `pyproject.toml` and the files its
    `fab-include` names. `flwr run` walks every file under the app directory before it
    filters them, which in a checkout holding its virtual environment (README's `.venv`,
    some 40 000 files) costs seconds per run; the copy builds the same FAB in milliseconds
    (`tests/test_launch.py` checks they are identical)."""
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["fab-include"]
    if destination.exists():
        shutil.rmtree(destination)
    destination.mkdir(parents=True)
    shutil.copy2(root / "pyproject.toml", destination / "pyproject.toml")
    for pattern in patterns:
        for source in root.glob(pattern.lstrip("/")):
            if source.is_file() and "__pycache__" not in source.parts:
                target = destination / source.relative_to(root)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target)
    return destination


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


@dataclass(frozen=True)
class Credentials:
    """The files `docker/generate-certs.sh` writes, one folder per party."""

    root: Path

    @property
    def ca_certificate(self) -> Path:
        return self.root / "ca" / "ca.crt"

    @property
    def superlink_certificate(self) -> Path:
        return self.root / "superlink" / "server.pem"

    @property
    def superlink_key(self) -> Path:
        return self.root / "superlink" / "server.key"

    def supernode_key(self, name: str) -> Path:
        return self.root / name / "supernode.key"

    def supernode_public_key(self, name: str) -> Path:
        return self.root / name / "supernode.key.pub"


def generate_credentials(directory: Path, node_names: list[str], hosts: tuple[str, ...] = ()) -> Credentials:
    """A CA, a SuperLink TLS certificate and one auth key pair per node, by the same
    script the Docker setup and the deployment guide use."""
    command = ["bash", str(GENERATE_CERTS_SCRIPT), "-o", str(directory)]
    for host in hosts:
        command += ["-H", host]
    result = subprocess.run([*command, *node_names], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{GENERATE_CERTS_SCRIPT.name} failed: {result.stdout}{result.stderr}")
    return Credentials(Path(directory))


class ManagedProcess:
    """A Flower process started by `start()` and stopped by PID with everything it spawned."""

    process: subprocess.Popen | None = None

    def start(self):
        raise NotImplementedError

    def stop(self) -> None:
        if self.process is not None:
            stop_process_tree(self.process)

    def kill(self) -> None:
        """SIGKILL the process and everything it started at once (a crash, for resume tests)."""
        if self.process is not None and self.process.poll() is None:
            kill_process_tree(self.process)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


class LocalSuperLink(ManagedProcess):
    """A SuperLink on free loopback ports with a private FLWR_HOME.

    `simulation=True` (default): the simulation runtime, plain HTTP. `simulation=False`:
    the deployment runtime for `LocalSuperNode`s, with TLS when `credentials` are given
    and SuperNode authentication when `supernode_auth` is set (registered keys only).
    """

    def __init__(
        self,
        workdir: Path,
        extra_env: dict[str, str] | None = None,
        *,
        simulation: bool = True,
        credentials: Credentials | None = None,
        supernode_auth: bool = False,
    ) -> None:
        if supernode_auth and credentials is None:
            raise ValueError("SuperNode authentication needs TLS: pass credentials")
        self.simulation = simulation
        self.credentials = credentials
        self.supernode_auth = supernode_auth
        self.workdir = Path(workdir)
        self.home = self.workdir / "flwr-home"
        self.http_port = free_port()
        self.control_port = free_port()
        self.fleet_port = free_port()
        self.log_path = self.workdir / "superlink.log"
        self.app_dir = self.workdir / "app" / "sfdd-flwr"  # staged at start: see `stage_app`
        self.process: subprocess.Popen | None = None
        self.env = os.environ | {
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "FLWR_HOME": str(self.home),
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
            "PYTHONUNBUFFERED": "1",
            **(extra_env or {}),
        }

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    def connection_toml(self) -> str:
        """The flwr CLI's connection to this SuperLink (FLWR_HOME/config.toml)."""
        security = (
            f'root-certificates = "{self.credentials.ca_certificate}"\n'
            if self.credentials is not None
            else "insecure = true\n"
        )
        return (
            f'[superlink]\ndefault = "{CONNECTION_NAME}"\n\n'
            f'[superlink.{CONNECTION_NAME}]\naddress = "{self.address}"\n{security}'
        )

    def command(self) -> list[str]:
        command = [flower_command("flower-superlink"), "--host", "127.0.0.1", "--port", str(self.http_port)]
        if self.simulation:
            return [
                *command, "--insecure", "--simulation",
                "--control-api-address", f"127.0.0.1:{self.control_port}",
                "--fleet-api-address", f"127.0.0.1:{self.fleet_port}",
            ]
        if self.credentials is None:
            command.append("--insecure")
        else:
            command += [
                "--ssl-ca-certfile", str(self.credentials.ca_certificate),
                "--ssl-certfile", str(self.credentials.superlink_certificate),
                "--ssl-keyfile", str(self.credentials.superlink_key),
            ]
        if self.supernode_auth:
            command.append("--enable-supernode-auth")
        return command

    def _health_url_and_context(self) -> tuple[str, ssl.SSLContext | None]:
        if self.credentials is None:
            return f"http://{self.address}/health", None
        context = ssl.create_default_context(cafile=str(self.credentials.ca_certificate))
        context.verify_flags |= ssl.VERIFY_X509_STRICT  # as newer Pythons verify by default
        return f"https://{self.address}/health", context

    def start(self, timeout_seconds: float = 60.0) -> LocalSuperLink:
        self.home.mkdir(parents=True, exist_ok=True)
        stage_app(self.app_dir)
        (self.home / "config.toml").write_text(self.connection_toml())
        with self.log_path.open("a") as log:
            self.process = subprocess.Popen(
                self.command(),
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        url, context = self._health_url_and_context()
        deadline = time.monotonic() + timeout_seconds
        while True:
            try:
                with urllib.request.urlopen(url, timeout=1, context=context):
                    return self
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"SuperLink did not start; see {self.log_path}") from None
                time.sleep(0.5)

    def run_command(self, run_config: str, num_supernodes: int | None = None,
                    num_cpus: float | None = None) -> list[str]:
        """`flwr run . <connection> --stream`; a simulation also gets its federation size."""
        if not (self.app_dir / "pyproject.toml").is_file():
            stage_app(self.app_dir)
        command = [flower_command("flwr"), "run", str(self.app_dir), CONNECTION_NAME, "--stream"]
        if self.simulation:
            if num_supernodes is None:
                raise ValueError("a simulation run needs num_supernodes")
            federation = f"num-supernodes={num_supernodes}"
            if num_cpus is not None:
                federation += f" client-resources-num-cpus={num_cpus:g}"
            command += ["--federation-config", federation]
        return [*command, "--run-config", run_config]

    def run(self, run_config: str, num_supernodes: int | None = None, num_cpus: float | None = None,
            timeout_seconds: float = 3600.0, log_path: Path | None = None) -> subprocess.CompletedProcess:
        """`flwr run . --stream` against this SuperLink; returns once the run ends. With
        `log_path` the output is written there as it comes (follow a long run with
        `tail -f`) and is also the result's stdout."""
        command = self.run_command(run_config, num_supernodes, num_cpus)
        if log_path is None:
            return subprocess.run(
                command, env=self.env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=timeout_seconds,
            )
        with log_path.open("w") as log:
            completed = subprocess.run(
                command, env=self.env, cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT, timeout=timeout_seconds,
            )
        return subprocess.CompletedProcess(command, completed.returncode, log_path.read_text(), "")

    def submit(self, run_config: str, num_supernodes: int | None, log_path: Path) -> subprocess.Popen:
        """Start `flwr run . --stream` in the background, streaming into `log_path`."""
        with log_path.open("w") as log:
            return subprocess.Popen(
                self.run_command(run_config, num_supernodes),
                env=self.env, cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def flwr(self, *arguments: str, timeout_seconds: float = 120.0) -> subprocess.CompletedProcess:
        """A `flwr` CLI command against this SuperLink (its connection is the default)."""
        return subprocess.run(
            [flower_command("flwr"), *arguments], env=self.env, cwd=self.workdir,
            capture_output=True, text=True, timeout=timeout_seconds,
        )

    def register_supernode(self, public_key: Path, name: str) -> int:
        """`flwr supernode register`: admit the SuperNode holding the matching private key."""
        result = self.flwr("supernode", "register", str(public_key), CONNECTION_NAME, "--name", name, "--format", "json")
        try:
            return int(json.loads(result.stdout)["node-id"])
        except (ValueError, KeyError) as error:
            raise RuntimeError(f"registering {public_key} failed: {result.stdout}{result.stderr}") from error

    def supernodes(self) -> dict[int, str]:
        """Registered SuperNodes and their status (`flwr supernode ls`)."""
        result = self.flwr("supernode", "ls", CONNECTION_NAME, "--format", "json")
        try:
            nodes = json.loads(result.stdout)["nodes"]
        except (ValueError, KeyError) as error:
            raise RuntimeError(f"listing SuperNodes failed: {result.stdout}{result.stderr}") from error
        return {int(node["node-id"]): node["status"] for node in nodes}


class LocalSuperNode(ManagedProcess):
    """A `flower-supernode` on loopback: its own FLWR_HOME, node config and log.

    It talks TLS to its SuperLink (verifying it with `root_certificates`, by default the
    SuperLink's CA) and authenticates with `private_key` when given. Started and stopped
    by PID; `start()` again after `stop()`/`kill()` reconnects it with the same identity.
    """

    def __init__(
        self,
        superlink: LocalSuperLink,
        name: str,
        node_config: str,
        private_key: Path | None = None,
        root_certificates: Path | None = None,
        use_superlink_ca: bool = True,
    ) -> None:
        self.superlink = superlink
        self.name = name
        self.node_config = node_config
        self.private_key = private_key
        self.root_certificates = root_certificates
        if root_certificates is None and use_superlink_ca and superlink.credentials is not None:
            self.root_certificates = superlink.credentials.ca_certificate
        self.workdir = superlink.workdir / "supernodes" / name
        self.home = self.workdir / "flwr-home"
        self.log_path = self.workdir / "supernode.log"
        self.process: subprocess.Popen | None = None
        self._log_offset = 0
        # Loopback nodes share this machine's cores: one torch thread each avoids
        # oversubscription (a hospital's own machine needs no such limit).
        self.env = superlink.env | {"FLWR_HOME": str(self.home), "OMP_NUM_THREADS": "1"}

    def command(self) -> list[str]:
        command = [
            flower_command("flower-supernode"), "--superlink", self.superlink.address,
            "--host", "127.0.0.1", "--port", str(free_port()),
            "--node-config", self.node_config,
        ]
        if self.superlink.credentials is None:
            command.append("--insecure")
        elif self.root_certificates is not None:
            command += ["--root-certificates", str(self.root_certificates)]
        if self.private_key is not None:
            command += ["--auth-supernode-private-key", str(self.private_key)]
        return command

    def start(self) -> LocalSuperNode:
        self.home.mkdir(parents=True, exist_ok=True)
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("a") as log:
            self.process = subprocess.Popen(
                self.command(), env=self.env, cwd=self.workdir, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )
        return self

    def log_text(self) -> str:
        """What this SuperNode logged since its last start."""
        if not self.log_path.exists():
            return ""
        with self.log_path.open(errors="replace") as log:
            log.seek(self._log_offset)
            return log.read()

    def wait_until_connected(self, timeout_seconds: float = 60.0) -> int:
        """Its node ID once the SuperLink accepted it; raises if it exits first."""
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            if found := re.search(r"SuperNode ID: (\d+)", self.log_text()):
                return int(found.group(1))
            if self.process is None or self.process.poll() is not None:
                break
            time.sleep(0.2)
        raise RuntimeError(f"SuperNode {self.name} did not connect:\n{self.log_text()[-3000:]}")

    def wait_for_exit(self, timeout_seconds: float = 60.0) -> int:
        """Its exit code (e.g. after the SuperLink refused it)."""
        assert self.process is not None
        return self.process.wait(timeout=timeout_seconds)

