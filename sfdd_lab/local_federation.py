"""A federation of simulated clients in one machine, without Flower: each client runs the
ClientApp's behaviour and method code with its seeds and keeps its state across rounds,
one after the other or each in its own process; the server side combines their states
with the method's rule (FedAvg, or the aggregator it is given). Used by
`sfdd_lab.full_protocol` on machines without flwr/Ray. No Flower import.
"""

from __future__ import annotations

import multiprocessing
import queue
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from sfdd_flwr.aggregators.bounds import BoundsSettings, bound_replies
from sfdd_flwr.behaviours.registry import behaviour_for_node, load_behaviour, private_seed
from sfdd_flwr.data.node_data import load_node_split, request_for
from sfdd_flwr.methods import LocalJob, State, SynthesisMethod, load_method
from sfdd_flwr.methods.base import reduce_metrics
from sfdd_flwr.settings import ConfigError, Settings


class SimulatedClient:
    """One simulated node: its partition, its behaviour (as the ClientApp picks it from
    `malicious-clients` / `malicious-fraction`) and what it keeps across rounds (the
    method's state such as momentum, the behaviour's such as a Doorping trigger)."""

    def __init__(self, settings: Settings, client: int, device: torch.device, run_dir: Path | None) -> None:
        node_config = {"partition-id": client, "num-partitions": settings.min_clients}
        self.settings, self.client, self.device, self.run_dir = settings, client, device, run_dir
        self.data = load_node_split(request_for(settings.task, node_config), train=True).to(device)
        self.behaviour_name = behaviour_for_node(settings, node_config)
        try:
            self.behaviour_class = load_behaviour(self.behaviour_name)
            self.method_class = load_method(settings.method)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        self.method_state: dict[str, torch.Tensor] = {}
        self.behaviour_state: dict[str, torch.Tensor] = {}

    def local_update(self, server_round: int, state: State) -> dict[str, Any]:
        job = LocalJob(
            settings=self.settings,
            server_round=server_round,
            client_id=self.client,
            state=state,
            data=self.data,
            device=self.device,
            method_state=self.method_state,
            behaviour_state=self.behaviour_state,
            private_seed=private_seed(self.settings, {}, self.client),
            run_dir=self.run_dir,
        )
        started = time.monotonic()
        # Fresh objects per round, as in the ClientApp.
        result = self.behaviour_class().local_update(job, self.method_class(self.settings))
        self.method_state = result.method_state
        return {
            "state": {key: value.cpu() for key, value in result.state.items()},
            "weight": float(len(self.data)),
            "seconds": time.monotonic() - started,
            "metrics": result.metrics,
        }


def client_worker(settings: Settings, client: int, device: str, run_dir: Path | None, inbox, outbox) -> None:
    """A client in its own process (`--parallel-clients`): (round, state) in, its reply out
    (states travel as numpy arrays).
    It exits when told to (None) or when the server process is gone."""
    try:
        simulated = SimulatedClient(settings, client, torch.device(device), run_dir)
        outbox.put(("ready", client, simulated.behaviour_name))
        parent = multiprocessing.parent_process()
        while parent is None or parent.is_alive():
            try:
                request = inbox.get(timeout=5)
            except queue.Empty:
                continue
            if request is None:
                return
            server_round, arrays = request
            reply = simulated.local_update(server_round, {key: torch.from_numpy(a) for key, a in arrays.items()})
            reply["state"] = {key: value.numpy() for key, value in reply["state"].items()}
            outbox.put(("reply", client, reply))
        # The server is gone: a reply still buffered for it would block this process's exit
        # (the queue's feeder thread waits for a reader that will never come).
        outbox.cancel_join_thread()
    except ConfigError as error:
        outbox.put(("config-error", client, str(error)))
    except Exception as error:  # the parent must hear of it, not wait forever
        outbox.put(("error", client, f"{type(error).__name__}: {error}\n{traceback.format_exc()}"))


class ClientPool:
    """All clients of the run, stepped one after the other in this process or, with
    `parallel=True`, each in its own process (one GPU is shared: the small kernels of one
    client leave it mostly idle). Each client computes exactly what it would alone."""

    def __init__(self, settings: Settings, device: torch.device, run_dir: Path | None, parallel: bool) -> None:
        self.parallel = parallel
        self.closed = False
        count = settings.min_clients
        if not parallel:
            self.clients = [SimulatedClient(settings, c, device, run_dir) for c in range(count)]
            self.behaviours = [c.behaviour_name for c in self.clients]
            return
        context = torch.multiprocessing.get_context("spawn")
        self.outbox = context.Queue()
        self.inboxes = [context.Queue() for _ in range(count)]
        self.processes = [
            context.Process(target=client_worker, args=(settings, c, str(device), run_dir, self.inboxes[c], self.outbox), daemon=True)
            for c in range(count)
        ]
        for process in self.processes:
            process.start()
        self.behaviours = [name for _, name in sorted(self._collect("ready").items())]

    def _collect(self, kind: str) -> dict[int, Any]:
        """One `kind` message from every client; a client that fails or dies stops the run."""
        replies: dict[int, Any] = {}
        while len(replies) < len(self.inboxes):
            try:
                got, client, payload = self.outbox.get(timeout=5)
            except queue.Empty:
                dead = [c for c, p in enumerate(self.processes) if c not in replies and not p.is_alive()]
                if dead:
                    self.close()
                    raise RuntimeError(f"client process {dead[0]} exited (code {self.processes[dead[0]].exitcode}) "
                                       f"before its {kind} message") from None
                continue
            if got == "config-error":
                self.close()
                raise ConfigError(payload)
            if got == "error":
                self.close()
                raise RuntimeError(f"client {client} failed: {payload}")
            replies[client] = payload
        return replies

    def round(self, server_round: int, state: State) -> list[dict[str, Any]]:
        if not self.parallel:
            return [client.local_update(server_round, state) for client in self.clients]
        request = (server_round, {key: value.cpu().numpy() for key, value in state.items()})
        for inbox in self.inboxes:
            inbox.put(request)
        replies = [reply for _, reply in sorted(self._collect("reply").items())]
        for reply in replies:
            reply["state"] = {key: torch.from_numpy(array) for key, array in reply["state"].items()}
        return replies

    def close(self) -> None:
        """Stop the client processes (idempotent)."""
        if not self.parallel or self.closed:
            return
        self.closed = True
        for inbox, process in zip(self.inboxes, self.processes):
            if process.is_alive():
                inbox.put(None)
        for process in self.processes:
            process.join(timeout=30)
            if process.is_alive():
                process.terminate()
        for channel in [*self.inboxes, self.outbox]:
            channel.close()
            channel.cancel_join_thread()  # the clients are gone: nothing left to deliver


def federated_round(
    pool: ClientPool,
    server_round: int,
    state: State,
    method: SynthesisMethod,
    reductions: dict[str, str],
    left_out: frozenset[int] = frozenset(),
) -> tuple[State, dict[str, Any]]:
    """One round: every client's update (its behaviour), the reply bounds, then the
    method's `combine`, as the Strategy does. `left_out` clients run but their replies
    are not combined (a control). The clients a selecting rule (Krum) kept, or all the
    combined ones when some are left out, are recorded as `aggregator_kept`; the
    bounds' interventions as `updates_clipped`, `weights_capped` and `failures`."""
    started = time.monotonic()
    replies = pool.round(server_round, state)
    clients = [c for c in range(len(replies)) if c not in left_out]
    bounded = bound_replies(
        method.settings.group(BoundsSettings), state, [replies[c]["state"] for c in clients],
        [replies[c]["weight"] for c in clients], [f"client {c}" for c in clients],
    )
    combined_clients = [clients[i] for i in bounded.kept]
    combined = method.combine(server_round, bounded.states, bounded.weights)
    method.finish_round(server_round, combined.state)
    seconds = [reply["seconds"] for reply in replies]
    metrics: dict[str, Any] = {
        **reduce_metrics(reductions, [replies[c]["metrics"] for c in combined_clients], bounded.weights),
        "local_update_seconds_sum": round(sum(seconds), 3),
        "local_update_seconds_max": round(max(seconds), 3),
        "round_seconds": round(time.monotonic() - started, 3),
    }
    for client, reply in enumerate(replies):
        for key, value in reply["metrics"].items():
            metrics[f"client{client}_{key}"] = value
    metrics |= {key: value for key, value in bounded.named(clients).items() if value}
    if bounded.notes:
        metrics["failures"] = [note for note in bounded.notes if note.endswith(": rejected")]
    if combined.kept is not None:
        metrics["aggregator_kept"] = [combined_clients[i] for i in combined.kept]
    elif left_out:
        metrics["aggregator_kept"] = combined_clients
    return combined.state, metrics
