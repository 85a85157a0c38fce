"""The reconciler's state machine against an in-memory API (the lock's fake Leases + Jobs, ConfigMaps,
Secrets) and s3:// URIs served from a temporary folder (``fakes.LocalS3Storage``, through the Reconciler's
``storage_factory``): the operator reads object storage only, never a local path."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, cast

import pytest
from autolabel_operator.config import Settings
from autolabel_operator.kube import Kube
from autolabel_operator.lock import Candidate
from autolabel_operator.names import lease_name
from autolabel_operator.reconcile import Children, Reconciler, candidate_of
from fakes import FakeKube, LocalS3Storage, issue_fake_credentials

from autolabel import storage as storage_module
from autolabel.api import AutoLabelJob, results_prefix
from autolabel.storage import LocalPathRefused

MANIFEST = "s3://datasets/ds/data.manifest"


def write_manifest(store: LocalS3Storage, labels: dict[str, int], unlabeled: int) -> str:
    lines = []
    for label, n in labels.items():
        for i in range(n):
            annotation = [{"type": "modelarts/image_classification", "name": label}]
            lines.append(json.dumps({"source": f"{label}{i}.png", "annotation": annotation}))
    lines += [json.dumps({"source": f"u{i}.png"}) for i in range(unlabeled)]
    return store.write_text(MANIFEST, "\n".join(lines) + "\n")


def body(name: str, manifest: str, created: str = "2026-11-27T10:00:00Z", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "autolabel.dev/v1alpha1",
        "kind": "AutoLabelJob",
        "metadata": {
            "name": name,
            "namespace": "ns",
            "uid": f"uid-{name}",
            "generation": 1,
            "creationTimestamp": created,
        },
        "spec": {"task": "ImageClassification", "mode": "ActiveLearning", "dataset": {"manifest": manifest}, **spec},
        "status": {},
    }


def run(reconciler: Reconciler, raw: dict[str, Any], children: Children | None = None) -> Any:
    outcome = asyncio.run(reconciler.reconcile(raw, children or Children(competitors=[candidate_of(raw)])))
    status = raw.setdefault("status", {})
    for key, value in outcome.status.items():
        if value is None:
            status.pop(key, None)
        else:
            status[key] = value
    return outcome


def conditions(raw: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in raw["status"]["conditions"]}


def test_happy_path_creates_one_job_then_succeeds_and_frees_the_lock(
    store: LocalS3Storage, kube: FakeKube, reconciler: Reconciler
) -> None:
    manifest = write_manifest(store, {"cat": 5, "dog": 5}, 3)
    raw = body("a", manifest)
    waiter = body("b", manifest, created="2026-11-27T10:00:05Z")
    competitors = [candidate_of(raw), candidate_of(waiter)]

    first = run(reconciler, raw, Children(competitors=competitors))
    assert raw["status"]["phase"] == "Pending"
    assert conditions(raw)["PreconditionsMet"] == ("True", "Checked")
    assert conditions(raw)["LockAcquired"] == ("True", "Acquired")
    assert list(kube.jobs) == ["a-uida"] and raw["status"]["jobName"] == "a-uida"
    assert [c["metadata"]["name"] for c in kube.created["configmaps"]] == ["a-uida"]
    assert [s["metadata"]["name"] for s in kube.created["secrets"]] == ["a-uida-s3"]
    issued = kube.created["secrets"][0]["stringData"]  # scoped temporary credentials, not the operator's keys
    assert issued["AWS_SESSION_TOKEN"] == "tmp-token"
    assert {issued["AWS_ACCESS_KEY_ID"], issued["AWS_SECRET_ACCESS_KEY"]}.isdisjoint({"k", "s"})
    assert ("Normal", "JobCreated") in [(k, r) for k, r, _ in first.events]
    assert first.labels == {"autolabel.dev/dataset": lease_name(manifest).rsplit("-", 1)[1]}
    assert kube.objects[("ns", lease_name(manifest))]["spec"]["holderIdentity"] == "uid-a"

    # Again with the Job not yet in the index: it is adopted, not created twice.
    run(reconciler, raw, Children(competitors=competitors))
    assert len(kube.jobs) == 1

    # The worker ran: pods running, progress written.
    job = AutoLabelJob.model_validate(raw)
    prefix = store.path(results_prefix(job))
    prefix.mkdir(parents=True)
    (prefix / "progress.json").write_text(json.dumps({"stage": "inference", "processed": 1, "total": 3}))
    child = kube.jobs["a-uida"] | {"status": {"startTime": "2026-11-27T10:00:10Z", "active": 1}}
    pods = [{"metadata": {"name": "p"}, "status": {"phase": "Running"}}]
    run(reconciler, raw, Children(job=child, pods=pods, competitors=competitors))
    assert raw["status"]["phase"] == "Running"
    assert raw["status"]["progress"] == {"stage": "inference", "processed": 1, "total": 3, "percent": 33}
    assert raw["status"]["startTime"] == "2026-11-27T10:00:10Z"

    # Done: result from summary.json, lock released, the next job woken.
    (prefix / "progress.json").write_text(json.dumps({"stage": "done", "processed": 3, "total": 3}))
    (prefix / "summary.json").write_text(
        json.dumps({"total": 3, "autoLabeled": 2, "hardExamples": 1, "estimatedPrecision": 0.97})
    )
    done = child | {
        "status": {
            "startTime": "2026-11-27T10:00:10Z",
            "completionTime": "2026-11-27T10:01:10Z",
            "succeeded": 1,
            "conditions": [{"type": "Complete", "status": "True"}],
        }
    }
    outcome = run(reconciler, raw, Children(job=done, competitors=competitors))
    status = raw["status"]
    assert status["phase"] == "Succeeded"
    assert status["result"] == {
        "uri": results_prefix(job),
        "total": 3,
        "autoLabeled": 2,
        "hardExamples": 1,
        "estimatedPrecision": 0.97,
    }
    assert status["completionTime"] == "2026-11-27T10:01:10Z"
    assert conditions(raw)["Succeeded"] == ("True", "JobComplete")
    assert conditions(raw)["LockAcquired"] == ("False", "Released")
    assert kube.objects[("ns", lease_name(manifest))]["spec"].get("holderIdentity") is None
    assert outcome.wake == ["b"]
    # Terminal is final: another pass changes nothing.
    assert run(reconciler, raw, Children(job=done, competitors=competitors)).status == {}


def test_a_second_job_waits_naming_the_holder(store: LocalS3Storage, kube: FakeKube, reconciler: Reconciler) -> None:
    manifest = write_manifest(store, {"cat": 5, "dog": 5}, 3)
    a, b = body("a", manifest), body("b", manifest, created="2026-11-27T10:00:05Z")
    competitors = [candidate_of(a), candidate_of(b)]
    run(reconciler, a, Children(competitors=competitors))
    run(reconciler, b, Children(competitors=competitors))
    assert b["status"]["phase"] == "Waiting"
    assert conditions(b)["LockAcquired"] == ("False", "DatasetBusy")
    assert "AutoLabelJob a" in b["status"]["message"]
    assert list(kube.jobs) == ["a-uida"]
    reads = kube.reads
    run(reconciler, b, Children(competitors=competitors))
    assert kube.reads == reads  # an earlier job is ahead: later ticks do not even read the Lease
    assert b["status"]["phase"] == "Waiting"


def test_after_a_crash_between_taking_the_lease_and_recording_it_the_holder_goes_on(
    store: LocalS3Storage, kube: FakeKube, reconciler: Reconciler
) -> None:
    """b took the Lease, the operator died before b's status said so, and a (older) became active
    again meanwhile: the restarted operator must not leave both waiting for each other."""
    manifest = write_manifest(store, {"cat": 5, "dog": 5}, 3)
    a, b = body("a", manifest), body("b", manifest, created="2026-11-27T10:00:05Z")
    run(reconciler, b, Children(competitors=[candidate_of(b)]))
    b["status"]["conditions"] = [c for c in b["status"]["conditions"] if c["type"] != "LockAcquired"]
    kube.jobs.clear()
    restarted = Reconciler(reconciler.settings, reconciler.kube, reconciler.storage_factory, issue_fake_credentials)
    both = [candidate_of(a), candidate_of(b)]
    run(restarted, a, Children(competitors=both))
    assert a["status"]["phase"] == "Waiting"  # the Lease names b, an active job
    run(restarted, b, Children(competitors=both))
    assert conditions(b)["LockAcquired"] == ("True", "Acquired") and list(kube.jobs) == ["b-uidb"]


def test_an_older_job_resumed_waits_for_a_younger_holder(
    store: LocalS3Storage, kube: FakeKube, reconciler: Reconciler
) -> None:
    """b took the lock while a was suspended; a resumes: b keeps it (and renews), a waits for b."""
    manifest = write_manifest(store, {"cat": 5, "dog": 5}, 3)
    a, b = body("a", manifest), body("b", manifest, created="2026-11-27T10:00:05Z")
    run(reconciler, b, Children(competitors=[candidate_of(b)]))
    assert conditions(b)["LockAcquired"] == ("True", "Acquired")
    both = [candidate_of(a), candidate_of(b)]
    run(reconciler, a, Children(competitors=both))
    assert a["status"]["phase"] == "Waiting" and "AutoLabelJob b" in a["status"]["message"]
    run(reconciler, b, Children(job=kube.jobs["b-uidb"], competitors=both))
    assert conditions(b)["LockAcquired"] == ("True", "Acquired")
    assert kube.objects[("ns", lease_name(manifest))]["spec"]["holderIdentity"] == "uid-b"


def test_precondition_failure_fails_without_scheduling(
    store: LocalS3Storage, kube: FakeKube, reconciler: Reconciler
) -> None:
    manifest = write_manifest(store, {"cat": 5, "dog": 2}, 3)
    raw = body("a", manifest)
    outcome = run(reconciler, raw)
    assert raw["status"]["phase"] == "Failed"
    assert conditions(raw)["PreconditionsMet"] == ("False", "TooFewImagesPerLabel")
    assert conditions(raw)["Failed"] == ("True", "TooFewImagesPerLabel")
    assert '"dog" has 2 images' in raw["status"]["message"]
    assert kube.jobs == {} and kube.objects == {}
    assert [(k, r) for k, r, _ in outcome.events] == [("Warning", "Failed")]


def test_missing_credentials_secret_fails_naming_it(store: LocalS3Storage, reconciler: Reconciler) -> None:
    manifest = write_manifest(store, {"cat": 5, "dog": 5}, 3)
    raw = body("a", manifest, storage={"secretRef": {"name": "s3-creds"}})
    run(reconciler, raw)
    assert conditions(raw)["PreconditionsMet"] == ("False", "SecretNotFound")
    assert "Secret 's3-creds' not found" in raw["status"]["message"]


def test_a_rotated_credentials_secret_is_read_again(
    store: LocalS3Storage, kube: FakeKube, reconciler: Reconciler
) -> None:
    job = AutoLabelJob.model_validate(body("a", write_manifest(store, {"cat": 5}, 1),
                                           storage={"secretRef": {"name": "s3-creds"}}))  # fmt: skip
    kube.secrets["s3-creds"] = {"AWS_ACCESS_KEY_ID": "old", "AWS_SECRET_ACCESS_KEY": "old-secret"}
    assert asyncio.run(reconciler.credentials(job)).access_key == "old"
    kube.secrets["s3-creds"] = {"AWS_ACCESS_KEY_ID": "new", "AWS_SECRET_ACCESS_KEY": "new-secret"}
    assert asyncio.run(reconciler.credentials(job)).access_key == "new"


def test_suspend_stops_the_job_and_frees_the_lock_then_resume(
    store: LocalS3Storage, kube: FakeKube, reconciler: Reconciler
) -> None:
    manifest = write_manifest(store, {"cat": 5, "dog": 5}, 3)
    raw = body("a", manifest)
    run(reconciler, raw)
    raw["spec"]["suspend"] = True
    waiter = Candidate("2026-11-27T11:00:00Z", "later", "uid-later")
    outcome = run(reconciler, raw, Children(job=kube.jobs["a-uida"], competitors=[waiter]))
    assert raw["status"]["phase"] == "Suspended"
    assert kube.suspends == [("a-uida", True)]
    assert kube.objects[("ns", lease_name(manifest))]["spec"].get("holderIdentity") is None
    assert outcome.wake == ["later"]
    # Later ticks while suspended: no API calls, nobody woken again.
    reads = kube.reads
    outcome = run(reconciler, raw, Children(job=kube.jobs["a-uida"], competitors=[waiter]))
    assert outcome.wake == [] and outcome.status == {} and kube.reads == reads
    raw["spec"]["suspend"] = False
    outcome = run(reconciler, raw, Children(job=kube.jobs["a-uida"], competitors=[candidate_of(raw)]))
    assert kube.suspends[-1] == ("a-uida", False)
    assert conditions(raw)["LockAcquired"] == ("True", "Acquired")
    assert ("Normal", "Resumed") in [(k, r) for k, r, _ in outcome.events]
    assert len(kube.jobs) == 1


def started_job(store: LocalS3Storage, reconciler: Reconciler) -> tuple[dict[str, Any], Path]:
    """Job "a" on a fresh dataset, its worker Job created; and the folder its results go to."""
    raw = body("a", write_manifest(store, {"cat": 5, "dog": 5}, 3))
    run(reconciler, raw)
    prefix = store.path(results_prefix(AutoLabelJob.model_validate(raw)))
    prefix.mkdir(parents=True)
    return raw, prefix


def test_a_vanished_job_with_results_counts_as_succeeded(
    store: LocalS3Storage, kube: FakeKube, reconciler: Reconciler
) -> None:
    """The Job's TTL removed it while the operator was down: the results tell the outcome."""
    raw, prefix = started_job(store, reconciler)
    (prefix / "summary.json").write_text(json.dumps({"total": 3, "autoLabeled": 3, "hardExamples": 0}))
    kube.jobs.clear()
    run(reconciler, raw)
    assert raw["status"]["phase"] == "Succeeded"
    assert kube.jobs == {}  # not recreated


def test_competitor_order_is_creation_time_then_name() -> None:
    a = Candidate("2026-11-27T10:00:00Z", "zeta", "1")
    b = Candidate("2026-11-27T10:00:00Z", "alpha", "2")
    c = Candidate("2026-11-27T09:59:59Z", "omega", "3")
    assert [x.name for x in sorted([a, b, c])] == ["omega", "alpha", "zeta"]


def test_a_failed_worker_reports_its_own_reason_and_words(
    store: LocalS3Storage, kube: FakeKube, reconciler: Reconciler
) -> None:
    raw, prefix = started_job(store, reconciler)
    error = {"stage": "failed", "error": "12 of 13 images unreadable", "reason": "TooManyUnreadableImages"}
    (prefix / "progress.json").write_text(json.dumps(error))
    failed = kube.jobs["a-uida"] | {
        "status": {"conditions": [{"type": "Failed", "status": "True", "reason": "FailedIndexes"}]}
    }
    outcome = run(reconciler, raw, Children(job=failed, competitors=[candidate_of(raw)]))
    assert raw["status"]["phase"] == "Failed"
    assert conditions(raw)["Failed"] == ("True", "TooManyUnreadableImages")
    assert "12 of 13 images unreadable" in raw["status"]["message"]
    assert conditions(raw)["LockAcquired"] == ("False", "Released")
    assert ("Warning", "Failed") in [(k, r) for k, r, _ in outcome.events]


def test_a_stopped_worker_leaves_the_jobs_reason(store: LocalS3Storage, kube: FakeKube, reconciler: Reconciler) -> None:
    """SIGTERM at the Job's deadline: the worker says Terminated, the Job says why."""
    raw, prefix = started_job(store, reconciler)
    (prefix / "progress.json").write_text(json.dumps({"stage": "failed", "error": "SIGTERM", "reason": "Terminated"}))
    failed = kube.jobs["a-uida"] | {
        "status": {"conditions": [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded"}]}
    }
    run(reconciler, raw, Children(job=failed, competitors=[candidate_of(raw)]))
    assert conditions(raw)["Failed"] == ("True", "DeadlineExceeded")
    assert "SIGTERM" in raw["status"]["message"]


def test_a_completed_job_whose_results_cannot_be_read_yet_waits_for_them_holding_the_lock(
    store: LocalS3Storage, kube: FakeKube, reconciler: Reconciler
) -> None:
    """A short storage outage as the Job completes: not Succeeded without counts (and never read again),
    but a visible ResultsRecorded=False, read again with backoff, then Succeeded with its counts."""
    manifest = write_manifest(store, {"cat": 5, "dog": 5}, 3)
    raw = body("a", manifest)
    run(reconciler, raw)
    done = kube.jobs["a-uida"] | {"status": {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}}
    children = Children(job=done, competitors=[candidate_of(raw)])
    run(reconciler, raw, children)  # no summary.json yet
    assert raw["status"]["phase"] == "Running"
    assert conditions(raw)["ResultsRecorded"] == ("False", "ResultsUnreadable")
    assert conditions(raw)["Succeeded"] == ("Unknown", "ResultsNotRecorded")
    assert "summary.json" in raw["status"]["message"] and "result" not in raw["status"]
    assert kube.objects[("ns", lease_name(manifest))]["spec"]["holderIdentity"] == "uid-a"
    prefix = store.path(results_prefix(AutoLabelJob.model_validate(raw)))
    prefix.mkdir(parents=True)
    (prefix / "summary.json").write_text(json.dumps({"total": 3, "autoLabeled": 1, "hardExamples": 2}))
    run(reconciler, raw, children)  # within the backoff: not read yet
    assert raw["status"]["phase"] == "Running"
    reconciler._results_tries["uid-a"] = (1, 0.0)  # the backoff has passed
    run(reconciler, raw, children)
    assert raw["status"]["phase"] == "Succeeded" and raw["status"]["result"]["total"] == 3
    assert conditions(raw)["ResultsRecorded"] == ("True", "Recorded")
    assert conditions(raw)["Succeeded"] == ("True", "JobComplete")
    assert kube.objects[("ns", lease_name(manifest))]["spec"].get("holderIdentity") is None


# ------------------------------------------------------------- local paths are for `autolabel run --local`
def local_files(tmp_path: Path) -> dict[str, str]:
    """A manifest, an output folder and a model on the operator's own filesystem, each one that would
    pass the preconditions if the operator read it."""
    manifest = tmp_path / "local" / "data.manifest"
    manifest.parent.mkdir()
    lines = [json.dumps({"source": f"{c}{i}.png", "annotation": [
        {"type": "modelarts/image_classification", "name": c}]}) for c in ("cat", "dog") for i in range(5)]  # fmt: skip
    manifest.write_text("\n".join([*lines, json.dumps({"source": "u.png"})]) + "\n")
    model = tmp_path / "local" / "model"
    model.mkdir()
    (model / "model.pt").write_bytes(b"torchscript")
    (model / "labels.json").write_text(json.dumps({"labels": ["cat", "dog"], "task": "ImageClassification"}))
    return {"manifest": str(manifest), "output": str(tmp_path / "local" / "out"), "model": f"{model}/"}


LOCAL_SPECS = {
    "spec.dataset.manifest": lambda files: {"dataset": {"manifest": files["manifest"]}},
    "spec.output": lambda files: {"output": files["output"]},
    "spec.preLabeling.model.uri": lambda files: {
        "mode": "PreLabeling",
        "preLabeling": {"model": {"uri": files["model"]}},
        "resources": {"computeNodes": 1},
    },
}


@pytest.mark.parametrize("field", list(LOCAL_SPECS))
def test_a_local_path_in_the_spec_fails_spec_invalid_naming_the_field_and_nothing_is_read(
    field: str, tmp_path: Path, store: LocalS3Storage, kube: FakeKube, reconciler: Reconciler
) -> None:
    """An object that reached the operator without the CRD's patterns (an older or hand-edited CRD)."""
    files = local_files(tmp_path)
    manifest = write_manifest(store, {"cat": 5, "dog": 5}, 3)
    raw = body("a", manifest)
    raw["spec"] |= LOCAL_SPECS[field](files)
    outcome = run(reconciler, raw)
    assert raw["status"]["phase"] == "Failed"
    assert conditions(raw)["PreconditionsMet"] == ("False", "SpecInvalid")
    assert conditions(raw)["Failed"] == ("True", "SpecInvalid")
    message = raw["status"]["message"]
    assert message.startswith(f"{field} ") and "is a local path" in message
    assert "autolabel run --local" in message
    assert store.asked == []  # no storage request at all: neither the local file nor the s3:// manifest
    assert all(not config.local_paths for config in store.configs)  # and its Storage refuses local paths
    assert kube.jobs == {} and kube.objects == {} and kube.created == {"configmaps": [], "secrets": []}
    assert [(k, r) for k, r, _ in outcome.events] == [("Warning", "Failed")]


def test_the_operators_own_storage_never_opens_a_local_file(
    tmp_path: Path, kube: FakeKube, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default storage (``preconditions.storage_for``), with no fake: a local manifest that exists is
    refused by the precondition check, and by the Storage itself were it asked."""
    files = local_files(tmp_path)
    opened: list[str] = []

    def spy(path: Any, *args: Any, **kwargs: Any) -> Any:
        opened.append(str(path))
        raise AssertionError(f"the operator opened {path}")

    monkeypatch.setattr(storage_module, "open", spy, raising=False)
    settings = Settings(access_key="k", secret_key="s", storage_retries=1, storage_backoff=0.01,
                        default_credentials_namespaces=("ns",), allowed_buckets=("*",))  # fmt: skip
    reconciler = Reconciler(settings, cast(Kube, kube))
    raw = body("a", files["manifest"])
    run(reconciler, raw)
    assert conditions(raw)["Failed"] == ("True", "SpecInvalid")
    assert raw["status"]["message"].startswith(f"spec.dataset.manifest {files['manifest']!r} is a local path")
    assert "cat" not in raw["status"]["message"]  # nothing of the file's content
    job = AutoLabelJob.model_validate(raw)
    storage = asyncio.run(reconciler.storage(job))
    assert storage.config.local_paths is False
    for read in (storage.read_bytes, lambda uri: list(storage.iter_lines(uri)), storage.exists):
        with pytest.raises(LocalPathRefused, match="serves s3:// URIs only"):
            read(files["manifest"])
    with pytest.raises(LocalPathRefused):
        storage.write_bytes(files["output"] + "/x.json", b"{}")
    assert opened == [] and not Path(files["output"]).exists()


def test_a_local_output_set_after_the_preconditions_passed_gets_no_worker_job(
    tmp_path: Path, store: LocalS3Storage, kube: FakeKube, reconciler: Reconciler
) -> None:
    """The preconditions are checked once; the spec is checked again before the Job (and its keys) exist."""
    manifest = write_manifest(store, {"cat": 5, "dog": 5}, 3)
    raw = body("a", manifest)
    raw["spec"]["suspend"] = True
    run(reconciler, raw)
    assert conditions(raw)["PreconditionsMet"] == ("True", "Checked") and kube.jobs == {}
    raw["spec"] |= {"suspend": False, "output": local_files(tmp_path)["output"]}
    run(reconciler, raw)
    assert conditions(raw)["Failed"] == ("True", "SpecInvalid")
    assert "spec.output" in raw["status"]["message"] and "autolabel run --local" in raw["status"]["message"]
    assert kube.jobs == {} and kube.created == {"configmaps": [], "secrets": []}
