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
import contextlib
import itertools
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
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


def _manifest_lines(lines: int) -> Iterator[str]:
    """The manifest's lines, made one at a time (10M lines are 330 MB: never held in memory)."""
    labeled = max(100, lines // 100)
    for i in range(lines):
        if i < labeled:
            ann = [{"type": "modelarts/image_classification", "name": f"class-{i % 10}"}]
            yield json.dumps({"source": f"img/{i:08d}.png", "annotation": ann}) + "\n"
        else:
            yield json.dumps({"source": f"img/{i:08d}.png"}) + "\n"


def _write_manifest(lines: int, path: Path) -> int:
    """Writes the manifest to a local file, streaming; returns its size in bytes."""
    with open(path, "w") as fh:
        it = _manifest_lines(lines)
        while chunk := "".join(itertools.islice(it, 10000)):
            fh.write(chunk)
    return path.stat().st_size


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
            # the operator's credentials may serve this namespace and bucket (issue 10's storage policy)
            "AUTOLABEL_DEFAULT_CREDENTIALS_NAMESPACES": "bench",
            "AUTOLABEL_ALLOWED_BUCKETS": BUCKET,
        }
        for n in sizes:
            local = Path(tmp) / f"m{n}.manifest"
            size = _write_manifest(n, local)
            s3.client().upload_file(str(local), BUCKET, f"m{n}/data.manifest")  # multipart, streamed
            local.unlink()
            uri = f"s3://{BUCKET}/m{n}/data.manifest"
            out = subprocess.run(
                [sys.executable, __file__, "--child-preconditions", uri],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            result = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append({"lines": n, "mib": size / 2**20, **result, "lines_per_s": n / result["seconds"]})
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
    from devenv.s3 import MinioServer
    from operator_fixtures import (
        OperatorProcess,
        alj,
        apply,
        control_plane,
        dataset,
        get_json,
        job_manifest,
        node_runner,
    )

    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        with control_plane(tmp / "cluster") as cluster, MinioServer(tmp / "s3") as s3:
            s3.make_bucket(BUCKET)
            (tmp / "node").mkdir()
            runner = node_runner(cluster, tmp / "node")
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


# -------------------------------------------------------------------------------------------- scale

AUDIT_POLICY = """apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
"""
# The operator's two API clients: kopf's own (watches, its annotations, events) and ours (kube.py).
OPERATOR_AGENTS = ("kopf/", "autolabel-operator")
WRITE_VERBS = ("create", "update", "patch", "delete", "deletecollection")


class Api:
    """Plain HTTPS to the local API server with the kubeconfig's token (no client library in the loop)."""

    def __init__(self, kubeconfig: Path) -> None:
        import ssl

        cfg = json.loads(kubeconfig.read_text())
        cluster = cfg["clusters"][0]["cluster"]
        self.server = cluster["server"]
        self.ctx = ssl.create_default_context(cafile=cluster["certificate-authority"])
        self.token = cfg["users"][0]["user"]["token"]

    def open(self, method: str, path: str, body: Any = None, timeout: float = 30) -> Any:
        import urllib.request

        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.server + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.token}")
        req.add_header("Content-Type", "application/json")
        req.add_header("User-Agent", "bench-operator")
        return urllib.request.urlopen(req, context=self.ctx, timeout=timeout)

    def call(self, method: str, path: str, body: Any = None) -> Any:
        with self.open(method, path, body) as r:
            return json.loads(r.read() or b"{}")


class Recorder:
    """Watches AutoLabelJobs and Jobs in one namespace and keeps, by AutoLabelJob name, when each was
    first seen (monotonic time of the watch event on this side: the same clock for both), when its Job
    was first seen, and when it first reached a final phase."""

    def __init__(self, api: Api, namespace: str) -> None:
        import threading

        self.api, self.namespace = api, namespace
        self.lock = threading.Lock()
        self.alj_seen: dict[str, float] = {}
        self.job_seen: dict[str, float] = {}
        self.done: dict[str, tuple[float, str]] = {}
        for path, handle in (
            (f"/apis/autolabel.dev/v1alpha1/namespaces/{namespace}/autolabeljobs", self._alj),
            (f"/apis/batch/v1/namespaces/{namespace}/jobs", self._job),
        ):
            threading.Thread(target=self._watch, args=(path, handle), daemon=True).start()

    def _watch(self, path: str, handle: Any) -> None:
        while True:
            try:
                # Short watches: a stream the API server stops feeding (seen under heavy load: events of
                # 1,000 jobs missed, the stream still open) is re-opened and re-listed within a minute.
                with self.api.open("GET", path + "?watch=1&timeoutSeconds=60", timeout=90) as r:
                    for line in r:
                        now = time.monotonic()
                        event = json.loads(line)
                        if event.get("type") in ("ADDED", "MODIFIED"):
                            with self.lock:
                                handle(now, event["object"])
            except Exception:  # a broken watch is opened again; first-seen times are kept
                time.sleep(0.2)

    def _alj(self, now: float, obj: dict[str, Any]) -> None:
        name = obj["metadata"]["name"]
        self.alj_seen.setdefault(name, now)
        phase = (obj.get("status") or {}).get("phase")
        if phase in ("Succeeded", "Failed") and name not in self.done:
            self.done[name] = (now, phase)

    def _job(self, now: float, obj: dict[str, Any]) -> None:
        owner = (obj["metadata"].get("labels") or {}).get("autolabel.dev/job")
        if owner:
            self.job_seen.setdefault(owner, now)

    def counts(self) -> tuple[int, int, int]:
        with self.lock:
            return len(self.alj_seen), len(self.job_seen), len(self.done)


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _audit_counts(path: Path, since: str) -> dict[str, Any]:
    """Requests by the operator's clients in the audit log after ``since`` (RFC 3339), by verb and
    resource; every other client is counted apart."""
    by: dict[str, int] = {}
    others: dict[str, int] = {}
    seen: set[str] = set()
    for file in sorted(path.parent.glob(path.name + "*")):
        with open(file) as fh:
            for line in fh:
                ev = json.loads(line)
                if ev.get("stage") not in ("ResponseComplete", "ResponseStarted") or ev["auditID"] in seen:
                    continue
                if ev.get("requestReceivedTimestamp", "") < since:
                    continue
                seen.add(ev["auditID"])
                agent = ev.get("userAgent") or ""
                ref = ev.get("objectRef") or {}
                key = f"{ev['verb']} {ref.get('resource', ev.get('requestURI', '?').split('?')[0])}"
                if ref.get("subresource"):
                    key += "/" + ref["subresource"]
                if agent.startswith(OPERATOR_AGENTS):
                    by[key] = by.get(key, 0) + 1
                else:
                    who = agent.split("/")[0].split(" ")[0] or "?"
                    others[who] = others.get(who, 0) + 1
    return {"operator": dict(sorted(by.items(), key=lambda kv: -kv[1])), "others": others}


def _from_status(api: Api, namespace: str) -> dict[str, float]:
    """Create->Job and the drain from the objects' own timestamps (1 s resolution): a cross-check of the
    watch-based figures."""
    from datetime import datetime

    def items(path: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        token = ""
        while True:
            page = api.call("GET", f"{path}?limit=200" + (f"&continue={token}" if token else ""))
            out += page.get("items") or []
            token = (page.get("metadata") or {}).get("continue") or ""
            if not token:
                return out

    def ts(value: str | None) -> float:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() if value else float("nan")

    aljs = items(f"/apis/autolabel.dev/v1alpha1/namespaces/{namespace}/autolabeljobs")
    jobs = {
        (j["metadata"].get("labels") or {}).get("autolabel.dev/job"): ts(j["metadata"]["creationTimestamp"])
        for j in items(f"/apis/batch/v1/namespaces/{namespace}/jobs")
    }
    created = {a["metadata"]["name"]: ts(a["metadata"]["creationTimestamp"]) for a in aljs}
    lat = [jobs[n] - c for n, c in created.items() if n in jobs]
    done = [ts((a.get("status") or {}).get("completionTime")) for a in aljs]
    return {
        "latency_p50_s": _pct(lat, 0.5),
        "latency_p99_s": _pct(lat, 0.99),
        "creates_span_s": max(created.values()) - min(created.values()) if created else float("nan"),
        "drain_s": max(done) - min(created.values()) if done and created else float("nan"),
    }


def _cpu_by_program() -> dict[str, float]:
    """CPU seconds (user + system) used so far by every process on the machine, summed by program name
    (kube-apiserver, etcd, minio, python: the operator, the node runner, this benchmark...)."""
    import psutil

    used: dict[str, float] = {}
    for proc in psutil.process_iter(["name", "cmdline", "cpu_times"]):
        times, name = proc.info["cpu_times"], proc.info["name"]
        if times is None:
            continue
        if name.startswith("python"):  # which Python program: the first argument that is not an option
            args = [a for a in (proc.info["cmdline"] or [])[1:] if not a.startswith("-")]
            name = "python " + (Path(args[0]).name if args else "?")
        used[name] = used.get(name, 0.0) + times.user + times.system
    return used


def _cores_used(before: dict[str, float], after: dict[str, float], seconds: float) -> dict[str, float]:
    """Cores used per program over ``seconds`` (processes that ended in between are not counted)."""
    used = {name: (after[name] - before.get(name, 0.0)) / seconds for name in after}
    return {name: round(cores, 3) for name, cores in sorted(used.items(), key=lambda kv: -kv[1]) if cores >= 0.01}


def _operator_pid(proc_pid: int) -> int:
    """The operator's Python process (under py-spy it is py-spy's child)."""
    import psutil

    p = psutil.Process(proc_pid)
    for child in p.children(recursive=True):
        if "autolabel_operator.main" in " ".join(child.cmdline()):
            return int(child.pid)
    return proc_pid


def _frame(text: str) -> str:
    """``func (path/to/file.py:12)`` -> ``func (file.py)``."""
    func, _, where = text.partition(" (")
    return f"{func} ({where.split(':')[0].rsplit('/', 1)[-1]})"


def _collapse(raw: Path, top: int = 25) -> dict[str, list[tuple[str, float]]]:
    """py-spy's collapsed stacks -> the functions with most samples, self and inclusive (shares)."""
    self_: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = [_frame(f) for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += count
        self_[frames[-1]] = self_.get(frames[-1], 0) + count
        for f in set(frames):
            incl[f] = incl.get(f, 0) + count

    def share(d: dict[str, int]) -> list[tuple[str, float]]:
        return [(k, v / total) for k, v in sorted(d.items(), key=lambda kv: -kv[1])[:top]]

    return {"samples": [("total", float(total))], "self": share(self_), "inclusive": share(incl)}


def bench_scale_one(
    jobs: int, ramp: float, idle: float, pod_cpu: str, interval: float, profile: bool, tag: str, hold_pods: bool
) -> dict[str, Any]:
    """One scenario on a fresh control plane: ``jobs`` AutoLabelJobs, each on its own dataset, created
    at once (``ramp`` 0) or evenly over ``ramp`` seconds; then ``idle`` seconds with all of them finished.

    ``hold_pods``: the node runner (which runs the pods on this machine's two cores, where on a cluster
    they run on other nodes) starts only once every AutoLabelJob has its Job, so that create->Job is the
    operator's and the API server's time, not theirs plus 20 Python processes starting."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import psutil
    from devenv.s3 import MinioServer
    from operator_fixtures import OperatorProcess, control_plane, manifest_lines, node_runner

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "audit").mkdir()
        policy = tmp / "audit" / "policy.yaml"
        policy.write_text(AUDIT_POLICY)
        audit_log = tmp / "audit" / "audit.log"
        audit_flags = {"kube-apiserver": ["--audit-policy-file", str(policy), "--audit-log-path", str(audit_log),
                                          "--audit-log-maxsize", "2000", "--audit-log-maxbackup", "10"]}  # fmt: skip
        with control_plane(tmp / "cluster", audit_flags) as cluster, contextlib.ExitStack() as cleanup:
            api = Api(cluster.kubeconfig)
            with MinioServer(tmp / "s3") as s3:
                s3.make_bucket(BUCKET)
                body = ("\n".join(manifest_lines({"cat": 5, "dog": 6}, 6)) + "\n").encode()
                client = s3.client()
                with ThreadPoolExecutor(8) as pool:
                    list(pool.map(lambda i: client.put_object(Bucket=BUCKET, Key=f"ds-{i:05d}/data.manifest",
                                                              Body=body), range(jobs)))  # fmt: skip
                (tmp / "node").mkdir()
                runner = node_runner(cluster, tmp / "node")
                cleanup.callback(runner.stop)
                if not hold_pods:
                    runner.start()
                state = tmp / "op"
                state.mkdir()
                op = OperatorProcess(cluster, s3, state)
                cleanup.callback(op.stop)
                (state / "flavors.yaml").write_text(
                    f"default: cpu\nflavors:\n  cpu:\n    resources: {{requests: {{cpu: {pod_cpu}, memory: 64Mi}}}}\n"
                )
                op.env["AUTOLABEL_RECONCILE_INTERVAL"] = str(interval)
                raw = REPO / ".bench" / f"operator-scale-{tag}.pyspy.txt"
                raw.parent.mkdir(exist_ok=True)
                raw.unlink(missing_ok=True)
                if profile:
                    pyspy = os.environ.get("PY_SPY", "py-spy")
                    op.argv = [pyspy, "record", "--nonblocking", "-r", "50", "-f", "raw", "-o", str(raw), "--",
                               *op.argv]  # fmt: skip
                op.start()
                assert op.proc is not None
                pid = _operator_pid(op.proc.pid)
                proc = psutil.Process(pid)
                namespace = f"scale-{tag}"
                api.call("POST", "/api/v1/namespaces", {"metadata": {"name": namespace}})
                recorder = Recorder(api, namespace)
                time.sleep(2)
                audit_since = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
                rss0 = proc.memory_info().rss / 2**20
                samples: list[dict[str, float]] = []
                stop = threading.Event()
                t0 = time.monotonic()

                def sample() -> None:
                    last_t, last_cpu = time.monotonic(), sum(proc.cpu_times()[:2])
                    while not stop.wait(1.0):
                        now, cpu = time.monotonic(), sum(proc.cpu_times()[:2])
                        created, started, done = recorder.counts()
                        samples.append({"t": now - t0, "rss_mib": proc.memory_info().rss / 2**20,
                                        "cpu": (cpu - last_cpu) / (now - last_t), "created": created,
                                        "jobs": started, "done": done, "load1": os.getloadavg()[0]})  # fmt: skip
                        last_t, last_cpu = now, cpu

                sampler = threading.Thread(target=sample, daemon=True)
                sampler.start()
                cpu_at_start = _cpu_by_program()

                def create(i: int) -> None:
                    if ramp:
                        time.sleep(max(0.0, t0 + ramp * i / jobs - time.monotonic()))
                    doc = {
                        "apiVersion": "autolabel.dev/v1alpha1",
                        "kind": "AutoLabelJob",
                        "metadata": {"name": f"s-{i:05d}", "annotations": {"fakeworker.autolabel.dev/seconds": "0.2"}},
                        "spec": {"task": "ImageClassification", "mode": "ActiveLearning",
                                 "dataset": {"manifest": f"s3://{BUCKET}/ds-{i:05d}/data.manifest"}},
                    }  # fmt: skip
                    api.call("POST", f"/apis/autolabel.dev/v1alpha1/namespaces/{namespace}/autolabeljobs", doc)

                with ThreadPoolExecutor(1 if ramp else 8) as pool:
                    list(pool.map(create, range(jobs)))
                created_s = time.monotonic() - t0
                until = time.monotonic() + 300
                while recorder.counts()[1] < jobs and time.monotonic() < until:
                    time.sleep(0.2)
                all_jobs_s = time.monotonic() - t0
                cores_until_all_jobs = _cores_used(cpu_at_start, _cpu_by_program(), all_jobs_s)
                if hold_pods:  # the node runner starts once every AutoLabelJob has its Job (or after 300 s)
                    runner.start()
                deadline = time.monotonic() + max(1800.0, 3 * ramp)
                while recorder.counts()[2] < jobs and time.monotonic() < deadline and op.running():
                    time.sleep(1)
                drained = time.monotonic()
                rss_drained = proc.memory_info().rss / 2**20
                from_status = _from_status(api, namespace)
                cpu_a = sum(proc.cpu_times()[:2])
                time.sleep(idle)
                idle_cpu = (sum(proc.cpu_times()[:2]) - cpu_a) / idle
                stop.set()
                sampler.join()
                rss_idle = proc.memory_info().rss / 2**20
                with recorder.lock:
                    per_job = sorted((recorder.alj_seen[n] - t0, recorder.job_seen[n] - recorder.alj_seen[n])
                                     for n in recorder.job_seen if n in recorder.alj_seen)  # fmt: skip
                    latencies = [lat for _, lat in per_job]
                    first = min(recorder.alj_seen.values(), default=t0)
                    last_done = max((t for t, _ in recorder.done.values()), default=float("nan"))
                    succeeded = sum(p == "Succeeded" for _, p in recorder.done.values())
                if profile:  # the operator alone first: py-spy writes its samples when its child exits
                    os.kill(pid, signal.SIGTERM)
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        op.proc.wait(60)
                shutil.copy(state / "operator.log", REPO / ".bench" / f"operator-scale-{tag}.log")
                op.stop()  # before the audit log is read (the callback stops it again, harmlessly)
                time.sleep(1)
                audit = _audit_counts(audit_log, audit_since)
                if jobs <= 200:  # kept for timelines (each request's received/finished times, by object)
                    shutil.copy(audit_log, REPO / ".bench" / f"operator-scale-{tag}.audit.log")
                writes = sum(v for k, v in audit["operator"].items() if k.split()[0] in WRITE_VERBS)
                reads = sum(v for k, v in audit["operator"].items() if k.split()[0] not in WRITE_VERBS)
                row = {
                    "tag": tag,
                    "jobs": jobs,
                    "ramp_s": ramp,
                    "interval_s": interval,
                    "pod_cpu": pod_cpu,
                    "create_s": created_s,
                    "with_job": len(latencies),
                    "succeeded": succeeded,
                    "latency_p50_s": _pct(latencies, 0.5),
                    "latency_p99_s": _pct(latencies, 0.99),
                    "latency_max_s": max(latencies, default=float("nan")),
                    "drain_s": last_done - first,
                    "drain_after_last_create_s": drained - t0 - created_s,
                    "rss_start_mib": rss0,
                    "rss_peak_mib": max((s["rss_mib"] for s in samples), default=rss0),
                    "rss_drained_mib": rss_drained,
                    "rss_idle_mib": rss_idle,
                    "cpu_busy_mean": statistics.mean(s["cpu"] for s in samples if s["t"] <= drained - t0)
                    if samples
                    else float("nan"),
                    "idle_cpu": idle_cpu,
                    "idle_s": idle,
                    "api_writes_per_job": writes / jobs,
                    "api_reads_per_job": reads / jobs,
                    "api_by_verb_resource": audit["operator"],
                    "api_other_clients": audit["others"],
                    "load1_mean": statistics.mean(s["load1"] for s in samples) if samples else float("nan"),
                    "from_api_timestamps": from_status,
                    "pods_held_until_all_jobs": hold_pods,
                    "all_jobs_s": all_jobs_s,
                    "cores_until_all_jobs": cores_until_all_jobs,
                    "per_job_created_latency": per_job,
                    "samples": samples,
                }
                if profile:
                    row["profile"] = _collapse(raw) if raw.exists() else None
                return row


def bench_scale(scenarios: list[tuple[int, float]], idle: float, pod_cpu: str, interval: float,
                profile: bool, hold_pods: bool) -> list[dict[str, Any]]:  # fmt: skip
    rows = []
    for jobs, ramp in scenarios:
        hold = hold_pods and not ramp
        tag = f"{jobs}-{'once' if not ramp else f'ramp{int(ramp)}'}{'-held' if hold else ''}"
        row = bench_scale_one(jobs, ramp, idle, pod_cpu, interval, profile, tag, hold)
        rows.append(row)
        _save(f"scale-{tag}", row)
        _print_scale([row])
        if row.get("profile"):
            print("\nprofile (py-spy, share of the operator's samples), self:")
            for name, share in row["profile"]["self"][:15]:
                print(f"  {share:6.1%}  {name}")
            print("inclusive:")
            for name, share in row["profile"]["inclusive"][:25]:
                print(f"  {share:6.1%}  {name}")
    print()
    _print_scale(rows)
    return rows


def _print_scale(rows: list[dict[str, Any]]) -> None:
    print("\nScale: AutoLabelJobs on their own datasets (fake worker), fresh control plane each")
    print(
        _table(
            ["jobs", "created", "with Job", "succeeded", "create->Job p50 s", "p99 s", "max s", "drain s",
             "RSS start/peak/idle MiB", "busy CPU", "idle CPU", "API writes/job", "reads/job", "load1"],
            [[r["jobs"], ("at once" + (", pods held" if r.get("pods_held_until_all_jobs") else "")) if not r["ramp_s"]
              else f"over {r['ramp_s']:.0f} s", r["with_job"],
              r["succeeded"], r["latency_p50_s"], r["latency_p99_s"], r["latency_max_s"], r["drain_s"],
              f"{r['rss_start_mib']:.0f}/{r['rss_peak_mib']:.0f}/{r['rss_idle_mib']:.0f}",
              f"{r['cpu_busy_mean']:.0%}", f"{r['idle_cpu']:.1%}", r["api_writes_per_job"],
              r["api_reads_per_job"], r["load1_mean"]] for r in rows],
        )
    )  # fmt: skip
    for r in rows:
        top = ", ".join(f"{k} {v / r['jobs']:.2f}" for k, v in list(r["api_by_verb_resource"].items())[:12])
        print(f"  {r['tag']}: operator requests per job: {top}")
        cores = ", ".join(f"{k} {v:.2f}" for k, v in list(r["cores_until_all_jobs"].items())[:8])
        print(f"  {r['tag']}: cores used until every Job existed ({r['all_jobs_s']:.1f} s): {cores}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["all", "preconditions", "queue", "scale"], default="all")
    parser.add_argument("--sizes", default="10000,100000,1000000", help="manifest lines")
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--intervals", default="1,5", help="operator timer intervals, seconds")
    parser.add_argument(
        "--scenarios",
        default="100:0,1000:0,1000:600",
        help="scale part: JOBS:RAMP_SECONDS, comma-separated (ramp 0: all at once)",
    )
    parser.add_argument("--idle", type=float, default=60, help="scale part: seconds measured idle after the drain")
    parser.add_argument(
        "--pod-cpu", default="100m", help="scale part: CPU request of a worker pod (bounds the pods run at once)"
    )
    parser.add_argument("--interval", type=float, default=5.0, help="scale part: operator timer interval")
    parser.add_argument("--profile", action="store_true", help="scale part: run the operator under py-spy ($PY_SPY)")
    parser.add_argument(
        "--hold-pods",
        action="store_true",
        help="scale part, jobs created at once: start running pods only once every AutoLabelJob has its Job",
    )
    parser.add_argument("--child-preconditions", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_preconditions:
        child_preconditions(args.child_preconditions)
        return 0
    if args.part in ("all", "preconditions"):
        bench_preconditions([int(s) for s in args.sizes.split(",")])
    if args.part in ("all", "queue"):
        bench_queue(args.jobs, [float(s) for s in args.intervals.split(",")])
    if args.part == "scale":
        scenarios = [(int(j), float(r)) for j, r in (s.split(":") for s in args.scenarios.split(","))]
        bench_scale(scenarios, args.idle, args.pod_cpu, args.interval, args.profile, args.hold_pods)
    return 0


if __name__ == "__main__":
    sys.exit(main())
