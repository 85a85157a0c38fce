"""Kueue's side of a worker Job: its Workload (``kueue.x-k8s.io/v1beta2``), read for the reason a queued
job waits and deactivated while the AutoLabelJob is suspended. Pure functions; the API calls are in
:mod:`.kube`.

Why deactivate rather than suspend the Job: Kueue owns a queued Job's ``spec.suspend``. Its job
reconciler starts (unsuspends) a suspended Job whose Workload is admitted, so suspending the Job alone is
undone within a second. ``Workload.spec.active: false`` is Kueue's own stop: it evicts the Workload
(reason ``Deactivated``), suspends the Job, frees the quota and admits it no more until it is active again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

WORKLOAD_GROUP_VERSION = "kueue.x-k8s.io/v1beta2"
WORKLOAD_JOB_UID_LABEL = "kueue.x-k8s.io/job-uid"
"""Kueue's label on the Workload it creates for a Job: the Job's uid."""
DEACTIVATED_BY_ANNOTATION = "autolabel.dev/deactivated-by"
"""Set on the Workloads the operator deactivates, so a resume never re-activates one an admin deactivated."""
SUSPEND = "spec.suspend"
NOT_EVALUATED = "Kueue has not evaluated the Workload yet"
REFRESH_SECONDS = 30.0
"""How long Kueue's settled reason for a queued job is shown before the Workload is read again: its words
change seldom (quota, a missing queue), and a thousand queued jobs should not read a thousand Workloads
on every reconcile tick. Admission itself needs no read: Kueue unsuspends the Job, which the index sees."""


@dataclass(frozen=True)
class Admission:
    """Where a Workload stands with Kueue, in the words of its conditions."""

    admitted: bool
    reason: str
    message: str

    @property
    def settled(self) -> bool:
        """Kueue has evaluated the Workload and said why it waits (worth showing for a while)."""
        return not self.admitted and self.reason in ("Pending", "Inadmissible") and self.message != NOT_EVALUATED


def workload_selector(job_uid: str) -> str:
    return f"{WORKLOAD_JOB_UID_LABEL}={job_uid}"


def _condition(workload: dict[str, Any], ctype: str) -> dict[str, Any] | None:
    for cond in (workload.get("status") or {}).get("conditions") or []:
        if cond.get("type") == ctype:
            return cond
    return None


def admission(workload: dict[str, Any] | None) -> Admission | None:
    """Kueue's verdict on the Workload (None: no Workload yet). Not admitted: the reason and message of
    its ``QuotaReserved`` condition (e.g. ``Pending``: "couldn't assign flavors to pod set main:
    insufficient unused quota for nvidia.com/gpu ..."; ``Inadmissible``: "LocalQueue q doesn't exist"),
    else of ``Admitted``, else that Kueue has not looked at it yet."""
    if workload is None:
        return None
    admitted = _condition(workload, "Admitted")
    if admitted is not None and admitted.get("status") == "True":
        return Admission(True, "Admitted", admitted.get("message") or "admitted by Kueue")
    if not is_active(workload):
        return Admission(False, "Deactivated", "the Workload is deactivated (spec.active: false)")
    for ctype in ("QuotaReserved", "Admitted"):
        cond = _condition(workload, ctype)
        if cond is not None and cond.get("status") == "False" and cond.get("message"):
            return Admission(False, cond.get("reason") or "Pending", cond["message"])
    return Admission(False, "Pending", NOT_EVALUATED)


def is_active(workload: dict[str, Any]) -> bool:
    return (workload.get("spec") or {}).get("active") is not False


def deactivated_by_us(workload: dict[str, Any]) -> bool:
    annotations = (workload.get("metadata") or {}).get("annotations") or {}
    return not is_active(workload) and annotations.get(DEACTIVATED_BY_ANNOTATION) == SUSPEND


def activation_patch(active: bool) -> dict[str, Any]:
    """Merge patch: deactivate (marked as ours) or re-activate (mark removed) a Workload."""
    return {
        "metadata": {"annotations": {DEACTIVATED_BY_ANNOTATION: None if active else SUSPEND}},
        "spec": {"active": active},
    }


def latest(workloads: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The Job's current Workload (Kueue makes a new one when the old one finished or was replaced)."""
    if not workloads:
        return None
    return max(workloads, key=lambda w: (w.get("metadata") or {}).get("creationTimestamp") or "")
