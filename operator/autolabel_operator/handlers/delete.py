"""Deletion: free the dataset lock and delete the worker Job with its pods. Results in object storage
are never touched; the ConfigMap and Secret go with the AutoLabelJob (owner references)."""

from __future__ import annotations

from typing import Any

import kopf

from autolabel.api import GROUP, PLURAL, VERSION

from .. import lock
from ..names import lease_name
from .runtime import runtime_of


def register(registry: kopf.OperatorRegistry) -> None:
    @kopf.on.delete(GROUP, VERSION, PLURAL, id="cleanup", backoff=3, registry=registry)
    async def cleanup(*, body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
        worker_jobs: kopf.Index = kwargs["worker_jobs"]
        runtime = runtime_of(memo)
        meta = body["metadata"]
        uid, namespace = meta["uid"], meta["namespace"]
        kube = runtime.reconciler.kube
        async with runtime.lock(uid):
            for job in worker_jobs.get(uid, []):
                await kube.delete_job(namespace, job["metadata"]["name"])
            status = dict(body.get("status") or {})
            if status.get("jobName"):
                await kube.delete_job(namespace, status["jobName"])
            manifest = ((body.get("spec") or {}).get("dataset") or {}).get("manifest")
            if manifest:
                released = await lock.release(kube, namespace, lease_name(manifest), uid)
                if not released:
                    raise kopf.TemporaryError("could not release the dataset lock yet", delay=2)
        runtime.forget(uid)
