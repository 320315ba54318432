"""Where the time of an SFDD round goes: local updates vs Flower/Ray overhead.

    python benchmarks/speed.py --data-dir /path/to/datasets [--rounds 10] [--clients 5]
    python benchmarks/speed.py --data-dir DATA --rounds 5 --clients 1000 --sampled 10 \
        --run-config "partitioning='dirichlet' dirichlet-beta=0.1 min-partition-size=0"

Runs a real `flwr run` simulation (private SuperLink, quickstart preset, no evaluation)
once per client-resources setting and prints a Markdown table. With num-cpus equal to
the machine's cores, clients run one after another, so a round's time is the sum of its
clients' local updates plus the overhead (messaging, serialisation, Ray scheduling,
server aggregation and checkpointing); the overhead share is 1 - sum(local) / round.
Round 1 (process start-up, data loading) is reported separately. `--sampled N` samples N
of the `--clients` simulated clients per round (fraction-train = N / clients). Peak memory
is the largest sum of resident sets over the SuperLink's process tree (server, simulation,
Ray and its workers), sampled twice a second.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import threading
from pathlib import Path

from sfdd_lab.launch import LocalSuperLink, descendants


def resident_mib(pids: list[int]) -> float:
    total_kib = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kib += int(line.split()[1])
        except OSError:
            continue
    return total_kib / 1024


class PeakMemory(threading.Thread):
    """The largest resident-set sum over a process and its descendants, while running."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak_mib, self.stopped = pid, 0.0, threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(0.5):
            self.peak_mib = max(self.peak_mib, resident_mib([self.pid, *descendants(self.pid)]))


def measure(data_dir: str, rounds: int, clients: int, num_cpus: float, workdir: Path, extra: str,
            sampled: int | None = None) -> dict:
    out = workdir / "out"
    sampled = sampled or clients
    name = f"speed-cpus{num_cpus:g}-clients{clients}"
    run_config = (
        f"preset='quickstart' data-dir='{data_dir}' output-dir='{out}' run-name='{name}' "
        f"num-server-rounds={rounds} min-clients={sampled} fraction-train={sampled / clients!r} num-eval=0 {extra}"
    )
    with LocalSuperLink(workdir / name) as link:
        memory = PeakMemory(link.process.pid)
        memory.start()
        result = link.run(run_config, num_supernodes=clients, num_cpus=num_cpus)
        memory.stopped.set()
    if result.returncode != 0:
        raise SystemExit(result.stdout + result.stderr)
    records = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]
    steady = records[1:]
    round_seconds = statistics.mean(r["round_seconds"] for r in steady)
    local_sum = statistics.mean(r["local_update_seconds_sum"] for r in steady)
    return {
        "num_cpus": num_cpus,
        "rounds": rounds,
        "clients": clients,
        "sampled": sampled,
        "peak_memory_mib": memory.peak_mib,
        "local_update_seconds_per_client": local_sum / sampled,
        "round_seconds": round_seconds,
        "overhead_share": 1 - local_sum / round_seconds,
        "first_round_seconds": records[0]["round_seconds"],
    }


def cpu_model() -> str:
    """The CPU's model name (Linux), else what platform says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--clients", type=int, default=5, help="simulated clients (SuperNodes)")
    parser.add_argument("--sampled", type=int, help="clients sampled per round (default: all)")
    parser.add_argument("--num-cpus", type=float, nargs="+", default=[float(os.cpu_count() or 1)],
                        help="client-resources-num-cpus values to compare")
    parser.add_argument("--run-config", default="", help="extra settings, e.g. \"batch-real=256\"")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for num_cpus in args.num_cpus:
            rows.append(measure(args.data_dir, args.rounds, args.clients, num_cpus, Path(tmp), args.run_config,
                                args.sampled))
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}; {args.clients} clients ({rows[0]['sampled']} a round), "
          f"rounds 2..{args.rounds}; {args.run_config}")
    print("| client-resources-num-cpus | local update s per sampled client | s per round | overhead share "
          "| round 1 (start-up) s | peak memory (MiB) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row['num_cpus']:g} | {row['local_update_seconds_per_client']:.2f} | {row['round_seconds']:.2f} "
              f"| {100 * row['overhead_share']:.1f} % | {row['first_round_seconds']:.1f} "
              f"| {row['peak_memory_mib']:.0f} |")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
