"""Status of an AutoLabelJob: conditions (metav1.Condition) and the phase derived from the child Job and
its pods. Pure functions, unit-tested. (``status.progress``/``status.result`` come from the worker's
objects through :mod:`autolabel.contract`.)"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from autolabel.api import Condition, Phase
from autolabel.contract import exit_code_reason, format_time

from .kueue import Admission

# Condition types (logic reads these; `phase` is for display).
PRECONDITIONS_MET = "PreconditionsMet"
LOCK_ACQUIRED = "LockAcquired"
ADMITTED = "Admitted"
RUNNING = "Running"
SUCCEEDED = "Succeeded"
FAILED = "Failed"
RESULTS_RECORDED = "ResultsRecorded"
CONDITION_TYPES = (PRECONDITIONS_MET, LOCK_ACQUIRED, ADMITTED, RUNNING, RESULTS_RECORDED, SUCCEEDED, FAILED)


def get_condition(conditions: list[dict[str, Any]] | None, ctype: str) -> dict[str, Any] | None:
    for cond in conditions or []:
        if cond.get("type") == ctype:
            return cond
    return None


def is_true(conditions: list[dict[str, Any]] | None, ctype: str) -> bool:
    cond = get_condition(conditions, ctype)
    return cond is not None and cond.get("status") == "True"


def set_condition(
    conditions: list[dict[str, Any]] | None,
    ctype: str,
    status: str,
    reason: str,
    message: str,
    generation: int | None,
    now: str | None = None,
) -> list[dict[str, Any]]:
    """A new list with ``ctype`` set; ``lastTransitionTime`` moves only when ``status`` changes.
    Conditions keep the order of :data:`CONDITION_TYPES` so that diffs stay small."""
    old = get_condition(conditions, ctype)
    transition = old["lastTransitionTime"] if old and old.get("status") == status else now or format_time()
    new = Condition(
        type=ctype,
        status=status,  # type: ignore[arg-type]  # checked by the model: True, False or Unknown
        reason=reason,
        message=message[:32768],
        last_transition_time=transition,
        observed_generation=generation,
    ).to_wire()
    merged = {c["type"]: c for c in conditions or []}
    merged[ctype] = new
    order = {t: i for i, t in enumerate(CONDITION_TYPES)}
    return sorted(merged.values(), key=lambda c: (order.get(c["type"], len(order)), c["type"]))


def is_terminal(status: dict[str, Any] | None) -> bool:
    conditions = (status or {}).get("conditions")
    return is_true(conditions, SUCCEEDED) or is_true(conditions, FAILED)


# ------------------------------------------------------------------------------ the child Job + pods


@dataclass(frozen=True)
class Observation:
    """What the Job and its pods say, reduced to what the status needs."""

    exists: bool = False
    suspended: bool = False
    complete: bool = False
    failed: bool = False
    failed_reason: str = ""
    failed_message: str = ""
    start_time: str | None = None
    completion_time: str | None = None
    shards: int = 1
    running: int = 0
    succeeded: int = 0
    unschedulable: str | None = None  # the scheduler's message for a pod it cannot place
    pod_failures: list[str] = field(default_factory=list)
    exit_codes: list[int] = field(default_factory=list)  # of the failed pods' workers


def _job_condition(job: dict[str, Any], ctype: str) -> dict[str, Any] | None:
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("type") == ctype and cond.get("status") == "True":
            return cond
    return None


def observe(job: dict[str, Any] | None, pods: list[dict[str, Any]]) -> Observation:
    if job is None:
        return Observation()
    spec = job.get("spec") or {}
    status = job.get("status") or {}
    complete = _job_condition(job, "Complete")
    failed = _job_condition(job, "Failed")
    unschedulable = None
    running = 0
    failures = []
    exit_codes = []
    for pod in pods:
        pstatus = pod.get("status") or {}
        phase = pstatus.get("phase")
        if phase == "Running":
            running += 1
        if phase == "Pending":
            for cond in pstatus.get("conditions") or []:
                if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
                    unschedulable = cond.get("message") or cond.get("reason") or "Unschedulable"
        if phase == "Failed":
            for cs in pstatus.get("containerStatuses") or []:
                term = (cs.get("state") or {}).get("terminated") or {}
                if term:
                    if isinstance(term.get("exitCode"), int):
                        exit_codes.append(term["exitCode"])
                    failures.append(
                        f"pod {pod['metadata']['name']}: exit code {term.get('exitCode')}"
                        + (f": {term['message'].strip()}" if term.get("message") else "")
                    )
    return Observation(
        exists=True,
        suspended=bool(spec.get("suspend")),
        complete=complete is not None,
        failed=failed is not None,
        failed_reason=(failed or {}).get("reason") or "",
        failed_message=(failed or {}).get("message") or "",
        start_time=status.get("startTime"),
        completion_time=status.get("completionTime"),
        shards=int(spec.get("completions") or 1),
        running=running,
        succeeded=int(status.get("succeeded") or 0),
        unschedulable=unschedulable,
        pod_failures=failures,
        exit_codes=exit_codes,
    )


@dataclass(frozen=True)
class Derived:
    phase: Phase
    conditions: list[tuple[str, str, str, str]]  # (type, status, reason, message)
    message: str


def derive(obs: Observation, queue_name: str | None = None, kueue: Admission | None = None) -> Derived:
    """Phase and conditions of a job that holds its lock and has a Job (or is about to); ``kueue``: what
    Kueue says of the Workload of a suspended Job in a queue (None: not asked, or no Workload yet)."""
    if not obs.exists:
        return Derived(Phase.PENDING, [(ADMITTED, "Unknown", "Creating", "creating the worker Job")], "")
    if obs.complete:
        msg = f"all {obs.shards} shard(s) completed"
        return Derived(
            Phase.SUCCEEDED,
            [
                (RUNNING, "False", "Completed", msg),
                (SUCCEEDED, "True", "JobComplete", msg),
                (FAILED, "False", "JobComplete", msg),
            ],
            msg,
        )
    if obs.failed:
        parts = [f"worker Job failed ({obs.failed_reason or 'Failed'})"]
        if obs.failed_message:
            parts.append(obs.failed_message)
        parts.extend(obs.pod_failures[:3])
        msg = ": ".join(parts[:2]) + ("; " + "; ".join(parts[2:]) if len(parts) > 2 else "")
        # What the workers' exit codes name (StorageUnreachable) says more than the Job's reason
        # (MaxFailedIndexesExceeded), and the worker's own reason may be unreadable (storage down).
        reason = exit_code_reason(obs.exit_codes) or obs.failed_reason or "JobFailed"
        return Derived(
            Phase.FAILED,
            [
                (RUNNING, "False", reason, msg),
                (SUCCEEDED, "False", reason, msg),
                (FAILED, "True", reason, msg),
            ],
            msg,
        )
    if obs.suspended:
        msg = (
            f"waiting for Kueue to admit the Job to queue {queue_name}" if queue_name else "the worker Job is suspended"
        )
        if queue_name and kueue is not None:
            msg += f" (Kueue: {kueue.reason}: {kueue.message})"
        return Derived(
            Phase.QUEUED,
            [(ADMITTED, "False", "WaitingForAdmission", msg), (RUNNING, "False", "NotAdmitted", msg)],
            msg,
        )
    admitted = (ADMITTED, "True", "Admitted" if queue_name else "JobCreated", "the worker Job may run")
    if obs.running > 0:
        msg = f"{obs.running}/{obs.shards} worker pod(s) running, {obs.succeeded} done"
        return Derived(Phase.RUNNING, [admitted, (RUNNING, "True", "PodsRunning", msg)], msg)
    if obs.unschedulable:
        msg = f"worker pods cannot be scheduled: {obs.unschedulable}"
        return Derived(Phase.QUEUED, [admitted, (RUNNING, "False", "Unschedulable", msg)], msg)
    if obs.succeeded > 0:
        msg = f"{obs.succeeded}/{obs.shards} shard(s) done"
        return Derived(Phase.RUNNING, [admitted, (RUNNING, "True", "PodsRunning", msg)], msg)
    msg = "waiting for worker pods to start"
    return Derived(Phase.PENDING, [admitted, (RUNNING, "False", "PodsPending", msg)], msg)
