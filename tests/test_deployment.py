"""The deployment runtime on loopback, as hospitals would run it on their own machines.

A `flower-superlink` with TLS and SuperNode authentication, hospital `flower-supernode`s
with their own ImageFolder directories (cut from MNIST), and `flwr run` against them.
Certificates and keys come from `docker/generate-certs.sh`, nodes are admitted with
`flwr supernode register`. One federation serves the module (starting it is the slow
part); every process is stopped by PID at the end, also when a test fails.
"""

from __future__ import annotations

import json
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from conftest import real_mnist_dir
from fakedata import write_imagefolder, write_mnist
from sfdd_flwr.runs.artifacts import load_synthetic_set
from sfdd_lab import demo_data
from sfdd_lab.launch import CONNECTION_NAME, Credentials, LocalSuperLink, LocalSuperNode, generate_credentials

pytestmark = pytest.mark.slow

HOSPITALS = ("hospital-a", "hospital-b", "hospital-c")
MISFIT = "hospital-d"  # its images are 32x32, the task declares 28x28
TEST_PER_CLASS = 10
ROUND_TIMEOUT = 30  # healthy nodes answer within ~15 s on 2 busy cores; a dead one costs this much
DEAD_NODE_TIMEOUT = 20  # the run with a killed node: its healthy rounds take ~12 s here
RUN_CONFIG = (
    f"preset='smoke' {demo_data.task_declaration('mnist')} eval-mode='federated' eval-every=0 "
    f"num-server-rounds=2 batch-real=8 net-width=8 num-eval=1 eval-epochs=2 "
    f"round-timeout={ROUND_TIMEOUT} eval-timeout={ROUND_TIMEOUT}"
)


@dataclass
class Federation:
    link: LocalSuperLink
    credentials: Credentials
    nodes: dict[str, LocalSuperNode]
    node_ids: dict[str, int]
    work: Path

    def node(self, name: str, private_key: Path | None = None, **options) -> LocalSuperNode:
        """A SuperNode holding `name`'s data; stopped when the module ends."""
        node = LocalSuperNode(
            self.link, name, f"data-dir='{self.work / 'data' / name}' node-name='{name}'",
            private_key, **options,
        )
        self.nodes[f"{name}-{len(self.nodes)}"] = node
        return node

    def run(self, run_config: str, timeout_seconds: float = 240) -> tuple[str, int]:
        result = self.link.run(run_config, timeout_seconds=timeout_seconds)
        return result.stdout + result.stderr, result.returncode


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    work = tmp_path_factory.mktemp("deployment")
    with pytest.MonkeyPatch.context() as patch, ExitStack() as stack:
        patch.setenv("XDG_CACHE_HOME", str(work / "cache"))
        mnist = real_mnist_dir() or write_mnist(work / "mnist", per_class=60, test_per_class=40)
        demo_data.write_demo_hospitals("mnist", str(mnist), work / "data", len(HOSPITALS), 20, TEST_PER_CLASS)
        write_imagefolder(work / "data" / MISFIT, tuple(str(c) for c in range(10)), per_class=3, size=32)
        credentials = generate_credentials(work / "certs", [*HOSPITALS, MISFIT, "intruder"])
        link = LocalSuperLink(
            work, {"XDG_CACHE_HOME": str(work / "cache")},
            simulation=False, credentials=credentials, supernode_auth=True,
        )
        stack.enter_context(link)
        federation = Federation(link, credentials, {}, {}, work)
        stack.callback(lambda: [node.stop() for node in federation.nodes.values()])
        for name in (*HOSPITALS, MISFIT):
            federation.node_ids[name] = link.register_supernode(credentials.supernode_public_key(name), name)
        started = [federation.node(name, credentials.supernode_key(name)).start() for name in HOSPITALS]
        for node in started:
            assert node.wait_until_connected() == federation.node_ids[node.name]
        yield federation


def test_a_supernode_with_an_unregistered_key_is_refused(federation):
    intruder = federation.node("intruder", federation.credentials.supernode_key("intruder")).start()
    assert intruder.wait_for_exit(60) != 0
    assert "Failed to activate SuperNode" in intruder.log_text()
    assert sorted(federation.link.supernodes()) == sorted(federation.node_ids.values())


def test_connections_without_the_ca_certificate_fail(federation):
    registered_key = federation.credentials.supernode_key(MISFIT)
    stranger = federation.node(MISFIT, registered_key, use_superlink_ca=False).start()
    assert stranger.wait_for_exit(60) != 0
    assert "CERTIFICATE_VERIFY_FAILED" in stranger.log_text()
    assert federation.link.supernodes()[federation.node_ids[MISFIT]] == "registered"  # never got online

    config = federation.link.home / "config.toml"
    config.write_text(config.read_text() + f'\n[superlink.no-ca]\naddress = "{federation.link.address}"\n')
    listing = federation.link.flwr("ls", "no-ca")  # the CLI only says it cannot connect
    assert listing.returncode != 0 and "Connection to the SuperLink is unavailable" in listing.stdout + listing.stderr
    assert federation.link.flwr("ls", CONNECTION_NAME).returncode == 0


@pytest.fixture(scope="module")
def first_run(federation):
    """A 1-round SFDD run on the three hospitals, evaluated on their held-out images
    (a deployment round costs ~12 s of process start-up here)."""
    out = federation.work / "out"
    config = RUN_CONFIG.replace("num-server-rounds=2", "num-server-rounds=1")
    log, returncode = federation.run(config + f" min-clients=3 output-dir='{out}' run-name='first'")
    return out / "first", log, returncode


def test_a_run_on_three_hospitals_writes_s_and_metrics_and_reports_federated_accuracy(federation, first_run):
    run_dir, log, returncode = first_run
    assert returncode == 0, log
    saved = load_synthetic_set(run_dir)
    assert saved.round == 1 and saved.images.shape == (10, 1, 28, 28) and torch.isfinite(saved.images).all()
    assert saved.metadata["class_names"] == [str(c) for c in range(10)]
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["round"] for m in metrics] == [1]
    assert all((m["clients_ok"], m["clients_failed"]) == (3, 0) for m in metrics)
    final = metrics[-1]
    assert 0.0 <= final["federated_accuracy_mean"] <= 1.0
    assert final["federated_test_examples"] == len(HOSPITALS) * 10 * TEST_PER_CLASS
    assert [n["node"] for n in final["federated_nodes"]] == [
        f"{name} (node {federation.node_ids[name]})" for name in HOSPITALS
    ]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["final_federated_accuracy_mean"] == final["federated_accuracy_mean"]
    assert "round 1: federated accuracy" in log and "held-out images of 3/3 nodes" in log, log
    assert "SUMMARY gradient-matching imagefolder IPC 1 (federated): 1 rounds" in log, log


def test_the_diffusion_generator_trains_on_the_three_hospitals(federation):
    """The second synthesizer over TLS and authenticated nodes: the weights travel, the
    samples are evaluated by the hospitals on their held-out images."""
    out = federation.work / "out"
    config = RUN_CONFIG.replace("preset='smoke'", "preset='diffusion-smoke'").replace(
        "num-server-rounds=2", "num-server-rounds=1")
    log, returncode = federation.run(config + f" min-clients=3 output-dir='{out}' run-name='generator'")
    assert returncode == 0, log
    assert "SUMMARY diffusion imagefolder 2 samples per class (federated): 1 rounds" in log, log
    metrics = [json.loads(line) for line in (out / "generator" / "metrics.jsonl").read_text().splitlines()]
    assert all((m["clients_ok"], m["clients_failed"]) == (3, 0) for m in metrics)
    assert metrics[-1]["federated_test_examples"] == len(HOSPITALS) * 10 * TEST_PER_CLASS
    assert 0.0 <= metrics[-1]["federated_accuracy_mean"] <= 1.0
    assert (out / "generator" / "generator.pt").is_file()


def test_a_misfit_node_is_reported_and_a_killed_node_costs_one_timeout(federation):
    """hospital-d's data does not fit: it answers with an error the server logs by name.
    hospital-c is killed during round 1: the round waits `round-timeout`, aggregates the
    replies that arrived, and the run completes with the others. It can reconnect later."""
    misfit = federation.node(MISFIT, federation.credentials.supernode_key(MISFIT)).start()
    assert misfit.wait_until_connected() == federation.node_ids[MISFIT]
    victim = next(n for n in federation.nodes.values() if n.name == "hospital-c")
    victim_id = federation.node_ids["hospital-c"]
    out = federation.work / "out"
    seen = len(victim.log_text())
    config = RUN_CONFIG.replace(f"round-timeout={ROUND_TIMEOUT} eval-timeout={ROUND_TIMEOUT}",
                                f"round-timeout={DEAD_NODE_TIMEOUT} eval-timeout={DEAD_NODE_TIMEOUT}")
    submitted = federation.link.submit(
        config + f" min-clients=2 output-dir='{out}' run-name='kill'", None, federation.work / "kill.log"
    )
    try:
        deadline = time.monotonic() + 120
        while "Receiving: train message" not in victim.log_text()[seen:]:
            assert time.monotonic() < deadline and submitted.poll() is None, (federation.work / "kill.log").read_text()
            time.sleep(0.2)
        victim.kill()
        killed_at = time.monotonic()
        submitted.wait(timeout=300)
    finally:
        submitted.kill()
        submitted.wait()
    log = (federation.work / "kill.log").read_text()
    assert submitted.returncode == 0, log
    metrics = [json.loads(line) for line in (out / "kill" / "metrics.jsonl").read_text().splitlines()]
    assert [m["round"] for m in metrics] == [1, 2]
    assert all(m["clients_ok"] == 2 for m in metrics), metrics
    first = metrics[0]
    assert any(f.startswith(f"node {victim_id}: no reply within round-timeout={DEAD_NODE_TIMEOUT} s")
               for f in first["failures"])
    assert first["round_seconds"] < DEAD_NODE_TIMEOUT + 20
    misfit_error = "hospital-d: 30 of 30 images under"
    assert f"rejected the reply of node {federation.node_ids[MISFIT]}: client error: {misfit_error}" in log, log
    assert "is 32x32 pixels, the task declares image-size=28x28" in log
    assert [n["node"].split()[0] for n in metrics[-1]["federated_nodes"]] == ["hospital-a", "hospital-b"]
    assert "SUMMARY gradient-matching imagefolder IPC 1 (federated): 2 rounds" in log

    # the crashed node comes back once the SuperLink has noticed its missing heartbeats
    deadline = killed_at + 120
    while federation.link.supernodes()[victim_id] == "online":
        assert time.monotonic() < deadline, "the SuperLink never noticed the killed SuperNode"
        time.sleep(2)
    victim.start()
    assert victim.wait_until_connected() == victim_id
    assert federation.link.supernodes()[victim_id] == "online"


def test_a_restarted_serverapp_resumes_from_the_last_saved_synthetic_set(federation, first_run):
    run_dir, _, returncode = first_run
    assert returncode == 0
    before = load_synthetic_set(run_dir)
    log, returncode = federation.run(RUN_CONFIG + f" min-clients=2 output-dir='{run_dir.parent}' resume-from='{run_dir}'")
    assert returncode == 0, log
    assert "continuing with round 2/2" in log, log
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["round"] for m in metrics] == [1, 2]
    after = load_synthetic_set(run_dir)
    assert after.round == 2 and not torch.equal(after.images, before.images)
    assert metrics[-1]["federated_accuracy_mean"] is not None
