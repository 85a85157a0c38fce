"""Operator benchmark: the precondition check over large manifests, and a queue of jobs on one dataset.

    .venv/bin/python benchmarks/bench_operator.py                      # both parts (about 5 min on 2 cores)
    .venv/bin/python benchmarks/bench_operator.py --part preconditions --sizes 10000,100000,1000000
    .venv/bin/python benchmarks/bench_operator.py --part queue --jobs 20 --intervals 1,5

Preconditions: a manifest of N lines (10 labels, 1% labeled, the rest unlabeled) in the S3 server (MinIO
on loopback); the operator's check (``autolabel_operator.preconditions.check``: streamed read, summary,
the seed's rules) runs in a fresh process, which reports wall time and peak RSS. The issue's claim to
check: memory in proportion to the labels, not the lines.

Queue: the real local control plane, MinIO, the local node runner and the operator (a subprocess), with the
fake worker (``tests/fakeworker.py``, 0.3 s of "work") in the pods. N AutoLabelJobs for one dataset are
created at once; the table shows the time until all succeeded, the gaps between one run's end and the
next run's start (lock release → wake-up → Job → pod start), and the operator's RSS, for each timer
interval (the wake-up on release makes the handoff independent of it).

Results go to stdout as tables and to .bench/results-operator-<part>.json. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tools"), str(REPO / "tests" / "integration")]

BUCKET = "datasets"


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [headers] + [[f"{c:.2f}" if isinstance(c, float) else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _save(part: str, data: Any) -> None:
    out = REPO / ".bench"
    out.mkdir(exist_ok=True)
    (out / f"results-operator-{part}.json").write_text(json.dumps(data, indent=1))


# ------------------------------------------------------------------------------------ preconditions


def _manifest(lines: int) -> bytes:
    labeled = max(100, lines // 100)
    out = []
    for i in range(lines):
        if i < labeled:
            ann = [{"type": "modelarts/image_classification", "name": f"class-{i % 10}"}]
            out.append(json.dumps({"source": f"img/{i:07d}.png", "annotation": ann}))
        else:
            out.append(json.dumps({"source": f"img/{i:07d}.png"}))
    return ("\n".join(out) + "\n").encode()


def child_preconditions(uri: str) -> None:
    """Runs in a fresh process: the operator's check on one manifest; prints JSON with time and RSS."""
    import asyncio

    from autolabel_operator.config import Settings
    from autolabel_operator.preconditions import Credentials, check, storage_config, storage_for

    from autolabel.api import AutoLabelJob

    settings = Settings.from_env()
    job = AutoLabelJob.model_validate(
        {
            "metadata": {"name": "bench", "namespace": "bench", "uid": "0"},
            "spec": {"task": "ImageClassification", "mode": "ActiveLearning", "dataset": {"manifest": uri}},
        }
    )
    storage = storage_for(storage_config(job, settings, Credentials(settings.access_key, settings.secret_key)))
    # ru_maxrss would include the parent's memory at fork time (Linux keeps it across exec): reset the
    # high-water mark (VmHWM) to the current RSS instead, then read it after the check.
    Path("/proc/self/clear_refs").write_text("5")
    baseline = _status_kib("VmHWM")
    start = time.perf_counter()
    failures = asyncio.run(check(job, settings, storage))
    seconds = time.perf_counter() - start
    peak = _status_kib("VmHWM")
    print(json.dumps({"seconds": seconds, "peak_mib": peak / 1024, "growth_mib": (peak - baseline) / 1024,
                      "failures": [f.reason for f in failures]}))  # fmt: skip


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def bench_preconditions(sizes: list[int]) -> list[dict[str, Any]]:
    from devenv.s3 import MinioServer

    rows = []
    with tempfile.TemporaryDirectory() as tmp, MinioServer(Path(tmp) / "s3") as s3:
        s3.make_bucket(BUCKET)
        env = {
            **os.environ,
            "AUTOLABEL_S3_ENDPOINT": s3.endpoint_url,
            "AWS_ACCESS_KEY_ID": s3.access_key,
            "AWS_SECRET_ACCESS_KEY": s3.secret_key,
        }
        for n in sizes:
            data = _manifest(n)
            s3.client().put_object(Bucket=BUCKET, Key=f"m{n}/data.manifest", Body=data)
            uri = f"s3://{BUCKET}/m{n}/data.manifest"
            out = subprocess.run(
                [sys.executable, __file__, "--child-preconditions", uri],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            result = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append({"lines": n, "mib": len(data) / 2**20, **result, "lines_per_s": n / result["seconds"]})
    print("\nPrecondition check (streamed manifest from S3, fresh process each)")
    print(
        _table(
            ["lines", "manifest MiB", "seconds", "lines/s", "peak RSS MiB", "RSS growth MiB", "failures"],
            [
                [r["lines"], r["mib"], r["seconds"], int(r["lines_per_s"]), r["peak_mib"], r["growth_mib"],
                 ",".join(r["failures"]) or "-"]
                for r in rows
            ],
        )
    )  # fmt: skip
    _save("preconditions", rows)
    return rows


# -------------------------------------------------------------------------------------------- queue


def bench_queue(jobs: int, intervals: list[float]) -> list[dict[str, Any]]:
    import psutil
    from devenv.cluster import LocalCluster
    from devenv.s3 import MinioServer
    from operator_fixtures import OperatorProcess, Process, alj, apply, dataset, get_json, job_manifest

    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        cluster = LocalCluster(tmp / "cluster")
        cluster.start()
        try:
            cluster.kubectl("apply", "-f", str(REPO / "crds"))
            cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                            "crd/autolabeljobs.autolabel.dev")  # fmt: skip
            with MinioServer(tmp / "s3") as s3:
                s3.make_bucket(BUCKET)
                env = {**os.environ, "PYTHONPATH": str(REPO / "tools")}
                argv = [sys.executable, "-m", "devenv.node", "--kubeconfig", str(cluster.kubeconfig),
                        "--node-name", "local-node", "--state-dir", str(tmp / "node")]  # fmt: skip
                (tmp / "node").mkdir()
                runner = Process(argv, env, tmp / "node.log")
                runner.start()
                try:
                    for k, interval in enumerate(intervals):
                        state = tmp / f"op{k}"
                        state.mkdir()
                        op = OperatorProcess(cluster, s3, state)
                        op.env["AUTOLABEL_RECONCILE_INTERVAL"] = str(interval)
                        op.start()
                        try:
                            namespace = f"bench-{k}"
                            cluster.kubectl("create", "namespace", namespace)
                            manifest = dataset(s3)
                            names = [f"q-{i:03d}" for i in range(jobs)]
                            annotations = {"fakeworker.autolabel.dev/seconds": "0.3"}
                            docs = [job_manifest(n, manifest, annotations) for n in names]
                            start = time.monotonic()
                            apply(cluster, namespace, "---\n".join(docs))
                            done: dict[str, dict[str, Any]] = {}
                            while len(done) < jobs and time.monotonic() - start < 1200:
                                for n in names:
                                    if n not in done:
                                        obj = alj(cluster, namespace, n)
                                        if (obj.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                                            done[n] = obj
                                time.sleep(0.5)
                            wall = time.monotonic() - start
                            assert op.proc is not None
                            rss = psutil.Process(op.proc.pid).memory_info().rss / 2**20
                            runs = []
                            for n in names:
                                uri = done[n]["status"]["result"]["uri"]
                                s = get_json(s3, uri.removeprefix(f"s3://{BUCKET}/") + "summary.json")
                                runs.append((s["startedAt"], s["finishedAt"]))
                            gaps = [b[0] - a[1] for a, b in itertools.pairwise(runs)]
                            rows.append(
                                {
                                    "jobs": jobs,
                                    "interval": interval,
                                    "succeeded": sum(d["status"]["phase"] == "Succeeded" for d in done.values()),
                                    "wall_s": wall,
                                    "per_job_s": wall / jobs,
                                    "gap_mean_s": statistics.mean(gaps),
                                    "gap_max_s": max(gaps),
                                    "overlaps": sum(g < 0 for g in gaps),
                                    "operator_rss_mib": rss,
                                }
                            )
                        finally:
                            op.stop()
                finally:
                    runner.stop()
        finally:
            cluster.stop()
    print(f"\nQueue: {jobs} jobs created at once on one dataset (fake worker, 0.3 s each)")
    print(
        _table(
            ["interval s", "succeeded", "wall s", "s/job", "handoff mean s", "handoff max s", "overlaps",
             "operator RSS MiB"],
            [[r["interval"], f"{r['succeeded']}/{r['jobs']}", r["wall_s"], r["per_job_s"], r["gap_mean_s"],
              r["gap_max_s"], r["overlaps"], r["operator_rss_mib"]] for r in rows],
        )
    )  # fmt: skip
    _save("queue", rows)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["all", "preconditions", "queue"], default="all")
    parser.add_argument("--sizes", default="10000,100000,1000000", help="manifest lines")
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--intervals", default="1,5", help="operator timer intervals, seconds")
    parser.add_argument("--child-preconditions", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_preconditions:
        child_preconditions(args.child_preconditions)
        return 0
    if args.part in ("all", "preconditions"):
        bench_preconditions([int(s) for s in args.sizes.split(",")])
    if args.part in ("all", "queue"):
        bench_queue(args.jobs, [float(s) for s in args.intervals.split(",")])
    return 0


if __name__ == "__main__":
    sys.exit(main())
