"""The objects that run an AutoLabelJob's workers: a ConfigMap with the job, a credentials Secret, a Job.

Pure functions from the AutoLabelJob body and the settings to manifests (dicts), so that every field can be
unit-tested. The pod spec is deliberately plain: one container, command + env (values, ConfigMap and
Secret key references), an emptyDir for /tmp and nothing else, so a local node runner can run it as a
process exactly as a kubelet would run the container.
"""

from __future__ import annotations

import json
from typing import Any

from autolabel.api import AutoLabelJob, results_prefix
from autolabel.contract import (
    CREDENTIAL_KEYS,
    Env,
    non_retryable_exit_codes,
    shard_count,
    storage_region,
    time_budget,
)

from .config import Flavor, Settings, job_endpoint, uses_operator_credentials
from .credentials import JobCredentials
from .names import (
    KOPF_PREFIX,
    KUEUE_QUEUE_LABEL,
    WAKE_ANNOTATION,
    child_labels,
    child_name,
    owner_reference,
    secret_name,
)

JOB_CONFIG_KEY = "job.json"
BACKOFF_LIMIT_PER_INDEX = 1  # one retry of a shard for transient failures (node loss is not counted)
# The annotations that would only bloat the job description the worker reads.
_DROPPED_ANNOTATION_PREFIXES = ("kubectl.kubernetes.io/", "kopf.zalando.org/", f"{KOPF_PREFIX}/", WAKE_ANNOTATION)


def job_description(body: dict[str, Any]) -> dict[str, Any]:
    """What the worker gets in ``AUTOLABEL_JOB``: metadata (name, namespace, uid, labels, annotations) +
    spec exactly as the API server stored it (defaults filled in)."""
    meta = body["metadata"]
    annotations = {
        k: v for k, v in (meta.get("annotations") or {}).items() if not k.startswith(_DROPPED_ANNOTATION_PREFIXES)
    }
    return {
        "apiVersion": body.get("apiVersion", "autolabel.dev/v1alpha1"),
        "kind": "AutoLabelJob",
        "metadata": {
            "name": meta["name"],
            "namespace": meta.get("namespace"),
            "uid": meta.get("uid"),
            "labels": dict(meta.get("labels") or {}),
            "annotations": annotations,
        },
        "spec": body["spec"],
    }


def build_configmap(body: dict[str, Any], job: AutoLabelJob) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": child_name(job),
            "namespace": job.metadata.namespace,
            "labels": child_labels(job, "job-description"),
            "ownerReferences": [owner_reference(body)],
        },
        "data": {JOB_CONFIG_KEY: json.dumps(job_description(body), indent=1, sort_keys=True)},
    }


def issues_job_credentials(job: AutoLabelJob, settings: Settings) -> bool:
    """A job without its own Secret, in a namespace the cluster admin allowed
    (AUTOLABEL_DEFAULT_CREDENTIALS_NAMESPACES), gets scoped temporary credentials issued with the
    operator's account (credentials.py) in a per-job Secret; never the operator's keys."""
    return (
        uses_operator_credentials(job)
        and settings.default_credentials_allowed(job.metadata.namespace or "default")
        and bool(settings.access_key and settings.secret_key)
    )


def credentials_secret_name(job: AutoLabelJob, settings: Settings) -> str | None:
    """The Secret whose keys AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY the pods read, if any."""
    if job.spec.storage is not None and job.spec.storage.secret_ref is not None:
        return job.spec.storage.secret_ref.name
    if issues_job_credentials(job, settings):
        return secret_name(job)
    return None


def build_credentials_secret(body: dict[str, Any], job: AutoLabelJob, credentials: JobCredentials) -> dict[str, Any]:
    """The job's scoped credentials in a Secret owned by the AutoLabelJob: they reach pods only by
    reference, and go away with the job."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": secret_name(job),
            "namespace": job.metadata.namespace,
            "labels": child_labels(job, "storage-credentials"),
            "ownerReferences": [owner_reference(body)],
        },
        "stringData": {
            Env.ACCESS_KEY.value: credentials.access_key,
            Env.SECRET_KEY.value: credentials.secret_key,
            Env.SESSION_TOKEN.value: credentials.session_token,
        },
    }


def _env(job: AutoLabelJob, settings: Settings) -> list[dict[str, Any]]:
    """The pod's environment: the contract's variables (:class:`autolabel.contract.Env`)."""
    env: list[dict[str, Any]] = [
        {"name": Env.JOB, "valueFrom": {"configMapKeyRef": {"name": child_name(job), "key": JOB_CONFIG_KEY}}},
        {"name": Env.OUTPUT, "value": results_prefix(job)},
        {"name": Env.SHARDS, "value": str(shard_count(job))},
        # The root filesystem is read-only: caches go to the /tmp emptyDir.
        {"name": "HOME", "value": "/tmp"},
        {"name": "XDG_CACHE_HOME", "value": "/tmp/.cache"},
        {"name": "TORCH_HOME", "value": "/tmp/.cache/torch"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    # Env.SHARD_INDEX is set by the Job controller itself (Indexed completion mode).
    endpoint = job_endpoint(job, settings)
    if endpoint:
        env.append({"name": Env.ENDPOINT, "value": endpoint})
    region = storage_region(job, settings.s3_region)
    if region:
        env.append({"name": Env.REGION, "value": region})
    secret = credentials_secret_name(job, settings)
    if secret:
        for key in CREDENTIAL_KEYS:
            env.append({"name": key, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}})
        # Temporary credentials (ours, or a user's Secret that has one) come with a session token.
        token = Env.SESSION_TOKEN.value
        env.append({"name": token, "valueFrom": {"secretKeyRef": {"name": secret, "key": token, "optional": True}}})
    budget = time_budget(job, settings.time_budget_seconds)
    if budget:
        env.append({"name": Env.TIME_BUDGET, "value": str(budget)})
    return [{**item, "name": str(item["name"])} for item in env]  # plain str: YAML dumpers reject enums


def build_job(body: dict[str, Any], job: AutoLabelJob, settings: Settings, flavor: Flavor) -> dict[str, Any]:
    """The batch/v1 Job: Indexed (one index per shard; ActiveLearning is a single index), never restarted
    in place, disruptions not counted as failures, suspended only when Kueue is to admit it."""
    name = child_name(job)
    n = shard_count(job)
    labels = child_labels(job, "worker")
    job_labels = dict(labels)
    if job.spec.queue_name:
        job_labels[KUEUE_QUEUE_LABEL] = job.spec.queue_name
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 1000,
            "runAsGroup": 1000,
            "fsGroup": 1000,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [
            {
                "name": "worker",
                "image": settings.worker_image,
                "imagePullPolicy": settings.image_pull_policy,
                "command": list(settings.worker_command),
                "env": _env(job, settings),
                "resources": flavor.pod_resources(),
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "readOnlyRootFilesystem": True,
                    "capabilities": {"drop": ["ALL"]},
                },
                "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
            }
        ],
        "volumes": [{"name": "tmp", "emptyDir": {}}],
    }
    if flavor.node_selector:
        pod_spec["nodeSelector"] = dict(flavor.node_selector)
    if flavor.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in flavor.tolerations]
    if n > 1:
        # Spread shards over nodes, but still run them when there are fewer nodes than shards.
        pod_spec["topologySpreadConstraints"] = [
            {
                "maxSkew": 1,
                "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": {"autolabel.dev/job": job.metadata.name}},
            }
        ]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": job.metadata.namespace,
            "labels": job_labels,
            "ownerReferences": [owner_reference(body)],
        },
        "spec": {
            "completionMode": "Indexed",
            "completions": n,
            "parallelism": n,
            "backoffLimitPerIndex": BACKOFF_LIMIT_PER_INDEX,
            "maxFailedIndexes": 0,
            "podFailurePolicy": {
                "rules": [
                    # Evictions, preemptions, node drains: not the worker's fault, not counted.
                    {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
                    # Deterministic failures: fail the shard at once instead of running it again.
                    {
                        "action": "FailIndex",
                        "onExitCodes": {
                            "containerName": "worker",
                            "operator": "In",
                            "values": non_retryable_exit_codes(),
                        },
                    },
                ]
            },
            "activeDeadlineSeconds": job.spec.active_deadline_seconds,
            "ttlSecondsAfterFinished": job.spec.ttl_seconds_after_finished,
            "suspend": bool(job.spec.queue_name),
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }
