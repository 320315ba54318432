"""Seconds per local gradient-matching update: DC's per-class loop against the vectorised one.

    python benchmarks/matching_speed.py --data-dir /path/to/datasets [--repeats 3] [--write-results]

Both computations run on the same client data (MNIST, one IID fifth
of the training set: a quickstart client), the same network seed and the same real-batch
generator, at IPC 1 / batch-real 64, IPC 10 / batch-real 256 and IPC 50 / batch-real 256
with DC's loops for each IPC. Each (setting, computation) is timed `--repeats` times after
one warm-up update, each in a fresh process; the table gives the median. Peak memory is
CUDA's peak allocation on a GPU; on the CPU it is the process's peak resident set minus
that of a process that only loaded the same data. Without `--data-dir` the
client data is random noise of MNIST's shape (time only: the numbers do not depend on
the pixels). `--write-results` puts the table into benchmarks/RESULTS.md between its
markers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from sfdd_flwr.data.datasets import DATASETS, ClassPools, LabelledImages, PartitionRequest, load_partition
from sfdd_flwr.methods.gradient_matching.settings import GradientMatchingSettings
from sfdd_flwr.methods.gradient_matching.update import local_distill_update
from sfdd_flwr.methods.image_set import initial_synthetic_images
from sfdd_flwr.models.convnet import NetworkSpec
from sfdd_flwr.seeding import make_generator

SETTINGS = ((1, 64), (10, 256), (50, 256))
RESULTS = Path(__file__).with_name("RESULTS.md")
START, END = "<!-- matching-speed:start -->", "<!-- matching-speed:end -->"


def client_data(data_dir: str | None) -> tuple[LabelledImages, str]:
    if data_dir:
        return load_partition(PartitionRequest("mnist", data_dir, 0, 5)), "MNIST, client 0 of 5 (IID)"
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(12000) % 10
    return LabelledImages(torch.randn(12000, 1, 28, 28, generator=generator), labels), "noise of MNIST's shape"


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measured_in_a_fresh_process(args: argparse.Namespace, one: str) -> dict:
    """One measurement in its own process, so that its peak memory is its own."""
    command = [sys.executable, __file__, "--one", one, "--repeats", str(args.repeats), "--device", args.device]
    if args.data_dir:
        command += ["--data-dir", args.data_dir]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def time_update(pools, ipc, batch_real, vectorised, repeats, device) -> dict:
    spec = NetworkSpec(channels=1, num_classes=10, image_size=DATASETS["mnist"].image_size)
    params = GradientMatchingSettings(batch_real=batch_real, vectorised_matching=vectorised)
    images = initial_synthetic_images(spec, ipc, make_generator(0, "init"))

    def once(seed: int) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        local_distill_update(
            images, pools, spec, params, network_seed=seed, generator=make_generator(0, "real", seed), device=device
        )
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - started

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    once(0)
    seconds = [once(1 + repeat) for repeat in range(repeats)]
    return {
        "ipc": ipc,
        "batch_real": batch_real,
        "computation": "vectorised" if vectorised else "per-class loop",
        "seconds": statistics.median(seconds),
        "all_seconds": seconds,
        "peak_memory_mib": peak_memory_mib(device),
    }


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def table(rows: list[dict], header: str) -> str:
    lines = [
        header,
        "",
        "| IPC | batch-real | per-class loop s | vectorised s | speed-up | peak memory loop / vectorised (MiB) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for ipc, batch_real in sorted({(row["ipc"], row["batch_real"]) for row in rows}):
        loop, vectorised = (
            next(r for r in rows if (r["ipc"], r["batch_real"], r["computation"]) == (ipc, batch_real, name))
            for name in ("per-class loop", "vectorised")
        )
        lines.append(
            f"| {ipc} | {batch_real} | {loop['seconds']:.2f} | {vectorised['seconds']:.2f} "
            f"| {loop['seconds'] / vectorised['seconds']:.2f}x "
            f"| {loop['peak_memory_mib']:.0f} / {vectorised['peak_memory_mib']:.0f} |"
        )
    return "\n".join(lines)


def write_results(text: str) -> None:
    content = RESULTS.read_text()
    if START not in content or END not in content:
        raise SystemExit(f"{RESULTS} has no {START} ... {END} markers")
    head, rest = content.split(START, 1)
    _, tail = rest.split(END, 1)
    RESULTS.write_text(f"{head}{START}\n{text}\n{END}{tail}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", help="datasets folder holding MNIST (else noise of MNIST's shape)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--settings", default=",".join(f"{i}/{b}" for i, b in SETTINGS),
                        help="IPC/batch-real pairs, comma-separated")
    parser.add_argument("--write-results", action="store_true", help="put the table into benchmarks/RESULTS.md")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.one is not None:
        data, _ = client_data(args.data_dir)
        pools = ClassPools(data.to(device), 10)
        if args.one == "data":
            print(json.dumps({"peak_memory_mib": peak_memory_mib(device)}))
            return
        ipc, batch_real, vectorised = args.one.split("/")
        print(json.dumps(time_update(pools, int(ipc), int(batch_real), vectorised == "vectorised", args.repeats,
                                     device)))
        return
    _, described = client_data(args.data_dir)
    baseline = 0.0 if device.type == "cuda" else measured_in_a_fresh_process(args, "data")["peak_memory_mib"]
    rows = []
    for pair in args.settings.split(","):
        ipc, batch_real = (int(part) for part in pair.split("/"))
        for computation in ("loop", "vectorised"):
            row = measured_in_a_fresh_process(args, f"{ipc}/{batch_real}/{computation}")
            row["peak_memory_mib"] -= baseline
            rows.append(row)
            print(f"IPC {ipc}, batch-real {batch_real}, {row['computation']}: {row['seconds']:.2f} s "
                  f"per local update ({', '.join(f'{s:.2f}' for s in row['all_seconds'])})", flush=True)
    header = (f"Machine: {machine(device)}; torch {torch.__version__}; {described}; "
              f"median of {args.repeats} updates after one warm-up.")
    markdown = table(rows, header)
    print(markdown)
    print(json.dumps(rows))
    if args.write_results:
        write_results(markdown)


if __name__ == "__main__":
    main()
