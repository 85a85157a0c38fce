"""Events of the worker Jobs: when one finishes, its AutoLabelJob is woken at once (annotation
``autolabel.dev/wake``), so the end, the lock release and the next job's start do not wait for timers."""

from __future__ import annotations

from typing import Any

import kopf

from ..names import JOB_LABEL, MANAGED_BY, MANAGED_BY_LABEL
from .runtime import runtime_of


def finished(status: dict[str, Any]) -> bool:
    return any(
        c.get("type") in ("Complete", "Failed") and c.get("status") == "True" for c in status.get("conditions") or []
    )


def register(registry: kopf.OperatorRegistry) -> None:
    @kopf.on.event("batch/v1", "jobs", id="worker-job-events", labels={MANAGED_BY_LABEL: MANAGED_BY}, registry=registry)
    async def worker_job_changed(
        *, type: str | None, body: kopf.Body, labels: kopf.Labels, namespace: str | None, memo: kopf.Memo, **_: Any
    ) -> None:
        # Only live changes: the initial listing (type None) at start needs no wake-ups (resume does it).
        if type != "MODIFIED" or not namespace or not finished(dict(body.get("status") or {})):
            return
        owner = labels.get(JOB_LABEL)
        if owner:
            await runtime_of(memo).wake(namespace, owner)
