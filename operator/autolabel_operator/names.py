"""Names and labels of the objects the operator creates: deterministic, so restarts adopt, never duplicate."""

from __future__ import annotations

import hashlib

from autolabel.api import AutoLabelJob, truncated_name

LABEL_PREFIX = "autolabel.dev"
JOB_LABEL = f"{LABEL_PREFIX}/job"  # on child Jobs, Pods, ConfigMaps, Secrets: the AutoLabelJob's name
JOB_UID_LABEL = f"{LABEL_PREFIX}/job-uid"  # ... and its uid: the key of kopf's indexes of children
DATASET_LABEL = f"{LABEL_PREFIX}/dataset"  # on AutoLabelJobs and Leases: hash of the manifest URI
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "autolabel-operator"
COMPONENT_LABEL = "app.kubernetes.io/component"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
MANIFEST_ANNOTATION = f"{LABEL_PREFIX}/manifest"
# Set on the next waiting AutoLabelJob when a dataset lock is released, so that it reconciles at once
# instead of on its next timer tick.
WAKE_ANNOTATION = f"{LABEL_PREFIX}/wake"
# kopf's own bookkeeping annotations (handler progress, last-handled configuration).
KOPF_PREFIX = f"kopf.{LABEL_PREFIX}"


def dataset_key(manifest_uri: str) -> str:
    """A label-safe identity of a dataset: 20 hex chars of the SHA-256 of its manifest URI.

    ``kubectl get alj -l autolabel.dev/dataset=$(printf %s URI | sha256sum | cut -c1-20)`` lists the
    auto-labeling history of a dataset.
    """
    return hashlib.sha256(manifest_uri.encode()).hexdigest()[:20]


def lease_name(manifest_uri: str) -> str:
    return f"autolabel-dataset-{dataset_key(manifest_uri)}"


def child_name(job: AutoLabelJob) -> str:
    """The worker Job, ConfigMap and results folder share the run name (``<name>-<short uid>``)."""
    return job.run_name


def secret_name(job: AutoLabelJob) -> str:
    """The per-job copy of the operator's storage credentials (only when the spec names no secret)."""
    return truncated_name(job.metadata.name, f"-{job.short_uid}-s3")


def child_labels(job: AutoLabelJob, component: str) -> dict[str, str]:
    return {
        JOB_LABEL: job.metadata.name,
        JOB_UID_LABEL: job.metadata.uid or "",
        DATASET_LABEL: dataset_key(job.spec.dataset.manifest),
        MANAGED_BY_LABEL: MANAGED_BY,
        COMPONENT_LABEL: component,
    }


def owner_reference(body: dict) -> dict:
    """The AutoLabelJob as controller owner: the garbage collector deletes children with it."""
    meta = body["metadata"]
    return {
        "apiVersion": body.get("apiVersion", "autolabel.dev/v1alpha1"),
        "kind": body.get("kind", "AutoLabelJob"),
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }
