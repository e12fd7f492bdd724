"""Measure how far the gated latency and energy ratios move between runs of unchanged code.

A gate's ``max_ratio_growth`` must sit above the run-to-run noise of the machine that runs
it, or the gate fails without a code change. This benchmark runs a scenario ``--runs`` times,
records each run as a baseline, and checks every run against every other run's baseline
under ``--policy``. For each noisy gate it reports the largest growth seen, where a growth
below 1 counts as its inverse, and the row where it was seen. Beside them stand the gate's
limit and the limit's margin over that noise: limit / largest growth, where a margin below 1
means the gate would have failed.

Runs start one after another in fresh processes, as CI starts them. Changes that the gate's
floor passes (``min_change_j``, ``min_change_ms``) are left out, because they cannot fail it.

Example: python benchmarks/bench_gate_noise.py --runs 5 --json reports/bench_gate_noise.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import subprocess
import sys
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Run a scenario several times and report the gated ratios' noise.")
    parser.add_argument("--scenario", type=Path, default=PROJECT_DIR / "scenarios" / "ci.yaml",
                        help="scenario to run (default scenarios/ci.yaml)")
    parser.add_argument("--policy", type=Path, default=PROJECT_DIR / "reports" / "baselines" / "ci-policy.yaml",
                        help="gate policy whose noisy gates are measured (default the project's CI policy)")
    parser.add_argument("--runs", type=int, default=5, help="runs of the scenario (default 5, at least 2)")
    parser.add_argument("--out", type=Path, default=PROJECT_DIR / "reports" / "gate-noise",
                        help="folder for the runs, replaced on start (default reports/gate-noise)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.runs < 2:
        parser.error("--runs must be at least 2: noise needs two runs to compare")
    return args


def run_scenario(scenario: Path, out_dir: Path) -> None:
    """Run the scenario in a fresh process, as `vqbench run` does from a shell."""
    command = [sys.executable, "-c", "from vqbench.cli import app; app()", "run", str(scenario), "--out", str(out_dir)]
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        sys.exit(f"vqbench run {scenario} failed with exit code {completed.returncode}:\n{completed.stderr[-2000:]}")


def own_figures(run_dir: Path) -> dict[tuple[str, str], float]:
    """Return each (row label, noisy metric)'s own figure in the run: the p50 latency or mean energy."""
    from vqbench.check.policy import NOISY_METRICS
    from vqbench.check.rows import _key_label, _row_key
    from vqbench.report.loader import load_results

    figures = {}
    for row in load_results(run_dir).rows:
        for metric, (_, _, column) in NOISY_METRICS.items():
            value = getattr(row, column)
            if value is not None:
                figures[(_key_label(_row_key(row)), metric)] = float(value)
    return figures


def largest_growths(run_dirs: list[Path], baselines: list[Path], policy: Path) -> dict[str, dict]:
    """Check every run against every other run's baseline; keep each gate's largest growth."""
    from vqbench.check import run_check

    worst: dict[str, dict] = {}
    for (run_index, run_dir), (base_index, baseline) in itertools.product(enumerate(run_dirs), enumerate(baselines)):
        if run_index == base_index:
            continue
        report = run_check(run_dir, baseline, policy)
        gates = {gate.metric: gate for gate in report.policy.noisy}
        base_figures = own_figures(run_dirs[base_index])
        for result in report.results:
            if result.kind != "ratio" or result.change is None or result.metric not in gates:
                continue
            gate = gates[result.metric]
            base_own = base_figures.get((result.row, result.metric), float("inf"))
            if base_own * abs(result.change - 1) < gate.min_change:
                continue
            growth = max(result.change, 1 / result.change) if result.change > 0 else float("inf")
            current = worst.get(result.metric)
            if current is None or growth > current["largest_growth"]:
                worst[result.metric] = {
                    "largest_growth": growth, "row": result.row, "run": run_index + 1, "baseline_run": base_index + 1,
                    "max_ratio_growth": gate.max_ratio_growth, "margin": gate.max_ratio_growth / growth,
                }
    return worst


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from vqbench.check import write_baseline

    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    run_dirs, baselines = [], []
    for index in range(1, args.runs + 1):
        run_dir = args.out / f"run-{index}"
        print(f"run {index} of {args.runs}: {args.scenario}", flush=True)
        run_scenario(args.scenario, run_dir)
        run_dirs.append(run_dir)
        baselines.append(write_baseline(run_dir, args.out / f"baseline-{index}.json"))

    worst = largest_growths(run_dirs, baselines, args.policy)
    print(f"\n{'gate':<30} {'largest growth':>14} {'limit':>6} {'margin':>7}  where (run vs baseline run)")
    for metric, entry in sorted(worst.items()):
        print(f"{metric:<30} {entry['largest_growth']:>13.2f}x {entry['max_ratio_growth']:>5.2f}x "
              f"{entry['margin']:>6.2f}x  {entry['row']} ({entry['run']} vs {entry['baseline_run']})")
    if args.json is not None:
        args.json.write_text(json.dumps({"scenario": str(args.scenario), "runs": args.runs, "gates": worst}, indent=2),
                             encoding="utf-8")


if __name__ == "__main__":
    main()
