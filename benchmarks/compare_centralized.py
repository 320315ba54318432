"""SFDD (5 clients, real `flwr run`) vs the centralized DC baseline on identical settings.

    python benchmarks/compare_centralized.py --data-dir /path/to/datasets [--seeds 0 1 2]

Both use the `compare` preset (MNIST, IPC 1, batch-real 64, 30 rounds/iterations, DC
MNIST evaluation: 1000 epochs with augmentation, 10 models) and the same seeds, so the
evaluation networks are initialised identically. Prints a Markdown table.
`--central-networks 5` adds the centralized baseline with 5 networks per iteration (what
an SFDD round with 5 clients samples, without the data split).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from sfdd_lab.federations import start_afresh
from sfdd_lab.launch import LocalSuperLink

ROOT = Path(__file__).resolve().parent.parent


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def continuation(run_dir: Path) -> str | None:
    """None if the run finished; otherwise the settings that start or resume it.

    A run cut off by a crash or timeout resumes from its last saved synthetic set
    (an interrupted final evaluation is redone), so rerunning the benchmark with the
    same --output-dir loses nothing.
    """
    if (run_dir / "summary.json").is_file():
        return None
    if (run_dir / "synthetic_set.pt").is_file():
        return f" resume-from='{run_dir}'"
    start_afresh(run_dir)
    return ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--clients", type=int, default=5)
    parser.add_argument("--run-config", default="", help="extra settings for both runs")
    parser.add_argument(
        "--output-dir", default=None,
        help="keep the runs here (default: temporary); finished runs found here are reused, cut-off runs resumed",
    )
    parser.add_argument(
        "--central-networks", type=int, default=1,
        help="also run the centralized baseline with this many networks per iteration "
             "(an SFDD round's 5 fresh networks without the data split); 1 = only plain DC",
    )
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.output_dir or tmp).resolve()
        for seed in args.seeds:
            common = f"preset='compare' data-dir='{args.data_dir}' output-dir='{out}' seed={seed} {args.run_config}"
            central_dir, sfdd_dir = out / f"centralized-seed{seed}", out / f"sfdd-seed{seed}"
            replicas_dir = out / f"centralized-k{args.central_networks}-seed{seed}"
            for run_dir, setting in [(central_dir, "")] + (
                [(replicas_dir, f" central-networks={args.central_networks}")] if args.central_networks > 1 else []
            ):
                extra = continuation(run_dir)
                if extra is not None:
                    subprocess.run(
                        [sys.executable, "-m", "sfdd_lab.centralized", "--run-config",
                         f"{common} run-name='{run_dir.name}'{setting}{extra}"],
                        cwd=ROOT, check=True,
                    )
            extra = continuation(sfdd_dir)
            if extra is not None:
                with LocalSuperLink(out / f"superlink-seed{seed}") as link:
                    result = link.run(f"{common} run-name='sfdd-seed{seed}' min-clients={args.clients}{extra}",
                                      num_supernodes=args.clients, timeout_seconds=12 * 3600)
                if result.returncode != 0:
                    raise SystemExit(result.stdout[-5000:] + result.stderr[-5000:])
            central, sfdd = summary(central_dir), summary(sfdd_dir)
            replicas = summary(replicas_dir) if args.central_networks > 1 else None
            rows.append((seed, central, sfdd, replicas))
            print(json.dumps({"seed": seed, "centralized": central, "sfdd": sfdd, "centralized_replicas": replicas}), flush=True)

    k = args.central_networks
    print("| seed | centralized accuracy % | SFDD (5 clients) accuracy % | SFDD - centralized | rounds + evaluation s (central / SFDD) |"
          + (f" centralized, {k} networks per iteration % | SFDD - that |" if k > 1 else ""))
    print("| --- | --- | --- | --- | --- |" + (" --- | --- |" if k > 1 else ""))
    for seed, central, sfdd, replicas in rows:
        c, f = central["final_accuracy_mean"], sfdd["final_accuracy_mean"]
        line = (f"| {seed} | {100 * c:.2f} ± {100 * central['final_accuracy_std']:.2f} | "
                f"{100 * f:.2f} ± {100 * sfdd['final_accuracy_std']:.2f} | {100 * (f - c):+.2f} | "
                f"{central['seconds']:.0f} / {sfdd['seconds']:.0f} |")
        if replicas is not None:
            r = replicas["final_accuracy_mean"]
            line += f" {100 * r:.2f} ± {100 * replicas['final_accuracy_std']:.2f} | {100 * (f - r):+.2f} |"
        print(line)
    if len(rows) > 1:
        gap = statistics.mean(r[2]["final_accuracy_mean"] - r[1]["final_accuracy_mean"] for r in rows)
        print(f"\nmean SFDD - centralized over {len(rows)} seeds: {100 * gap:+.2f} points")
        if k > 1:
            gap = statistics.mean(r[2]["final_accuracy_mean"] - r[3]["final_accuracy_mean"] for r in rows)
            print(f"mean SFDD - centralized with {k} networks per iteration: {100 * gap:+.2f} points")

if __name__ == "__main__":
    main()
