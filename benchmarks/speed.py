"""Where the time of an SFDD round goes: local updates vs Flower/Ray overhead.

    python benchmarks/speed.py --data-dir /path/to/datasets [--rounds 10] [--clients 5]

Runs a real `flwr run` simulation (private SuperLink, quickstart preset, no evaluation)
once per client-resources setting and prints a Markdown table. With num-cpus equal to
the machine's cores, clients run one after another, so a round's time is the sum of its
clients' local updates plus the overhead (messaging, serialisation, Ray scheduling,
server aggregation and checkpointing); the overhead share is 1 - sum(local) / round.
Round 1 (process start-up, data loading) is reported separately.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
from pathlib import Path

from sfdd_lab.launch import LocalSuperLink


def measure(data_dir: str, rounds: int, clients: int, num_cpus: float, workdir: Path, extra: str) -> dict:
    out = workdir / "out"
    name = f"speed-cpus{num_cpus:g}"
    run_config = (
        f"preset='quickstart' data-dir='{data_dir}' output-dir='{out}' run-name='{name}' "
        f"num-server-rounds={rounds} min-clients={clients} num-eval=0 {extra}"
    )
    with LocalSuperLink(workdir / name) as link:
        result = link.run(run_config, num_supernodes=clients, num_cpus=num_cpus)
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
        "local_update_seconds_per_client": local_sum / clients,
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
    parser.add_argument("--clients", type=int, default=5)
    parser.add_argument("--num-cpus", type=float, nargs="+", default=[float(os.cpu_count() or 1)],
                        help="client-resources-num-cpus values to compare")
    parser.add_argument("--run-config", default="", help="extra settings, e.g. \"batch-real=256\"")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for num_cpus in args.num_cpus:
            rows.append(measure(args.data_dir, args.rounds, args.clients, num_cpus, Path(tmp), args.run_config))
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}; {args.clients} clients, rounds 2..{args.rounds}")
    print("| client-resources-num-cpus | s per client local update | s per round | overhead share | round 1 (start-up) s |")
    print("| --- | --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row['num_cpus']:g} | {row['local_update_seconds_per_client']:.2f} | {row['round_seconds']:.2f} "
              f"| {100 * row['overhead_share']:.1f} % | {row['first_round_seconds']:.1f} |")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
