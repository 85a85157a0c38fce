"""Jobs in a Kueue queue: the status carries Kueue's own reason for waiting, and a suspend goes through the
Workload (Kueue would start a suspended Job whose Workload is admitted), never undoing an admin's
deactivation. The reconciler runs against the in-memory API of ``fakes.FakeKube``."""

from __future__ import annotations

import time
from typing import Any

import pytest
from autolabel_operator import kueue
from autolabel_operator.reconcile import Children, Reconciler, candidate_of
from autolabel_operator.status import Observation, derive
from fakes import FakeKube, LocalS3Storage

from .test_operator_reconcile import body, conditions, run, write_manifest

PENDING_MESSAGE = (
    "couldn't assign flavors to pod set main: insufficient unused quota for nvidia.com/gpu in flavor gpu, 1 more needed"
)


def workload(job_uid: str, *conds: dict[str, Any], active: bool | None = None, name: str = "job-a-1") -> dict:
    spec: dict[str, Any] = {"queueName": "gpu-queue"}
    if active is not None:
        spec["active"] = active
    return {
        "metadata": {
            "name": name,
            "labels": {kueue.WORKLOAD_JOB_UID_LABEL: job_uid},
            "creationTimestamp": "2026-11-27T10:00:01Z",
        },
        "spec": spec,
        "status": {"conditions": list(conds)},
    }


def cond(ctype: str, status: str, reason: str, message: str) -> dict[str, str]:
    return {"type": ctype, "status": status, "reason": reason, "message": message}


def test_admission_reads_kueues_reason_for_a_pending_workload() -> None:
    pending = workload("j", cond("QuotaReserved", "False", "Pending", PENDING_MESSAGE))
    assert kueue.admission(pending) == kueue.Admission(False, "Pending", PENDING_MESSAGE)
    missing_queue = workload("j", cond("QuotaReserved", "False", "Inadmissible", "LocalQueue nope doesn't exist"))
    assert kueue.admission(missing_queue) == kueue.Admission(False, "Inadmissible", "LocalQueue nope doesn't exist")
    admitted = workload("j", cond("QuotaReserved", "True", "QuotaReserved", "ok"),
                        cond("Admitted", "True", "Admitted", "The workload is admitted"))  # fmt: skip
    assert kueue.admission(admitted) == kueue.Admission(True, "Admitted", "The workload is admitted")
    assert kueue.admission(workload("j")) == kueue.Admission(False, "Pending", kueue.NOT_EVALUATED)
    assert kueue.admission(workload("j", active=False)) == kueue.Admission(
        False, "Deactivated", "the Workload is deactivated (spec.active: false)"
    )
    assert kueue.admission(None) is None


def test_the_latest_workload_is_the_jobs_current_one() -> None:
    old, new = workload("j", name="old"), workload("j", name="new")
    old["metadata"]["creationTimestamp"] = "2026-11-27T09:00:00Z"
    assert kueue.latest([new, old]) is new
    assert kueue.latest([]) is None


def test_only_a_workload_deactivated_by_a_suspend_counts_as_ours() -> None:
    ours = workload("j", active=False)
    ours["metadata"]["annotations"] = {kueue.DEACTIVATED_BY_ANNOTATION: kueue.SUSPEND}
    assert kueue.deactivated_by_us(ours)
    assert not kueue.deactivated_by_us(workload("j", active=False))  # an admin's
    assert kueue.activation_patch(True) == {
        "metadata": {"annotations": {kueue.DEACTIVATED_BY_ANNOTATION: None}},
        "spec": {"active": True},
    }


def test_a_queued_jobs_status_message_carries_kueues_own_words() -> None:
    derived = derive(Observation(exists=True, suspended=True), "gpu-queue",
                     kueue.Admission(False, "Pending", PENDING_MESSAGE))  # fmt: skip
    assert derived.phase == "Queued"
    assert (
        derived.message == f"waiting for Kueue to admit the Job to queue gpu-queue (Kueue: Pending: {PENDING_MESSAGE})"
    )


def _queued(store: LocalS3Storage, kube: FakeKube, reconciler: Reconciler) -> tuple[dict[str, Any], str]:
    raw = body("a", write_manifest(store, {"cat": 5, "dog": 5}, 3), queueName="gpu-queue")
    run(reconciler, raw)
    job_uid = kube.jobs["a-uida"]["metadata"]["uid"]
    assert kube.jobs["a-uida"]["spec"]["suspend"] is True
    return raw, job_uid


def test_a_job_waiting_in_a_kueue_queue_shows_kueues_message(
    store: LocalS3Storage, kube: FakeKube, reconciler: Reconciler
) -> None:
    raw, job_uid = _queued(store, kube, reconciler)
    kube.workloads["job-a-1"] = workload(job_uid, cond("QuotaReserved", "False", "Pending", PENDING_MESSAGE))
    run(reconciler, raw, Children(job=kube.jobs["a-uida"], competitors=[candidate_of(raw)]))
    assert raw["status"]["phase"] == "Queued"
    assert PENDING_MESSAGE in raw["status"]["message"]
    assert conditions(raw)["Admitted"] == ("False", "WaitingForAdmission")


def test_suspending_a_kueue_job_deactivates_its_workload_and_resuming_reactivates_it(
    store: LocalS3Storage, kube: FakeKube, reconciler: Reconciler
) -> None:
    raw, job_uid = _queued(store, kube, reconciler)
    admitted = workload(job_uid, cond("Admitted", "True", "Admitted", "The workload is admitted"))
    kube.workloads["job-a-1"] = admitted
    job = kube.jobs["a-uida"]
    job["spec"]["suspend"] = False  # Kueue admitted it and started the Job

    raw["spec"]["suspend"] = True
    outcome = run(reconciler, raw, Children(job=job, competitors=[candidate_of(raw)]))
    assert raw["status"]["phase"] == "Suspended"
    assert kube.workloads["job-a-1"]["spec"]["active"] is False
    assert kube.suspends == []  # Kueue suspends the Job of a deactivated Workload; ours would be undone
    assert ("Normal", "Deactivated") in [(k, r) for k, r, _ in outcome.events]
    # Later ticks while suspended read nothing more.
    lists = kube.workload_lists
    run(reconciler, raw, Children(job=job, competitors=[candidate_of(raw)]))
    assert kube.workload_lists == lists

    job["spec"]["suspend"] = True  # what Kueue does on eviction
    raw["spec"]["suspend"] = False
    outcome = run(reconciler, raw, Children(job=job, competitors=[candidate_of(raw)]))
    assert kube.workloads["job-a-1"]["spec"]["active"] is True
    assert kueue.DEACTIVATED_BY_ANNOTATION not in kube.workloads["job-a-1"]["metadata"]["annotations"]
    assert raw["status"]["phase"] == "Queued"
    assert ("Normal", "Resumed") in [(k, r) for k, r, _ in outcome.events]


def test_a_suspend_before_kueue_made_the_workload_is_retried_on_the_next_pass(
    store: LocalS3Storage, kube: FakeKube, reconciler: Reconciler
) -> None:
    raw, job_uid = _queued(store, kube, reconciler)
    raw["spec"]["suspend"] = True
    run(reconciler, raw, Children(job=kube.jobs["a-uida"], competitors=[candidate_of(raw)]))
    assert "waiting for Kueue to create the Job's Workload" in raw["status"]["message"]
    kube.workloads["job-a-1"] = workload(job_uid)
    run(reconciler, raw, Children(job=kube.jobs["a-uida"], competitors=[candidate_of(raw)]))
    assert kube.workloads["job-a-1"]["spec"]["active"] is False
    assert raw["status"]["message"] == "suspended (spec.suspend); the dataset lock is released"


def test_resuming_never_reactivates_a_workload_an_admin_deactivated(
    store: LocalS3Storage, kube: FakeKube, reconciler: Reconciler
) -> None:
    raw, job_uid = _queued(store, kube, reconciler)
    kube.workloads["job-a-1"] = workload(job_uid, active=False)
    run(reconciler, raw, Children(job=kube.jobs["a-uida"], competitors=[candidate_of(raw)]))
    assert kube.workloads["job-a-1"]["spec"]["active"] is False
    assert "Deactivated" in raw["status"]["message"]


def test_kueues_settled_reason_is_read_again_only_after_the_refresh_interval(
    store: LocalS3Storage, kube: FakeKube, reconciler: Reconciler, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw, job_uid = _queued(store, kube, reconciler)
    kube.workloads["job-a-1"] = workload(job_uid)  # not evaluated yet: read again on the next pass
    children = Children(job=kube.jobs["a-uida"], competitors=[candidate_of(raw)])
    run(reconciler, raw, children)
    kube.workloads["job-a-1"] = workload(job_uid, cond("QuotaReserved", "False", "Pending", PENDING_MESSAGE))
    run(reconciler, raw, children)
    assert PENDING_MESSAGE in raw["status"]["message"]
    lists = kube.workload_lists
    for _ in range(3):
        run(reconciler, raw, children)
    assert kube.workload_lists == lists
    now = time.monotonic()
    monkeypatch.setattr(time, "monotonic", lambda: now + kueue.REFRESH_SECONDS + 1)
    run(reconciler, raw, children)
    assert kube.workload_lists == lists + 1
