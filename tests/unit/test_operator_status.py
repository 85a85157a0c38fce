"""Conditions and phase derivation from the Job and its pods (progress and result: test_contract.py)."""

from __future__ import annotations

from typing import Any

from autolabel_operator.reconcile import is_active
from autolabel_operator.status import (
    FAILED,
    LOCK_ACQUIRED,
    PRECONDITIONS_MET,
    RUNNING,
    derive,
    get_condition,
    is_terminal,
    observe,
    set_condition,
)

from autolabel.api import Phase


def test_last_transition_time_moves_only_when_status_changes() -> None:
    conds = set_condition([], LOCK_ACQUIRED, "False", "DatasetBusy", "held by a", 1, "T1")
    conds = set_condition(conds, LOCK_ACQUIRED, "False", "DatasetBusy", "held by b", 2, "T2")
    lock = get_condition(conds, LOCK_ACQUIRED)
    assert lock is not None
    assert lock["lastTransitionTime"] == "T1" and lock["message"] == "held by b"
    assert lock["observedGeneration"] == 2
    conds = set_condition(conds, LOCK_ACQUIRED, "True", "Acquired", "ok", 2, "T3")
    relocked = get_condition(conds, LOCK_ACQUIRED)
    assert relocked is not None and relocked["lastTransitionTime"] == "T3"
    conds = set_condition(conds, PRECONDITIONS_MET, "True", "Checked", "ok", 2, "T3")
    assert [c["type"] for c in conds] == [PRECONDITIONS_MET, LOCK_ACQUIRED]  # stable order


def job(conditions: list[dict[str, Any]] | None = None, suspend: bool = False, **status: Any) -> dict:
    return {
        "metadata": {"name": "j"},
        "spec": {"suspend": suspend, "completions": 3},
        "status": {"conditions": conditions or [], **status},
    }


def pod(phase: str, **status: Any) -> dict:
    return {"metadata": {"name": f"p-{phase}"}, "status": {"phase": phase, **status}}


def test_phase_from_job_and_pods() -> None:
    assert derive(observe(None, [])).phase == Phase.PENDING
    assert derive(observe(job(), [pod("Pending")])).phase == Phase.PENDING
    running = derive(observe(job(startTime="S"), [pod("Running"), pod("Pending")]))
    assert running.phase == Phase.RUNNING and "1/3" in running.message
    done = derive(observe(job([{"type": "Complete", "status": "True"}]), []))
    assert done.phase == Phase.SUCCEEDED


def test_unschedulable_pods_are_queued_with_the_schedulers_reason() -> None:
    message = "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."
    unschedulable = pod(
        "Pending",
        conditions=[{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message}],
    )
    derived = derive(observe(job(), [unschedulable]))
    assert derived.phase == Phase.QUEUED and message in derived.message
    assert ("Running", "False", "Unschedulable", derived.message) in derived.conditions


def test_suspended_job_waits_for_kueue() -> None:
    derived = derive(observe(job(suspend=True), []), queue_name="gpu-queue")
    assert derived.phase == Phase.QUEUED
    assert derived.conditions[0][:3] == ("Admitted", "False", "WaitingForAdmission")
    assert "gpu-queue" in derived.message


def test_failed_job_names_reason_and_exit_codes() -> None:
    failed_pod = pod(
        "Failed",
        containerStatuses=[{"state": {"terminated": {"exitCode": 3, "message": "manifest line 4: bad"}}}],
    )
    cond = {"type": "Failed", "status": "True", "reason": "FailedIndexes", "message": "Job has failed indexes"}
    derived = derive(observe(job([cond]), [failed_pod]))
    assert derived.phase == Phase.FAILED
    assert derived.conditions[2][:3] == (FAILED, "True", "FailedIndexes")
    assert "exit code 3: manifest line 4: bad" in derived.message


def test_workers_that_could_not_reach_storage_name_storage_unreachable_not_the_jobs_reason() -> None:
    """With the store down for good the worker's progress.json (its precise reason) cannot be read either;
    its exit code 4 still says what happened."""
    unreachable = pod("Failed", containerStatuses=[{"state": {"terminated": {"exitCode": 4}}}])
    killed = pod("Failed", containerStatuses=[{"state": {"terminated": {"exitCode": 137}}}])
    cond = {"type": "Failed", "status": "True", "reason": "MaxFailedIndexesExceeded", "message": "failed indexes"}
    derived = derive(observe(job([cond]), [killed, unreachable]))
    assert derived.conditions[2][:3] == (FAILED, "True", "StorageUnreachable")
    assert derive(observe(job([cond]), [killed])).conditions[2][:3] == (FAILED, "True", "MaxFailedIndexesExceeded")


def test_terminal_and_active() -> None:
    done = {"conditions": [{"type": "Succeeded", "status": "True"}]}
    assert is_terminal(done) and not is_terminal({}) and not is_terminal(None)
    meta = {"name": "a", "uid": "u", "creationTimestamp": "t"}
    assert is_active({"metadata": meta, "spec": {}, "status": {}})
    assert not is_active({"metadata": meta, "spec": {"suspend": True}})
    assert not is_active({"metadata": meta, "spec": {}, "status": done})
    assert not is_active({"metadata": {**meta, "deletionTimestamp": "t"}, "spec": {}})
    assert RUNNING
