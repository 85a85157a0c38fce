"""Conditions, phase derivation from the Job and its pods, progress and result."""

from __future__ import annotations

from typing import Any

from autolabel_operator.reconcile import aggregate_progress, aggregate_summaries, is_active
from autolabel_operator.status import (
    FAILED,
    LOCK_ACQUIRED,
    PRECONDITIONS_MET,
    RUNNING,
    derive,
    get_condition,
    is_terminal,
    observe,
    progress_from,
    result_from,
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


def test_terminal_and_active() -> None:
    done = {"conditions": [{"type": "Succeeded", "status": "True"}]}
    assert is_terminal(done) and not is_terminal({}) and not is_terminal(None)
    meta = {"name": "a", "uid": "u", "creationTimestamp": "t"}
    assert is_active({"metadata": meta, "spec": {}, "status": {}})
    assert not is_active({"metadata": meta, "spec": {"suspend": True}})
    assert not is_active({"metadata": meta, "spec": {}, "status": done})
    assert not is_active({"metadata": {**meta, "deletionTimestamp": "t"}, "spec": {}})
    assert RUNNING


def test_progress_and_result_documents() -> None:
    assert progress_from({"stage": "inference", "processed": 812, "total": 1747, "percent": 46}) == {
        "stage": "inference",
        "processed": 812,
        "total": 1747,
        "percent": 46,
    }
    train = progress_from({"stage": "train", "processed": 1, "total": 4})
    assert train is not None and train["percent"] == 25
    assert progress_from("garbage") is None and progress_from({"processed": -1}) is None
    summary = {"total": 10, "autoLabeled": 8, "hardExamples": 2, "estimatedPrecision": 0.96, "x": 1}
    assert result_from(summary, "s3://b/out/") == {
        "uri": "s3://b/out/",
        "total": 10,
        "autoLabeled": 8,
        "hardExamples": 2,
        "estimatedPrecision": 0.96,
    }
    assert result_from(None, "s3://b/out/") == {"uri": "s3://b/out/"}


def test_sharded_progress_and_summaries_aggregate() -> None:
    docs = [
        {"stage": "done", "processed": 10, "total": 10},
        {"stage": "inference", "processed": 5, "total": 10},
        None,
    ]
    agg = aggregate_progress(docs)
    assert agg == {"stage": "inference", "processed": 15, "total": 20, "percent": 75}
    assert aggregate_progress([None, None]) is None
    merged = aggregate_summaries(
        [
            {"total": 10, "autoLabeled": 8, "hardExamples": 2, "estimatedPrecision": 1.0},
            {"total": 10, "autoLabeled": 2, "hardExamples": 8, "estimatedPrecision": 0.5},
        ]
    )
    assert merged == {"total": 20, "autoLabeled": 10, "hardExamples": 10, "estimatedPrecision": 0.9}
    assert aggregate_summaries([{"total": 1}, None]) is None
