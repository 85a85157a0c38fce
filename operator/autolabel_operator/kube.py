"""A thin async layer over kubernetes_asyncio's ApiClient: plain dicts in and out (raw JSON, no model
round trip, so timestamps and unknown fields survive a read-modify-write), 404 as None, 409 as
:class:`~.errors.Conflict`, anything else non-2xx as :class:`~.errors.KubeError`."""

from __future__ import annotations

import base64
import json
import os
from typing import Any
from urllib.parse import quote

from kubernetes_asyncio import client, config

from autolabel.api import API_VERSION, PLURAL

from .errors import Conflict, KubeError
from .kueue import WORKLOAD_GROUP_VERSION

USER_AGENT = "autolabel-operator"


async def new_api_client() -> client.ApiClient:
    """In-cluster credentials when running in a pod, else the current kubeconfig ($KUBECONFIG). Its
    requests say ``User-Agent: autolabel-operator`` (kopf's own say ``kopf/<version>``), so the API
    server's audit log and metrics tell the operator's calls apart.

    kubernetes_asyncio's pool of 100 connections is kept: with 32, 1,000 jobs created at once left
    requests waiting for a connection until they timed out (314 time-outs, create->Job p99 389 s against
    34 s; docs/benchmarks.md "Operator at scale"), for 15 MiB less RSS at 100 jobs."""
    if os.environ.get("KUBERNETES_SERVICE_HOST") and not os.environ.get("KUBECONFIG"):
        config.load_incluster_config()
        api = client.ApiClient()
    else:
        api = await config.new_client_from_config(config_file=os.environ.get("KUBECONFIG"))
    api.user_agent = USER_AGENT
    return api


def _path(group_version: str, plural: str, namespace: str, name: str | None = None) -> str:
    base = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
    path = f"{base}/namespaces/{quote(namespace)}/{plural}"
    return f"{path}/{quote(name)}" if name else path


class Kube:
    def __init__(self, api: client.ApiClient) -> None:
        self.api = api

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any] | None:
        response = await self.api.call_api(
            path,
            method,
            query_params=query or [],
            header_params={"Content-Type": content_type, "Accept": "application/json"},
            body=body,
            auth_settings=["BearerToken"],
            _preload_content=False,  # raw JSON; errors come back as responses, not exceptions
            _request_timeout=30,
        )
        async with response:
            data = await response.read()
        if response.status == 404:
            return None
        if response.status == 409:
            raise Conflict(data.decode(errors="replace")[:500])
        if not 200 <= response.status <= 299:
            raise KubeError(response.status, data.decode(errors="replace")[:2000])
        return json.loads(data) if data else {}

    # ------------------------------------------------------------------------------------- Jobs
    async def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self.request("GET", _path("batch/v1", "jobs", namespace, name))

    async def create_job(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self.request("POST", _path("batch/v1", "jobs", namespace), body) or {}

    async def set_job_suspend(self, namespace: str, name: str, suspend: bool) -> None:
        await self.request(
            "PATCH",
            _path("batch/v1", "jobs", namespace, name),
            {"spec": {"suspend": suspend}},
            content_type="application/merge-patch+json",
        )

    async def delete_job(self, namespace: str, name: str) -> None:
        """Delete the Job and, in the background, its pods."""
        await self.request(
            "DELETE",
            _path("batch/v1", "jobs", namespace, name),
            {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"},
        )

    async def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        out = await self.request("GET", _path("v1", "pods", namespace), query=[("labelSelector", selector)])
        return list((out or {}).get("items") or [])

    # ------------------------------------------------------------------------- Kueue Workloads
    async def list_workloads(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        """Kueue's Workloads matching ``selector`` ([] also when Kueue is not installed: 404)."""
        path = _path(WORKLOAD_GROUP_VERSION, "workloads", namespace)
        out = await self.request("GET", path, query=[("labelSelector", selector)])
        return list((out or {}).get("items") or [])

    async def patch_workload(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        path = _path(WORKLOAD_GROUP_VERSION, "workloads", namespace, name)
        await self.request("PATCH", path, patch, content_type="application/merge-patch+json")

    # ------------------------------------------------------------------------ ConfigMaps, Secrets
    async def ensure(self, plural: str, namespace: str, body: dict[str, Any]) -> None:
        """Create a ConfigMap/Secret with a deterministic name, or replace the one there (ours, from an
        earlier pass): a Job created again gets today's job description and credentials, not stale ones."""
        try:
            await self.request("POST", _path("v1", plural, namespace), body)
        except Conflict:
            await self.request("PUT", _path("v1", plural, namespace, body["metadata"]["name"]), body)

    async def read_secret(self, namespace: str, name: str) -> dict[str, str] | None:
        out = await self.request("GET", _path("v1", "secrets", namespace, name))
        if out is None:
            return None
        return {k: base64.b64decode(v).decode() for k, v in (out.get("data") or {}).items()}

    # ---------------------------------------------------------------- Leases (lock.LeaseClient)
    async def get_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self.request("GET", _path("coordination.k8s.io/v1", "leases", namespace, name))

    async def create_lease(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self.request("POST", _path("coordination.k8s.io/v1", "leases", namespace), body) or {}

    async def replace_lease(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        out = await self.request("PUT", _path("coordination.k8s.io/v1", "leases", namespace, name), body)
        if out is None:  # deleted meanwhile: like a lost race
            raise Conflict(f"lease {namespace}/{name} is gone")
        return out

    # ------------------------------------------------------------------------------ AutoLabelJobs
    async def patch_autolabeljob(
        self, namespace: str, name: str, patch: dict[str, Any], status: bool = False
    ) -> dict[str, Any] | None:
        """JSON merge patch of an AutoLabelJob (``status=True``: its status subresource)."""
        path = _path(API_VERSION, PLURAL, namespace, name) + ("/status" if status else "")
        return await self.request("PATCH", path, patch, content_type="application/merge-patch+json")
