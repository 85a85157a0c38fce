"""Fault campaign (issue 11 §1): break one thing at a time under running AutoLabelJobs and check that the
system converges. Starts its own local control plane, MinIO, local node runner and operator (the real one,
as a subprocess, with the fake worker ``tests/fakeworker.py`` in the pods), runs the scenarios, prints a
table and saves ``.bench/results-faults.json``.

    .venv/bin/python benchmarks/faults.py --scenario operator-kills --runs 50 --seed 1
    .venv/bin/python benchmarks/faults.py --scenario all --seed 1          # every scenario, default runs
    .venv/bin/python benchmarks/faults.py --list

Scenarios (runs by default) and what each checks: see ``benchmarks/faults_lib.py`` and
``docs/reliability.md``. The short versions run in ``make test`` (``tests/integration/test_faults_*.py``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tools"), str(REPO / "tests" / "integration"), str(REPO / "benchmarks")]

import faults_lib  # noqa: E402


def _fmt(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"med {statistics.median(values):.1f} max {max(values):.1f}"


def table(outcomes: list[faults_lib.Outcome]) -> str:
    rows = [["scenario", "runs", "failures", "counts", "timings (s)", "checked"]]
    for o in outcomes:
        counts = ", ".join(f"{k}: {v}" for k, v in o.counts.items()) or "-"
        timings = "; ".join(f"{k.removesuffix(' s')} {_fmt(v)}" for k, v in o.timings.items()) or "-"
        rows.append([o.scenario, str(o.runs), str(len(o.failures)), counts, timings, o.checked])
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = []
    for n, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(r[:5], widths, strict=True)) + "  " + r[5])
        if n == 0:
            lines.append("  ".join("-" * w for w in widths) + "  " + "-" * 7)
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default="all", help="a scenario name, a comma-separated list, or all")
    parser.add_argument("--runs", type=int, help="runs (kills, jobs, restarts) per scenario; default per scenario")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--list", action="store_true", help="list the scenarios and their default runs")
    args = parser.parse_args()
    if args.list:
        for name, runs in faults_lib.DEFAULT_RUNS.items():
            print(f"{name:22s} {runs:3d}  {faults_lib.DESCRIPTIONS[name]}")
        return 0
    names = list(faults_lib.SCENARIOS) if args.scenario == "all" else args.scenario.split(",")
    unknown = [n for n in names if n not in faults_lib.SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {unknown}; known: {', '.join(faults_lib.SCENARIOS)}")

    from devenv.s3 import MinioServer
    from operator_fixtures import OperatorProcess, control_plane, node_runner

    outcomes: list[faults_lib.Outcome] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        with control_plane(tmp / "cluster") as cluster, MinioServer(tmp / "s3") as s3:
            s3.make_bucket(faults_lib.BUCKET)
            (tmp / "node").mkdir()
            runner = node_runner(cluster, tmp / "node")
            runner.start()
            (tmp / "op").mkdir()
            operator = OperatorProcess(cluster, s3, tmp / "op")
            try:
                operator.start()
                env = faults_lib.Env(cluster, s3, operator, runner)
                for name in names:
                    runs = args.runs or faults_lib.DEFAULT_RUNS[name]
                    t0 = time.monotonic()
                    print(f"--- {name}: {runs} runs, seed {args.seed}", flush=True)
                    outcome = faults_lib.SCENARIOS[name](env, runs, args.seed)
                    outcome.time("wall s", time.monotonic() - t0)
                    for failure in outcome.failures:
                        print(f"    FAILURE: {failure}", flush=True)
                    outcomes.append(outcome)
                    if not operator.running():
                        operator.start()
                    if not runner.running():
                        runner.start()
            finally:
                operator.stop()
                runner.stop()
    print(f"\nFault campaign, seed {args.seed} ({time.monotonic() - started:.0f} s in all)")
    print(table(outcomes))
    out = REPO / ".bench"
    out.mkdir(exist_ok=True)
    result: dict[str, Any] = {"seed": args.seed, "argv": sys.argv[1:], "outcomes": [o.to_json() for o in outcomes]}
    path = out / f"results-faults-{'-'.join(names) if len(names) < 4 else 'all'}-seed{args.seed}.json"
    path.write_text(json.dumps(result, indent=1))
    print(f"saved {path.relative_to(REPO)}")
    return 1 if any(o.failures for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
