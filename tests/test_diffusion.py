"""The diffusion generator as a method: shapes, seeded determinism, weight averaging with
Flower's FedAvg, checkpoint and resume, sampling, and its DP-SGD accountant."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict

from flower_helpers import delivered, strategy_for
from sfdd_flwr.data.datasets import load_split
from sfdd_flwr.methods import LocalJob, load_method
from sfdd_flwr.methods.diffusion import Diffusion, from_model_space, to_model_space
from sfdd_flwr.methods.diffusion.privacy import PrivateTraining, noise_multiplier_for
from sfdd_flwr.methods.diffusion.training import BatchDrawer, round_learning_rate
from sfdd_flwr.runs.artifacts import RunDirectory
from sfdd_flwr.settings import ConfigError, Settings

TINY = {
    "preset": "", "method": "diffusion", "diffusion-channels": "8,8", "diffusion-local-steps": 2,
    "diffusion-batch": 8, "diffusion-samples-per-class": 2, "diffusion-sampling-steps": 2,
    "diffusion-sample-batch": 7,
}


def tiny(data_dir, **extra) -> Settings:
    return Settings.from_mapping(TINY | {"data-dir": str(data_dir)} | extra)


def job(settings: Settings, state, data, server_round=1, client=0, method_state=None) -> LocalJob:
    return LocalJob(settings, server_round, client, state, data, torch.device("cpu"), method_state=method_state or {})


@pytest.fixture(scope="module")
def tiny_data(tiny_mnist_dir):
    return load_split("mnist", str(tiny_mnist_dir), train=True)


def test_the_state_is_the_unets_weights_and_a_local_update_keeps_their_shapes(tiny_mnist_dir, tiny_data):
    settings = tiny(tiny_mnist_dir)
    method = load_method("diffusion")(settings)
    state = method.initial_state()
    assert all(value.dtype == torch.float32 for value in state.values())
    assert method.initial_state().keys() == state.keys()
    assert all(torch.equal(a, b) for a, b in zip(state.values(), method.initial_state().values()))  # seeded
    result = method.local_update(job(settings, state, tiny_data))
    assert result.state.keys() == state.keys()
    assert all(result.state[key].shape == value.shape for key, value in state.items())
    assert any(not torch.equal(result.state[key], value) for key, value in state.items())
    assert method.reply_problem(state, result.state) is None
    assert result.metrics["denoising-loss"] > 0 and "dp-epsilon" not in result.metrics


def test_a_local_update_is_a_pure_function_of_the_seeds(tiny_mnist_dir, tiny_data):
    settings = tiny(tiny_mnist_dir)
    method = Diffusion(settings)
    state = method.initial_state()
    first = method.local_update(job(settings, state, tiny_data, client=3)).state
    again = Diffusion(settings).local_update(job(settings, state, tiny_data, client=3)).state
    other = method.local_update(job(settings, state, tiny_data, client=4)).state
    assert all(torch.equal(first[key], again[key]) for key in first)
    assert any(not torch.equal(first[key], other[key]) for key in first)


@pytest.mark.usefixtures("server_identity")
def test_the_strategy_averages_the_weights_with_flowers_fedavg(tiny_mnist_dir):
    strategy = strategy_for(tiny(tiny_mnist_dir, **{"max-weight-share": 1.0, "max-update-ratio": 0}))
    sent = strategy.sent_state
    key = next(iter(sent))

    def reply(node, value, examples):
        instruction = delivered(Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=node,
                                        message_type=MessageType.TRAIN), node)
        arrays = {k: Array(np.full(tuple(v.shape), value, np.float32)) for k, v in sent.items()}
        content = RecordDict({"state": ArrayRecord(arrays), "metrics": MetricRecord({"num-examples": examples})})
        return Message(content, reply_to=instruction)

    arrays, metrics = strategy.aggregate_train(1, [reply(1, 1.0, 300), reply(2, 5.0, 100)])
    assert np.allclose(arrays[key].numpy(), 2.0) and metrics["num-examples"] == 400


def test_the_checkpoint_holds_the_weights_and_the_ema_and_resumes_both(tiny_mnist_dir, tmp_path):
    settings = tiny(tiny_mnist_dir, **{"diffusion-ema": 0.5})
    method = Diffusion(settings)
    state = method.initial_state()
    method.finish_round(1, state)
    later = {key: value + 1 for key, value in state.items()}
    method.finish_round(2, later)
    key = next(iter(state))
    assert torch.allclose(method.ema[key], state[key] + 0.5)
    run_dir = RunDirectory(tmp_path)
    run_dir.save_checkpoint(Diffusion.checkpoint_file, method.checkpoint(later), {"round": 2})
    resumed = Diffusion(settings)
    restored = resumed.restore(run_dir.load_checkpoint(Diffusion.checkpoint_file))
    assert restored.keys() == state.keys() and torch.equal(restored[key], later[key])
    assert torch.equal(resumed.ema[key], method.ema[key])
    assert resumed.sampling_weights(restored) is resumed.ema


def test_samples_are_class_ordered_in_the_datasets_space_and_seeded(tiny_mnist_dir):
    settings = tiny(tiny_mnist_dir, **{"diffusion-guidance": 3.0})
    method = Diffusion(settings)
    state = method.initial_state()
    lines = []
    first = method.labelled_set(state, 4, torch.device("cpu"), lines.append)
    assert first.images.shape == (20, 1, 28, 28) and first.labels.tolist() == [c for c in range(10) for _ in range(2)]
    spec = settings.dataset_spec
    low, high = (0 - spec.mean[0]) / spec.std[0], (1 - spec.mean[0]) / spec.std[0]
    assert first.images.min() >= low - 1e-5 and first.images.max() <= high + 1e-5
    assert torch.equal(first.images, method.labelled_set(state, 4, torch.device("cpu")).images)
    assert not torch.equal(first.images, method.labelled_set(state, 5, torch.device("cpu")).images)
    assert any("sampled 20/20 images" in line for line in lines)


def test_pixels_survive_the_round_trip_to_the_models_space(tiny_data):
    spec = Settings.from_mapping({}).dataset_spec
    images = tiny_data.images[:5]
    assert torch.allclose(from_model_space(to_model_space(images, spec), spec), images, atol=1e-5)


def test_learning_rate_decays_from_the_first_to_the_last_round(tiny_mnist_dir):
    params = tiny(tiny_mnist_dir).group(Diffusion.settings_group)
    assert round_learning_rate(params, 1, 10) == pytest.approx(params.diffusion_lr)
    assert round_learning_rate(params, 10, 10) == pytest.approx(params.diffusion_lr_final)
    assert params.diffusion_lr_final < round_learning_rate(params, 5, 10) < params.diffusion_lr


def test_batches_cover_the_data_or_follow_poisson_sampling():
    drawer = BatchDrawer(10, 4, poisson=False, generator=torch.Generator().manual_seed(0))
    batches = [drawer.next() for _ in range(5)]
    assert all(len(batch) == 4 for batch in batches)
    assert sorted(torch.cat(batches[:2] + [batches[2][:2]]).tolist()) == list(range(10))  # one epoch, no repeats
    poisson = BatchDrawer(10_000, 100, poisson=True, generator=torch.Generator().manual_seed(0))
    sizes = [len(poisson.next()) for _ in range(50)]
    assert poisson.sample_rate == 0.01 and 80 < sum(sizes) / 50 < 120 and len(set(sizes)) > 1


def test_dp_sgd_reports_the_epsilon_of_opacus_accountant_for_its_steps(tiny_mnist_dir, tiny_data):
    """The reported ε after two rounds is Opacus' RDP accountant for the same noise
    multiplier, sampling rate and number of steps; the accountant's state travels in the
    client's state between rounds."""
    from opacus.accountants import RDPAccountant

    settings = tiny(tiny_mnist_dir, **{"dp-noise-multiplier": 1.1, "dp-clip": 0.5})
    method = Diffusion(settings)
    first = method.local_update(job(settings, method.initial_state(), tiny_data, 1))
    second = method.local_update(job(settings, first.state, tiny_data, 2, method_state=first.method_state))
    reference = RDPAccountant()
    for _ in range(2 * settings.diffusion_local_steps):
        reference.step(noise_multiplier=1.1, sample_rate=8 / len(tiny_data))
    assert second.metrics["dp-epsilon"] == pytest.approx(reference.get_epsilon(1e-5), rel=1e-9)
    assert first.metrics["dp-epsilon"] < second.metrics["dp-epsilon"]
    assert second.metrics["dp-noise-multiplier"] == 1.1


def test_a_target_epsilon_fixes_the_noise_that_spends_it_over_the_run(tiny_mnist_dir, tiny_data):
    settings = tiny(tiny_mnist_dir, **{"dp-target-epsilon": 5.0, "num-server-rounds": 3})
    method = Diffusion(settings)
    rate = 8 / len(tiny_data)
    sigma = noise_multiplier_for(5.0, 1e-5, rate, 3 * settings.diffusion_local_steps)
    state, kept = method.initial_state(), {}
    for server_round in (1, 2, 3):
        result = method.local_update(job(settings, state, tiny_data, server_round, method_state=kept))
        state, kept = result.state, result.method_state
        assert result.metrics["dp-noise-multiplier"] == pytest.approx(sigma)
    assert 4.5 < result.metrics["dp-epsilon"] <= 5.0 + 1e-6


def test_accountant_history_round_trips_through_a_tensor():
    private = PrivateTraining(1.0, 1.0, 8, 1e-5)
    for _ in range(3):
        private.count_step(0.02)
    again = PrivateTraining(1.0, 1.0, 8, 1e-5, private.history())
    assert again.epsilon == pytest.approx(private.epsilon)


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"diffusion-channels": "8,x"}, "diffusion-channels='8,x' is not allowed"),
        ({"diffusion-channels": "6,8"}, "multiple of 4"),
        ({"diffusion-channels": "8,8,8,8"}, "halve the image 3 times"),
        ({"dp-noise-multiplier": 1.0, "dp-target-epsilon": 10.0}, "set one of them"),
        ({"diffusion-guidance": 0.5}, "a number >= 1"),
        ({"defence": "ldpo-rld"}, "defence='ldpo-rld' is not allowed with method='diffusion'"),
        ({"malicious-clients": "0"}, "malicious-behaviour='doorping' is not allowed with method='diffusion'"),
    ],
)
def test_settings_that_do_not_fit_the_generator_are_refused(tiny_mnist_dir, values, fragment):
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        tiny(tiny_mnist_dir, **values)


def run_in_process(settings: Settings, clients: int = 2, fail_from_round: int | None = None):
    """Rounds of the real ClientApp and Strategy over an in-process grid; from
    `fail_from_round` on every client answers with an error, which stops the run there."""
    from flower_helpers import InProcessGrid, error_reply
    from sfdd_flwr import client_app
    from sfdd_flwr.server_app import server_parts

    def client(message, context):
        if fail_from_round is not None and int(message.content["config"]["server-round"]) >= fail_from_round:
            return error_reply(message, "the node went away")
        return client_app.app(message, context)

    grid = InProcessGrid({101 + c: client for c in range(clients)},
                         {101 + c: {"partition-id": c, "num-partitions": clients} for c in range(clients)})
    strategy, recorder = server_parts(settings, grid, lambda text: None)
    return strategy.run(grid, recorder), recorder, grid


@pytest.mark.usefixtures("server_identity")
def test_a_resumed_generator_run_continues_exactly_where_it_stopped(tiny_mnist_dir, tmp_path):
    common = {"output-dir": str(tmp_path), "num-eval": 0, "diffusion-ema": 0.5, "num-server-rounds": 3}
    whole, _, _ = run_in_process(tiny(tiny_mnist_dir, **common, **{"run-name": "whole"}))
    with pytest.raises(RuntimeError, match="no usable client update"):
        run_in_process(tiny(tiny_mnist_dir, **common, **{"run-name": "cut"}), fail_from_round=3)
    resumed, recorder, grid = run_in_process(tiny(tiny_mnist_dir, **common, **{
        "run-name": "cut", "resume-from": str(tmp_path / "cut")}))
    assert recorder.first_round == 3 and [r["round"] for r in recorder.run_dir.read_metrics()] == [1, 2, 3]
    assert all(torch.equal(whole[key], resumed[key]) for key in whole)
    saved = torch.load(tmp_path / "cut" / "generator.pt", weights_only=True)
    assert saved["metadata"]["round"] == 3 and any(key.startswith("ema.") for key in saved)
    assert (tmp_path / "cut" / "synthetic_set_round_0003.pt").is_file()


@pytest.mark.usefixtures("server_identity")
def test_the_runs_epsilon_is_the_largest_clients_and_a_resume_never_lowers_it(tiny_mnist_dir, tmp_path):
    """Every client takes part in every round here, so a resumed client that assumes it
    took part in every earlier round reports exactly the ε an uninterrupted one would."""
    from opacus.accountants import RDPAccountant

    common = {"output-dir": str(tmp_path), "num-eval": 0, "dp-noise-multiplier": 1.0, "num-server-rounds": 3}
    with pytest.raises(RuntimeError, match="no usable client update"):
        run_in_process(tiny(tiny_mnist_dir, **common, **{"run-name": "dp"}), fail_from_round=3)
    records = RunDirectory(tmp_path / "dp").read_metrics()
    epsilons = [[c["dp_epsilon"] for c in r["clients"]] for r in records]
    assert [r["dp_epsilon"] for r in records] == [max(e) for e in epsilons]
    assert records[0]["dp_epsilon"] < records[1]["dp_epsilon"]
    _, resumed, _ = run_in_process(tiny(tiny_mnist_dir, **common, **{"run-name": "dp", "resume-from": str(tmp_path / "dp")}))
    final = resumed.run_dir.read_metrics()[-1]
    smallest = min(c["dp_epsilon"] for c in final["clients"])
    reference = RDPAccountant()
    rate = 8 / 150  # each of the 2 IID clients holds 150 of the 300 images
    for _ in range(3 * 2):
        reference.step(noise_multiplier=1.0, sample_rate=rate)
    assert smallest == pytest.approx(reference.get_epsilon(1e-5), rel=1e-9)
    assert resumed.finish()["last_round"]["dp_epsilon"] == final["dp_epsilon"] > records[1]["dp_epsilon"]


def test_importing_opacus_through_the_app_leaves_logging_alone():
    """Opacus gives the root logger a handler when imported (every Flower line would print
    twice); the app's import removes it. Reloading Opacus' module shows it adds one."""
    import subprocess
    import sys

    code = ("import importlib, logging; import sfdd_flwr.opacus_parts; before = len(logging.getLogger().handlers); "
            "import opacus.utils.module_utils as m; importlib.reload(m); "
            "print(before, len(logging.getLogger().handlers))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["0", "1"]
