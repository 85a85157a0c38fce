"""The fault campaign's scenarios (issue 11 §1), shared by ``benchmarks/faults.py`` (long, seeded runs that
print a table) and ``tests/integration/test_faults_*.py`` (short runs that gate ``make test``).

Each scenario takes an :class:`Env` (the local control plane, MinIO, the local node runner and the real
operator as a subprocess, with the fake worker ``tests/fakeworker.py`` in the pods), a number of runs and a
seed, breaks something, waits for the system to converge and returns an :class:`Outcome`: what was
checked, every failure found (empty when all held) and timings. Nothing here asserts: the callers do.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BUCKET = "datasets"
DATASET_LABEL = "autolabel.dev/dataset"
JOB_UID_LABEL = "autolabel.dev/job-uid"
FINAL = {"Succeeded", "Failed"}
FAKE = "fakeworker.autolabel.dev/"


@dataclass
class Env:
    """What a scenario runs against. ``operator`` and ``runner`` are ``operator_fixtures.Process``es
    (killable, restartable); ``cluster`` a ``devenv.cluster.LocalCluster``; ``s3`` a ``MinioServer``."""

    cluster: Any
    s3: Any
    operator: Any
    runner: Any


@dataclass
class Outcome:
    scenario: str
    runs: int
    checked: str
    failures: list[str] = field(default_factory=list)
    timings: dict[str, list[float]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def time(self, what: str, seconds: float) -> None:
        self.timings.setdefault(what, []).append(seconds)

    def fail(self, what: str) -> None:
        self.failures.append(what)

    def to_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "runs": self.runs,
            "checked": self.checked,
            "failures": self.failures,
            "timings": self.timings,
            "counts": self.counts,
        }


# ------------------------------------------------------------------------------------------- kubectl


def kget(env: Env, namespace: str, kinds: str, *args: str) -> list[dict[str, Any]]:
    """``kubectl get KINDS -n NS -o json``'s items ([] when the API server does not answer)."""
    result = env.cluster.kubectl("get", kinds, "-n", namespace, "-o", "json", *args, check=False)
    if result.returncode != 0:
        return []
    try:
        return list(json.loads(result.stdout).get("items") or [])
    except ValueError:
        return []


def new_namespace(env: Env, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    env.cluster.kubectl("create", "namespace", name)
    return name


def apply_jobs(env: Env, namespace: str, docs: list[str]) -> None:
    env.cluster.kubectl("apply", "-n", namespace, "-f", "-", input="\n---\n".join(docs))


def job_doc(name: str, manifest: str, annotations: dict[str, str], **spec: Any) -> str:
    body = {
        "apiVersion": "autolabel.dev/v1alpha1",
        "kind": "AutoLabelJob",
        "metadata": {"name": name, "annotations": annotations},
        "spec": {"task": "ImageClassification", "mode": "ActiveLearning", "dataset": {"manifest": manifest}, **spec},
    }
    return json.dumps(body)


def fake(seconds: float, fail: bool = False) -> dict[str, str]:
    out = {FAKE + "seconds": str(seconds)}
    if fail:
        out[FAKE + "fail"] = "true"
    return out


def phases(env: Env, namespace: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in kget(env, namespace, "autolabeljobs")}


def wait_final(env: Env, namespace: str, names: list[str], timeout: float) -> dict[str, dict[str, Any]]:
    """Waits until every named AutoLabelJob is Succeeded or Failed (or ``timeout``); returns the last view."""
    deadline = time.monotonic() + timeout
    objs: dict[str, dict[str, Any]] = {}
    while time.monotonic() < deadline:
        objs = phases(env, namespace)
        if all(status_of(objs.get(n)).get("phase") in FINAL for n in names):
            break
        time.sleep(0.5)
    return objs


def status_of(obj: dict[str, Any] | None) -> dict[str, Any]:
    return dict((obj or {}).get("status") or {})


def condition(obj: dict[str, Any] | None, ctype: str) -> dict[str, Any]:
    for cond in status_of(obj).get("conditions") or []:
        if cond.get("type") == ctype:
            return dict(cond)
    return {}


# ---------------------------------------------------------------------------------------------- S3


def s3_key(uri: str) -> str:
    return uri.removeprefix(f"s3://{BUCKET}/")


def s3_json(env: Env, uri: str) -> Any:
    return json.loads(env.s3.client().get_object(Bucket=BUCKET, Key=s3_key(uri))["Body"].read())


def s3_lines(env: Env, uri: str) -> list[dict[str, Any]]:
    body = env.s3.client().get_object(Bucket=BUCKET, Key=s3_key(uri))["Body"].read().decode()
    return [json.loads(line) for line in body.splitlines() if line.strip()]


def make_dataset(env: Env, unlabeled: int = 6) -> tuple[str, set[str]]:
    """A manifest in a fresh folder (cat: 5, dog: 6, ``unlabeled`` unlabeled); its URI and unlabeled sources."""
    folder = f"faults-{uuid.uuid4().hex[:8]}"
    lines, n = [], 0
    for label, count in (("cat", 5), ("dog", 6)):
        for _ in range(count):
            n += 1
            ann = [{"type": "modelarts/image_classification", "name": label}]
            lines.append(json.dumps({"source": f"img/{n:05d}.png", "annotation": ann}))
    sources = set()
    for _ in range(unlabeled):
        n += 1
        lines.append(json.dumps({"source": f"img/{n:05d}.png"}))
        sources.add(f"s3://{BUCKET}/{folder}/img/{n:05d}.png")
    key = f"{folder}/data.manifest"
    env.s3.client().put_object(Bucket=BUCKET, Key=key, Body=("\n".join(lines) + "\n").encode())
    return f"s3://{BUCKET}/{key}", sources


def prelabel_model(env: Env) -> str:
    """A model folder the operator accepts (the fake worker never loads model.pt)."""
    folder = f"models/faults-{uuid.uuid4().hex[:8]}"
    client = env.s3.client()
    client.put_object(Bucket=BUCKET, Key=f"{folder}/model.pt", Body=b"not read by the fake worker")
    labels = json.dumps({"task": "ImageClassification", "labels": ["cat", "dog"]}).encode()
    client.put_object(Bucket=BUCKET, Key=f"{folder}/labels.json", Body=labels)
    return f"s3://{BUCKET}/{folder}/"


# ---------------------------------------------------------------------------------------- the watcher


class Watcher(threading.Thread):
    """Samples a namespace's Jobs, pods and Leases continuously (one ``kubectl get`` per sample), recording
    every worker Job uid seen per AutoLabelJob (a second one is a duplicated Job) and the largest number of
    pods running at once per dataset (more than one is two jobs of a dataset running together)."""

    def __init__(self, env: Env, namespace: str, interval: float = 0.3):
        super().__init__(daemon=True)
        self.env, self.namespace, self.interval = env, namespace, interval
        self.job_uids: dict[str, set[str]] = defaultdict(set)
        self.max_running: Counter[str] = Counter()
        self.overlaps: list[str] = []
        self.samples = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            self.sample()
            self.stopping.wait(self.interval)

    def sample(self) -> None:
        items = kget(self.env, self.namespace, "jobs.batch,pods")
        if not items:
            return
        self.samples += 1
        running: dict[str, set[str]] = defaultdict(set)
        for item in items:
            labels = item["metadata"].get("labels") or {}
            owner = labels.get(JOB_UID_LABEL)
            if not owner:
                continue
            if item["kind"] == "Job":
                self.job_uids[owner].add(item["metadata"]["uid"])
            elif (item.get("status") or {}).get("phase") == "Running":
                running[labels.get(DATASET_LABEL, "?")].add(owner)
        for ds, owners in running.items():
            self.max_running[ds] = max(self.max_running[ds], len(owners))
            if len(owners) > 1:
                self.overlaps.append(f"dataset {ds}: pods of {len(owners)} AutoLabelJobs running at once")

    def stop(self) -> None:
        self.stopping.set()
        self.join(30)
        self.sample()  # a last look after everything settled


@contextmanager
def watching(env: Env, namespace: str) -> Iterator[Watcher]:
    watcher = Watcher(env, namespace)
    watcher.start()
    try:
        yield watcher
    finally:
        watcher.stop()


# ------------------------------------------------------------------------------------- common checks


def check_jobs(
    env: Env,
    out: Outcome,
    namespace: str,
    expected: dict[str, str],
    unlabeled: dict[str, set[str]],
    watcher: Watcher | None,
    timeout: float,
) -> dict[str, dict[str, Any]]:
    """Every job reached ``expected[name]`` (a phase; Failed jobs also their worker's reason), exactly one
    worker Job each (ever, when watched), a succeeded job's result has each unlabeled image exactly once,
    no Lease of the namespace is left held, and the jobs of a dataset ran one at a time in creation order
    (the fake worker's startedAt/finishedAt)."""
    start = time.monotonic()
    objs = wait_final(env, namespace, list(expected), timeout)
    out.time("converge s", time.monotonic() - start)
    jobs = kget(env, namespace, "jobs.batch")
    per_owner: dict[str, list[str]] = defaultdict(list)
    for job in jobs:
        per_owner[(job["metadata"].get("labels") or {}).get(JOB_UID_LABEL, "")].append(job["metadata"]["uid"])
    runs: dict[str, list[tuple[str, str, float, float]]] = defaultdict(list)
    for name, want in expected.items():
        obj = objs.get(name)
        status = status_of(obj)
        phase = status.get("phase")
        if phase != want:
            out.fail(f"{namespace}/{name}: phase {phase}, expected {want}: {status.get('message')}")
            continue
        uid = obj["metadata"]["uid"] if obj else ""
        seen = set(per_owner.get(uid, []))
        if watcher is not None:
            seen |= watcher.job_uids.get(uid, set())
        if len(seen) != 1:
            out.fail(f"{namespace}/{name}: {len(seen)} worker Jobs ({sorted(seen)}), expected exactly 1")
        if want == "Failed":
            reason = condition(obj, "Failed").get("reason")
            if reason != "FakeWorkerFailed":
                out.fail(f"{namespace}/{name}: Failed with reason {reason}, expected FakeWorkerFailed")
            continue
        result = status.get("result") or {}
        uri = result.get("uri")
        if not uri:
            out.fail(f"{namespace}/{name}: Succeeded without status.result")
            continue
        lines = s3_lines(env, uri + "result.manifest")
        sources = Counter(line["source"] for line in lines)
        wanted = unlabeled.get(name, set())
        dupes = [s for s, c in sources.items() if c > 1]
        if set(sources) != wanted or dupes or result.get("total") != len(wanted):
            out.fail(
                f"{namespace}/{name}: result has {len(sources)} sources ({len(dupes)} duplicated), total "
                f"{result.get('total')}, expected the {len(wanted)} unlabeled images once each"
            )
        summary = s3_json(env, uri + "summary.json")
        if "startedAt" in summary:
            ds = (obj or {})["metadata"].get("labels", {}).get(DATASET_LABEL, "?")
            created = obj["metadata"]["creationTimestamp"] if obj else ""
            runs[ds].append((created, name, float(summary["startedAt"]), float(summary["finishedAt"])))
    for ds, items in runs.items():
        items.sort()
        for a, b in itertools.pairwise(items):
            if b[2] < a[3]:
                late = a[3] - b[2]
                out.fail(f"dataset {ds}: {b[1]} started {late:.2f}s before {a[1]} finished (overlap or out of order)")
    for lease in kget(env, namespace, "leases.coordination.k8s.io"):
        holder = (lease.get("spec") or {}).get("holderIdentity")
        if holder:
            out.fail(f"{namespace}: Lease {lease['metadata']['name']} still held by {holder} after every job ended")
    if watcher is not None:
        out.failures.extend(sorted(set(watcher.overlaps)))
        out.counts["samples"] = out.counts.get("samples", 0) + watcher.samples
    return objs


def restart_operator(env: Env, out: Outcome, kill: bool = True) -> None:
    start = time.monotonic()
    if kill:
        env.operator.kill()
    env.operator.start()  # waits for /metrics
    out.time("operator restart s", time.monotonic() - start)


# ------------------------------------------------------------------------------------------ scenarios


MOMENTS = ("before Lease", "Lease, no Job", "mid-run", "finishing")


def operator_kills(
    env: Env,
    runs: int,
    seed: int,
    jobs: int | None = None,
    datasets: int = 3,
    work: float = 2.0,
    max_wait: float = 8.0,
) -> Outcome:
    """The operator SIGKILLed ``runs`` times at seeded random moments while ``jobs`` (default ``runs // 2``)
    AutoLabelJobs over ``datasets`` datasets are created (one every few kills), wait, run and finish; every
    fifth job's worker fails on purpose. For each kill a moment of a job's life is drawn (before the Lease,
    between Lease and Job, mid-run, finishing) and the kill waits (at most a drawn 1..``max_wait`` s) until
    some job is there; each kill is then counted by what the unfinished jobs were really doing."""
    rng = random.Random(seed)
    jobs = jobs if jobs is not None else max(3, runs // 2)
    checked = (
        "0 duplicated Jobs, 0 held Leases at the end, each job Succeeded (or Failed with its worker's reason when "
        "told to fail) with every image once, per-dataset order"
    )
    out = Outcome("operator-kills", runs, checked)
    ns = new_namespace(env, "kills")
    manifests = [make_dataset(env) for _ in range(datasets)]
    names = [f"k-{i:02d}" for i in range(jobs)]
    expected = {n: "Failed" if i % 5 == 4 else "Succeeded" for i, n in enumerate(names)}
    unlabeled = {n: manifests[i % datasets][1] for i, n in enumerate(names)}
    per_create = max(1, runs // max(1, jobs))
    moments: Counter[str] = Counter()
    created = 0
    with watching(env, ns) as watcher:
        for k in range(runs):
            if created < jobs and k % per_create == 0:
                name = names[created]
                uri = manifests[created % datasets][0]
                apply_jobs(env, ns, [job_doc(name, uri, fake(work, expected[name] == "Failed"))])
                created += 1
            target = rng.choice(MOMENTS)
            deadline = time.monotonic() + rng.uniform(1.0, max_wait)
            while time.monotonic() < deadline and target not in classify(env, ns):
                time.sleep(rng.uniform(0.0, 0.2))
            env.operator.kill()
            for moment in classify(env, ns):
                moments[moment] += 1
            restart_operator(env, out, kill=False)
        while created < jobs:
            apply_jobs(env, ns, [job_doc(names[created], manifests[created % datasets][0],
                                         fake(work, expected[names[created]] == "Failed"))])  # fmt: skip
            created += 1
        check_jobs(env, out, ns, expected, unlabeled, watcher, timeout=120 + 10 * jobs)
    out.counts.update({f"kills {m}": c for m, c in sorted(moments.items())})
    return out


def classify(env: Env, namespace: str) -> set[str]:
    """What the unfinished jobs were doing when the operator died: ``before Lease`` (no Lease held by it),
    ``Lease, no Job``, ``mid-run`` (a Job not yet complete), ``finishing`` (the Job ended, the status or
    the Lease not yet)."""
    items = kget(env, namespace, "autolabeljobs,jobs.batch,leases.coordination.k8s.io")
    holders = {(i.get("spec") or {}).get("holderIdentity") for i in items if i["kind"] == "Lease"}
    jobs = {(i["metadata"].get("labels") or {}).get(JOB_UID_LABEL): i for i in items if i["kind"] == "Job"}
    moments = set()
    for obj in (i for i in items if i["kind"] == "AutoLabelJob"):
        uid = obj["metadata"]["uid"]
        done = status_of(obj).get("phase") in FINAL
        job = jobs.get(uid)
        job_ended = job is not None and any(
            c.get("type") in ("Complete", "Failed", "SuccessCriteriaMet", "FailureTarget") and c.get("status") == "True"
            for c in (job.get("status") or {}).get("conditions") or []
        )
        if done and uid not in holders:
            continue
        if job_ended or (done and uid in holders):
            moments.add("finishing")
        elif job is not None:
            moments.add("mid-run")
        elif uid in holders:
            moments.add("Lease, no Job")
        else:
            moments.add("before Lease")
    return moments or {"idle"}


def dataset_race(env: Env, runs: int, seed: int, datasets: int = 1, work: float = 0.3) -> Outcome:
    """``runs`` AutoLabelJobs per dataset over ``datasets`` datasets, all created at once (in a seeded
    shuffled order of datasets, names in creation order per dataset)."""
    rng = random.Random(seed)
    checked = (
        "never two running per dataset (pods sampled continuously, and the runs' own start/end times), "
        "creation order, all Succeeded"
    )
    out = Outcome(f"dataset-race {datasets}x{runs}", runs * datasets, checked)
    ns = new_namespace(env, "race")
    manifests = [make_dataset(env) for _ in range(datasets)]
    order = [(d, i) for d in range(datasets) for i in range(runs)]
    rng.shuffle(order)
    order.sort(key=lambda di: di[1])  # per dataset in index order; datasets interleaved
    expected, unlabeled, docs = {}, {}, []
    for d, i in order:
        name = f"d{d}-{i:03d}"
        expected[name] = "Succeeded"
        unlabeled[name] = manifests[d][1]
        docs.append(job_doc(name, manifests[d][0], fake(work)))
    start = time.monotonic()
    with watching(env, ns) as watcher:
        apply_jobs(env, ns, docs)
        check_jobs(env, out, ns, expected, unlabeled, watcher, timeout=60 + 6 * runs)
    out.time("all done s", time.monotonic() - start)
    out.counts["max running per dataset"] = max(watcher.max_running.values(), default=0)
    return out


def find_pod_processes(pod: dict[str, Any]) -> list[Any]:
    """The local processes the node runner started for ``pod`` (their HOSTNAME is the pod's
    ``spec.hostname``, which an Indexed Job sets to ``<job>-<index>``, else its name)."""
    import psutil

    hostname = pod["spec"].get("hostname") or pod["metadata"]["name"]
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.environ().get("HOSTNAME") == hostname and "fakeworker" in " ".join(proc.cmdline()):
                found.append(proc)
        except (psutil.Error, OSError):
            continue
    return found


def worker_kill(env: Env, runs: int, seed: int, shards: int = 3, work: float = 6.0, unlabeled: int = 30) -> Outcome:
    """A PreLabeling job over ``shards`` shards; once one seeded shard's pod has written progress, its worker
    process is SIGKILLed (exit 137: retryable). The Job retries that index; the merged result must hold
    every image exactly once."""
    rng = random.Random(seed)
    out = Outcome("worker-kill", runs, f"PreLabeling x{shards}: the killed index retried (2 pods for it), "
                  "Succeeded, merged result has every image exactly once, 1 Job")  # fmt: skip
    ns = new_namespace(env, "wkill")
    model = prelabel_model(env)
    for run in range(runs):
        manifest, sources = make_dataset(env, unlabeled=unlabeled)
        name = f"shards-{run:02d}"
        index = rng.randrange(shards)
        spec = {"mode": "PreLabeling", "preLabeling": {"model": {"uri": model}}, "resources": {"computeNodes": shards}}
        apply_jobs(env, ns, [job_doc(name, manifest, fake(work), **spec)])
        deadline = time.monotonic() + 90
        victim: list[Any] = []
        while time.monotonic() < deadline and not victim:
            for pod in kget(env, ns, "pods", "-l", f"autolabel.dev/job={name}"):
                ann = pod["metadata"].get("annotations") or {}
                if (
                    ann.get("batch.kubernetes.io/job-completion-index") == str(index)
                    and pod["status"].get("phase") == "Running"
                ):
                    victim = find_pod_processes(pod)
            time.sleep(0.2)
        if not victim:
            out.fail(f"{ns}/{name}: never found shard {index}'s worker process to kill")
            continue
        time.sleep(rng.uniform(0.5, work * 0.6))  # somewhere mid-shard
        killed_at = time.monotonic()
        for proc in victim:
            os.kill(proc.pid, signal.SIGKILL)
        objs = check_jobs(env, out, ns, {name: "Succeeded"}, {name: sources}, None, timeout=180)
        out.time("kill to Succeeded s", time.monotonic() - killed_at)
        pods = kget(env, ns, "pods", "-l", f"autolabel.dev/job={name}")
        for_index = [
            p for p in pods
            if (p["metadata"].get("annotations") or {}).get("batch.kubernetes.io/job-completion-index") == str(index)
        ]  # fmt: skip
        if len(for_index) < 2:
            out.fail(f"{ns}/{name}: {len(for_index)} pod(s) for the killed index {index}, expected a retry")
        exit_codes = [
            ((cs.get("state") or {}).get("terminated") or {}).get("exitCode")
            for p in for_index for cs in p["status"].get("containerStatuses") or []
        ]  # fmt: skip
        if 137 not in exit_codes:
            out.fail(f"{ns}/{name}: index {index}'s pods ended {exit_codes}, none with 137 (the kill)")
        if status_of(objs.get(name)).get("phase") == "Succeeded":
            out.counts["succeeded"] = out.counts.get("succeeded", 0) + 1
    return out


def s3_outage(env: Env, runs: int, seed: int, down: float = 30.0, work: float = 6.0) -> Outcome:
    """MinIO stopped for ``down`` seconds while a job's worker runs (and the operator reads its progress),
    then started again on the same data: the job Succeeds with every image once."""
    rng = random.Random(seed)
    out = Outcome(f"s3-outage {down:g}s", runs, "Succeeded after the outage, every image once, 1 Job, "
                  "no Lease held")  # fmt: skip
    ns = new_namespace(env, "s3out")
    for run in range(runs):
        manifest, sources = make_dataset(env)
        name = f"out-{run:02d}"
        apply_jobs(env, ns, [job_doc(name, manifest, fake(work))])
        if not wait_phase_in(env, ns, name, {"Running"}, 90):
            out.fail(f"{ns}/{name}: never Running")
            continue
        time.sleep(rng.uniform(0.5, work / 2))
        try:
            env.s3.pause()
            time.sleep(down)
        finally:
            env.s3.resume()
        objs = check_jobs(env, out, ns, {name: "Succeeded"}, {name: sources}, None, timeout=240)
        job = next(iter(kget(env, ns, "jobs.batch", "-l", f"autolabel.dev/job={name}")), {})
        retried = int((job.get("status") or {}).get("failed") or 0)
        out.counts["pods retried"] = out.counts.get("pods retried", 0) + retried
        if status_of(objs.get(name)).get("phase") == "Succeeded":
            out.counts["succeeded"] = out.counts.get("succeeded", 0) + 1
    return out


def s3_down(env: Env, runs: int, seed: int, work: float = 4.0, down_for: float = 180.0) -> Outcome:
    """MinIO stopped for good while a job's worker runs: the job must fail (after the worker's retries and
    the Job's one retry per index) naming storage, and once the store is back, what was written before the
    outage is still there and no result claims success (no summary.json, no result.manifest)."""
    rng = random.Random(seed)
    out = Outcome("s3-down", runs, "Failed with a storage reason, progress.json from before kept, "
                  "no summary.json/result.manifest, no Lease held")  # fmt: skip
    ns = new_namespace(env, "s3down")
    for run in range(runs):
        manifest, _ = make_dataset(env)
        name = f"down-{run:02d}"
        apply_jobs(env, ns, [job_doc(name, manifest, fake(work))])
        obj = wait_phase_in(env, ns, name, {"Running"}, 90)
        if not obj:
            out.fail(f"{ns}/{name}: never Running")
            continue
        time.sleep(rng.uniform(0.5, work / 2))
        start = time.monotonic()
        try:
            env.s3.pause()
            objs = wait_final(env, ns, [name], down_for)
            ended = status_of(objs.get(name)).get("phase") in FINAL
        finally:
            env.s3.resume()
        if ended:
            out.time("outage to Failed s", time.monotonic() - start)
        else:
            message = status_of(objs.get(name)).get("message")
            out.fail(f"{ns}/{name}: not ended {down_for:g}s into the outage ({message})")
            objs = wait_final(env, ns, [name], 120)  # what it does once the store is back
            out.time("store back to final s", time.monotonic() - start - down_for)
        final = objs.get(name)
        status = status_of(final)
        reason = condition(final, "Failed").get("reason")
        out.counts[f"reason {reason}"] = out.counts.get(f"reason {reason}", 0) + 1
        if status.get("phase") != "Failed":
            out.fail(f"{ns}/{name}: phase {status.get('phase')} with the store down, expected Failed")
            continue
        if reason != "StorageUnreachable":
            out.fail(f"{ns}/{name}: Failed with reason {reason}, expected StorageUnreachable: {status.get('message')}")
        prefix = f"{manifest.rsplit('/', 1)[0]}/autolabel/{status.get('jobName')}/"
        listed = env.s3.client().list_objects_v2(Bucket=BUCKET, Prefix=s3_key(prefix)).get("Contents", [])
        keys = {o["Key"] for o in listed}
        rel = {k.removeprefix(s3_key(prefix)) for k in keys}
        if "progress.json" not in rel:
            out.fail(f"{ns}/{name}: progress.json written before the outage is gone ({sorted(rel)})")
        if rel & {"summary.json", "result.manifest"}:
            out.fail(f"{ns}/{name}: a failed job left {sorted(rel & {'summary.json', 'result.manifest'})}")
        for lease in kget(env, ns, "leases.coordination.k8s.io"):
            if (lease.get("spec") or {}).get("holderIdentity"):
                out.fail(f"{ns}: Lease {lease['metadata']['name']} still held after {name} failed")
    return out


def wait_phase_in(env: Env, ns: str, name: str, wanted: set[str], timeout: float) -> dict[str, Any] | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        obj = phases(env, ns).get(name)
        if status_of(obj).get("phase") in wanted:
            return obj
        time.sleep(0.3)
    return None


def control_plane_restart(
    env: Env, runs: int, seed: int, component: str, down: float = 5.0, work: float = 6.0, kill: bool = False
) -> Outcome:
    """``component`` (kube-apiserver or etcd) stopped (SIGTERM, or SIGKILL with ``kill``) for ``down``
    seconds and started again (same data and ports) while one job runs and a second waits for its dataset:
    both must finish, one Job each, in order, no Lease held."""
    rng = random.Random(seed)
    out = Outcome(f"{component}-restart", runs, "both jobs Succeeded, 1 Job each, in order, no Lease held, "
                  "every image once")  # fmt: skip
    ns = new_namespace(env, component.split("-")[-1])
    with watching(env, ns) as watcher:
        for run in range(runs):
            manifest, sources = make_dataset(env)
            first, second = f"r{run:02d}-a", f"r{run:02d}-b"
            apply_jobs(env, ns, [job_doc(first, manifest, fake(work)), job_doc(second, manifest, fake(1.0))])
            if not wait_phase_in(env, ns, first, {"Running"}, 90):
                out.fail(f"{ns}/{first}: never Running")
                continue
            time.sleep(rng.uniform(0.2, work / 2))
            out.time("down s", env.cluster.restart(component, down_seconds=down, kill=kill))
            back = time.monotonic()
            check_jobs(env, out, ns, {first: "Succeeded", second: "Succeeded"}, {first: sources, second: sources},
                       watcher, timeout=240)  # fmt: skip
            out.time("back to both done s", time.monotonic() - back)
    return out


def node_runner_restart(env: Env, runs: int, seed: int, down: float = 2.0, work: float = 6.0) -> Outcome:
    """The local node runner SIGKILLed while a job's pod runs (its pod process orphaned, as when a kubelet
    dies) and started again ``down`` seconds later: the new runner kills the orphan and fails the pod as a
    disruption (not counted), the Job runs a new pod, the job Succeeds with every image once."""
    rng = random.Random(seed)
    out = Outcome("node-runner-restart", runs, "Succeeded, 1 Job, the orphaned worker process gone, its pod "
                  "Failed as a disruption (NodeRunnerRestarted), every image once")  # fmt: skip
    ns = new_namespace(env, "runner")
    for run in range(runs):
        manifest, sources = make_dataset(env)
        name = f"orph-{run:02d}"
        apply_jobs(env, ns, [job_doc(name, manifest, fake(work))])
        deadline = time.monotonic() + 90
        victims: list[Any] = []
        while time.monotonic() < deadline and not victims:
            for pod in kget(env, ns, "pods", "-l", f"autolabel.dev/job={name}"):
                if pod["status"].get("phase") == "Running":
                    victims = find_pod_processes(pod)
            time.sleep(0.2)
        if not victims:
            out.fail(f"{ns}/{name}: never found the worker process")
            continue
        time.sleep(rng.uniform(0.2, work / 3))
        env.runner.kill()
        orphans_alive = sum(v.is_running() for v in victims)
        time.sleep(down)
        start = time.monotonic()
        env.runner.start()
        check_jobs(env, out, ns, {name: "Succeeded"}, {name: sources}, None, timeout=180)
        out.time("runner back to Succeeded s", time.monotonic() - start)
        out.counts["orphans alive after the kill"] = out.counts.get("orphans alive after the kill", 0) + orphans_alive
        still = [v.pid for v in victims if v.is_running() and v.status() != "zombie"]
        if still:
            out.fail(f"{ns}/{name}: orphaned worker processes {still} still running after the runner restarted")
        reasons = [p["status"].get("reason") for p in kget(env, ns, "pods", "-l", f"autolabel.dev/job={name}")]
        if "NodeRunnerRestarted" not in reasons:
            out.fail(f"{ns}/{name}: no pod Failed with NodeRunnerRestarted (pod reasons {reasons})")
        job = next(iter(kget(env, ns, "jobs.batch", "-l", f"autolabel.dev/job={name}")), {})
        if int((job.get("status") or {}).get("failed") or 0):
            out.counts["Job failures counted"] = out.counts.get("Job failures counted", 0) + 1
    return out


SCENARIOS: dict[str, Callable[..., Outcome]] = {
    "operator-kills": operator_kills,
    "dataset-race": lambda env, runs, seed: dataset_race(env, runs, seed, datasets=1),
    "dataset-race-5x10": lambda env, runs, seed: dataset_race(env, runs, seed, datasets=5),
    "worker-kill": worker_kill,
    "s3-outage": s3_outage,
    "s3-down": s3_down,
    "apiserver-restart": lambda env, runs, seed: control_plane_restart(env, runs, seed, "kube-apiserver"),
    "etcd-restart": lambda env, runs, seed: control_plane_restart(env, runs, seed, "etcd"),
    "node-runner-restart": node_runner_restart,
}
DESCRIPTIONS = {
    "operator-kills": "the operator SIGKILLed at drawn moments of jobs' lives (runs = kills)",
    "dataset-race": "runs jobs created at once on one dataset",
    "dataset-race-5x10": "5 datasets x runs jobs created at once",
    "worker-kill": "one shard's worker SIGKILLed mid-shard (PreLabeling, 3 shards)",
    "s3-outage": "MinIO stopped 30 s while a job runs",
    "s3-down": "MinIO stopped for good while a job runs (180 s, then back)",
    "apiserver-restart": "kube-apiserver stopped 5 s and restarted mid-run (etcd kept)",
    "etcd-restart": "etcd stopped 5 s and restarted mid-run",
    "node-runner-restart": "the node runner SIGKILLed mid-run and restarted 2 s later",
}
DEFAULT_RUNS = {
    "operator-kills": 50,
    "dataset-race": 50,
    "dataset-race-5x10": 10,
    "worker-kill": 5,
    "s3-outage": 3,
    "s3-down": 2,
    "apiserver-restart": 3,
    "etcd-restart": 3,
    "node-runner-restart": 3,
}
