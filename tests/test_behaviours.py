"""Client behaviours: selection, plug-ins, Doorping end to end in-process, defences."""

import json
import sys
import textwrap

import numpy as np
import pytest
import torch

from flower_helpers import InProcessGrid
from sfdd_flwr import client_app
from sfdd_flwr.attacks.doorping.files import colluders_folder, find_trigger
from sfdd_flwr.behaviours.registry import (
    BEHAVIOURS,
    ClientBehaviour,
    DoorpingBehaviour,
    behaviour_for_node,
    load_behaviour,
    malicious_partitions,
    register_behaviour,
)
from sfdd_flwr.data.datasets import LabelledImages, load_split
from sfdd_flwr.methods import LocalJob
from sfdd_flwr.methods.image_set import initial_synthetic_images
from sfdd_flwr.runs.artifacts import load_synthetic_set
from sfdd_flwr.server_app import server_parts
from sfdd_flwr.settings import ConfigError, Settings
from sfdd_lab.local_federation import SimulatedClient

pytestmark = pytest.mark.usefixtures("server_identity")


def settings(**values) -> Settings:
    return Settings.from_mapping({"preset": ""} | values)


def test_malicious_partitions_from_list_or_fraction():
    assert malicious_partitions(settings(**{"malicious-clients": "0,3"}), 5) == {0, 3}
    assert malicious_partitions(settings(), 5) == set()
    chosen = malicious_partitions(settings(**{"malicious-fraction": 0.4}), 5)
    assert len(chosen) == 2 and chosen <= set(range(5))
    assert chosen == malicious_partitions(settings(**{"malicious-fraction": 0.4}), 5)
    assert len(malicious_partitions(settings(**{"malicious-fraction": 0.01}), 3)) == 1


def test_behaviour_for_node_prefers_the_node_config():
    run = settings(**{"malicious-clients": "1", "malicious-behaviour": "naive-backdoor"})
    assert behaviour_for_node(run, {"partition-id": 1, "num-partitions": 3}) == "naive-backdoor"
    assert behaviour_for_node(run, {"partition-id": 0, "num-partitions": 3}) == "honest"
    assert behaviour_for_node(run, {"partition-id": 0, "num-partitions": 3, "behaviour": "doorping"}) == "doorping"


def test_built_in_behaviours_and_bad_names():
    assert {"honest", "doorping", "naive-backdoor"} <= set(BEHAVIOURS)
    assert load_behaviour("doorping") is DoorpingBehaviour
    with pytest.raises(ValueError, match="is not allowed"):
        load_behaviour("no such behaviour")
    with pytest.raises(ValueError, match="cannot be loaded"):
        load_behaviour("nonexistent_module_xyz:Thing")
    with pytest.raises(ConfigError, match="malicious-behaviour='evil'"):
        settings(**{"malicious-behaviour": "evil"})
    with pytest.raises(ConfigError, match="doorping-target=10"):
        settings(**{"doorping-target": 10, "malicious-clients": "0"})
    with pytest.raises(ConfigError, match="ldpo-k=10"):
        settings(**{"ldpo-k": 10, "defence": "ldpo-rld"})
    assert settings(**{"ldpo-k": 10}).ldpo_k == 10  # only checked when LDPO-RLD is on


def test_a_defence_or_behaviour_that_needs_a_hook_the_method_lacks_is_refused(tmp_path, monkeypatch):
    (tmp_path / "hookless_method.py").write_text(textwrap.dedent("""
        from sfdd_flwr.methods.gradient_matching import GradientMatching

        class Hookless(GradientMatching):
            supported_hooks = frozenset()
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    method = {"method": "hookless_method:Hookless"}
    with pytest.raises(ConfigError, match="defence='ldpo-rld' is not allowed with method='hookless_method:Hookless'"):
        settings(**method, defence="ldpo-rld")
    with pytest.raises(ConfigError, match="malicious-behaviour='doorping' is not allowed with method="):
        settings(**method, **{"malicious-clients": "0"})
    assert settings(**method, defence="local-dp").defence == "local-dp"  # works on any state
    assert settings(**method, **{"malicious-clients": "0", "malicious-behaviour": "naive-backdoor"})
    sys.modules.pop("hookless_method", None)


def test_a_behaviour_outside_the_package_is_loaded_by_path(tmp_path, monkeypatch):
    (tmp_path / "outside_behaviours.py").write_text(textwrap.dedent("""
        from sfdd_flwr.behaviours.base import ClientBehaviour

        class Frozen(ClientBehaviour):
            def local_update(self, job, method):
                result = super().local_update(job, method)
                result.state = {key: value.clone() for key, value in job.state.items()}
                result.metrics["frozen"] = 1.0
                return result
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    cls = load_behaviour("outside_behaviours:Frozen")
    assert issubclass(cls, ClientBehaviour) and cls.__name__ == "Frozen"
    sys.modules.pop("outside_behaviours", None)


def test_register_behaviour_rejects_non_behaviours():
    with pytest.raises(TypeError):
        register_behaviour("bad")(object)


def run_federation(data_dir, tmp_path, clients=3, **values):
    config = {
        "preset": "", "data-dir": str(data_dir), "output-dir": str(tmp_path / "out"), "run-name": "run",
        "net-width": 8, "batch-real": 8, "ipc": 2, "outer-loop": 2, "inner-loop": 2,
        "num-server-rounds": 2, "eval-every": 0, "num-eval": 1, "eval-epochs": 5, "min-clients": clients,
    } | values
    run_settings = Settings.from_mapping(config)
    grid = InProcessGrid(
        {100 + i: client_app.app for i in range(clients)},
        {100 + i: {"partition-id": i, "num-partitions": clients} for i in range(clients)},
    )
    test = load_split("mnist", str(data_dir), train=False)
    lines = []
    strategy, recorder = server_parts(run_settings, grid, lines.append, test)
    strategy.run(grid, recorder)
    recorder.finish()
    return grid, recorder, lines


@pytest.mark.parametrize("behaviour", ["doorping", "naive-backdoor"])
def test_backdoor_client_keeps_its_trigger_and_the_server_scores_it(tiny_mnist_dir, tmp_path, behaviour):
    grid, recorder, lines = run_federation(
        tiny_mnist_dir, tmp_path, **{"malicious-clients": "1", "malicious-behaviour": behaviour,
                                     "doorping-poison-fraction": 0.05, "doorping-trigger-steps": 20}
    )
    run_dir = recorder.run_dir.path
    saved = torch.load(run_dir / "attack" / "trigger_client1.pt", weights_only=True)
    assert saved["behaviour"] == behaviour and saved["round"] == 2 and saved["target"] == 0
    kept = torch.load(run_dir / "attack" / "round_0002" / "trigger_client1.pt", weights_only=True)
    assert torch.equal(kept["pattern"], saved["pattern"])  # the evaluated round's trigger is kept
    state = grid.contexts[101].state
    assert "behaviour-state" in state.array_records  # the trigger stays with the client
    assert "behaviour-state" not in grid.contexts[100].state.array_records
    pattern = state["behaviour-state"].to_torch_state_dict()["trigger-pattern"]
    assert torch.equal(pattern, saved["pattern"])
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    final = metrics[-1]
    assert 0.0 <= final["attack_success_mean"] <= 1.0 and len(final["attack_success"]) == 1
    poisoned = [c for c in final["clients"] if "poisoned_examples" in c]
    assert len(poisoned) == 1 and poisoned[0]["poisoned_examples"] == 5.0  # 5 % of 100
    if behaviour == "doorping":
        assert poisoned[0]["trigger_updates"] == 1.0  # outer-loop 2: one inner training
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["final_attack_success_mean"] == final["attack_success_mean"]
    assert any("attack success" in line for line in lines)


def test_a_resumed_doorping_client_continues_from_the_trigger_it_saved(tiny_mnist_dir, tmp_path):
    """A resumed run has empty client state; the attacker picks its trigger up from the run
    directory (written at the end of the previous round), so round 2 after a restart is the
    round 2 of an uninterrupted run."""
    run = settings(**{
        "data-dir": str(tiny_mnist_dir), "net-width": 8, "batch-real": 8, "ipc": 2, "outer-loop": 2,
        "inner-loop": 2, "min-clients": 1, "malicious-clients": "0", "malicious-behaviour": "doorping",
        "doorping-poison-fraction": 0.05, "doorping-trigger-steps": 20, "persist-momentum": False,
    })
    run_dir = tmp_path / "run"
    images = {"images": initial_synthetic_images(run.network_spec, run.ipc, torch.Generator().manual_seed(0))}
    attacker = SimulatedClient(run, 0, torch.device("cpu"), run_dir)
    after_round_1 = attacker.local_update(1, images)["state"]
    saved_file = run_dir / "attack" / "trigger_client0.pt"
    saved_after_round_1 = saved_file.read_bytes()
    uninterrupted = attacker.local_update(2, after_round_1)["state"]["images"]

    saved_file.write_bytes(saved_after_round_1)
    resumed = SimulatedClient(run, 0, torch.device("cpu"), run_dir).local_update(2, after_round_1)["state"]["images"]
    assert np.array_equal(resumed, uninterrupted)

    saved_file.unlink()
    from_scratch = SimulatedClient(run, 0, torch.device("cpu"), run_dir).local_update(2, after_round_1)["state"]["images"]
    assert not np.array_equal(from_scratch, uninterrupted)  # the saved trigger is what made them equal

    saved_file.write_bytes(saved_after_round_1)  # a trigger from round 1 does not belong to round 3
    stale = SimulatedClient(run, 0, torch.device("cpu"), run_dir).local_update(3, after_round_1)["state"]["images"]
    saved_file.unlink()
    fresh = SimulatedClient(run, 0, torch.device("cpu"), run_dir).local_update(3, after_round_1)["state"]["images"]
    assert np.array_equal(stale, fresh)


def test_colluding_doorping_clients_start_from_one_pooled_trigger(tmp_path):
    """`doorping-collude`: one run-seeded starting trigger for every attacker, then each round
    the mean of all attackers' triggers of the previous round (pooled per round in the run
    directory, so a colluder that already finished the next round changes nothing)."""
    data = LabelledImages(torch.zeros(4, 1, 28, 28), torch.zeros(4, dtype=torch.long))
    run_dir = tmp_path / "run"

    def start(client, server_round, collude):
        run = settings(**{"malicious-clients": "0,1", "doorping-collude": collude})
        job = LocalJob(run, server_round, client, {"images": torch.zeros(10, 1, 28, 28)}, data, torch.device("cpu"),
                       run_dir=run_dir)
        return DoorpingBehaviour().starting_trigger(job).pattern

    assert torch.equal(start(0, 1, True), start(1, 1, True))
    assert not torch.equal(start(0, 1, False), start(1, 1, False))

    mask = start(0, 1, True).ne(0).float()  # the patch: the initial pixels are in [1, 255]

    def write(path, value, round_number):
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"pattern": mask * value, "mask": mask, "target": 0, "round": round_number}, path)

    write(colluders_folder(run_dir, 1) / "trigger_client0.pt", 1.0, 1)
    write(colluders_folder(run_dir, 1) / "trigger_client1.pt", 3.0, 1)
    write(colluders_folder(run_dir, 2) / "trigger_client0.pt", 9.0, 2)  # client 0 already ended round 2
    write(run_dir / "attack" / "trigger_client1.pt", 5.0, 1)
    pooled = mask * 2.0
    assert torch.equal(start(0, 2, True), pooled) and torch.equal(start(1, 2, True), pooled)
    assert torch.equal(start(1, 2, False), mask * 5.0)  # alone, each resumes its own
    assert torch.equal(start(1, 4, True), start(1, 1, True))  # no pool of round 3: a fresh start
    scored, name = find_trigger(run_dir, colluding_round=1)
    assert torch.equal(scored.pattern, pooled) and name == "the colluders' mean of trigger_client0, trigger_client1"
    assert torch.equal(find_trigger(run_dir)[0].pattern, mask * 5.0)


def test_colluding_doorping_clients_run_and_are_scored_on_their_pooled_trigger(tiny_mnist_dir, tmp_path):
    grid, recorder, lines = run_federation(
        tiny_mnist_dir, tmp_path, **{"malicious-clients": "0,1", "doorping-collude": True,
                                     "doorping-poison-fraction": 0.05, "doorping-trigger-steps": 20}
    )
    run_dir = recorder.run_dir.path
    for round_number in (1, 2):
        assert sorted(p.name for p in colluders_folder(run_dir, round_number).iterdir()) == [
            "trigger_client0.pt", "trigger_client1.pt"]
    assert any("scoring the backdoor of the colluders' mean of trigger_client0, trigger_client1" in line for line in lines)


@pytest.mark.parametrize(
    ("defence", "extra"),
    [("ldpo-rld", {"ldpo-alpha": 0.3, "ldpo-k": 2}), ("local-dp", {"local-dp-clip": 0.5, "local-dp-noise": 0.01})],
)
def test_defences_run_through_the_client_app(tiny_mnist_dir, tmp_path, defence, extra):
    _, recorder, _ = run_federation(tiny_mnist_dir, tmp_path, clients=2, defence=defence, **extra)
    metrics = recorder.run_dir.read_metrics()
    assert [m["round"] for m in metrics] == [1, 2]
    if defence == "local-dp":
        assert metrics[0]["local_dp_epsilon"] > 0 and metrics[0]["local_dp_delta"] == 1e-5
        assert all(c["local_dp_update_norm"] > 0 for c in metrics[0]["clients"])


def test_ldpo_rld_changes_the_update_and_honest_runs_do_not_depend_on_it(tiny_mnist_dir, tmp_path):
    def final_images(path, **values):
        return load_synthetic_set(run_federation(tiny_mnist_dir, path, clients=2, **values)[1].run_dir.path).images

    plain = final_images(tmp_path / "a")
    again = final_images(tmp_path / "b")
    defended = final_images(tmp_path / "c", defence="ldpo-rld")
    assert torch.equal(plain, again)
    assert not torch.equal(plain, defended)


def test_the_documented_example_behaviour_works(tiny_mnist_dir, tmp_path, monkeypatch):
    """The code block of docs/backdoors.md, loaded by path, runs and does what it says."""
    from pathlib import Path

    docs = (Path(__file__).resolve().parents[1] / "docs" / "backdoors.md").read_text()
    code = docs.split("```python\n", 1)[1].split("```", 1)[0]
    (tmp_path / "my_behaviours.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("my_behaviours", None)
    _, recorder, _ = run_federation(
        tiny_mnist_dir, tmp_path / "run", clients=2,
        **{"malicious-clients": "1", "malicious-behaviour": "my_behaviours:SignFlip", "num-eval": 0, "num-server-rounds": 1},
    )
    clients = recorder.run_dir.read_metrics()[0]["clients"]
    assert sorted(c.get("sign_flipped", 0.0) for c in clients) == [0.0, 1.0]
    sys.modules.pop("my_behaviours", None)
