"""kopf indexes: child Jobs and Pods by their AutoLabelJob's uid, and active AutoLabelJobs by dataset.

Handlers read these in-memory views instead of listing the API on every reconcile. Jobs and Pods are
watched only with the operator's label (a server-side selector is set at startup)."""

from __future__ import annotations

from typing import Any

import kopf

from autolabel.api import GROUP, PLURAL, VERSION

from ..names import JOB_UID_LABEL, MANAGED_BY, MANAGED_BY_LABEL, dataset_key
from ..reconcile import candidate_of, is_active

MANAGED = {MANAGED_BY_LABEL: MANAGED_BY}


def register(registry: kopf.OperatorRegistry) -> None:
    @kopf.index("batch/v1", "jobs", id="worker_jobs", labels=MANAGED, registry=registry)
    def worker_jobs(*, body: kopf.Body, labels: kopf.Labels, **_: Any) -> dict[str, Any]:
        owner = labels.get(JOB_UID_LABEL)
        if not owner:
            return {}
        return {
            owner: {
                "metadata": {"name": body["metadata"]["name"], "uid": body["metadata"]["uid"]},
                "spec": {k: body["spec"].get(k) for k in ("suspend", "completions", "parallelism")},
                "status": dict(body.get("status") or {}),
            }
        }

    @kopf.index("v1", "pods", id="worker_pods", labels=MANAGED, registry=registry)
    def worker_pods(*, body: kopf.Body, labels: kopf.Labels, **_: Any) -> dict[str, Any]:
        owner = labels.get(JOB_UID_LABEL)
        if not owner:
            return {}
        return {
            owner: {
                "metadata": {"name": body["metadata"]["name"], "labels": dict(labels)},
                "status": dict(body.get("status") or {}),
            }
        }

    @kopf.index(GROUP, VERSION, PLURAL, id="active_by_dataset", registry=registry)
    def active_by_dataset(*, body: kopf.Body, namespace: str | None, **_: Any) -> dict[Any, Any]:
        """(namespace, dataset key) -> the jobs that compete for that dataset's lock."""
        raw = {k: body.get(k) for k in ("metadata", "spec", "status")}
        manifest = ((raw.get("spec") or {}).get("dataset") or {}).get("manifest")
        if not manifest or not is_active(raw):
            return {}
        return {(namespace, dataset_key(manifest)): candidate_of(raw)}
