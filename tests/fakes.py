"""In-memory fakes of the operator's API client (``autolabel_operator.kube.Kube`` and the
``autolabel_operator.lock.LeaseClient`` protocol it implements), shared by the unit tests.

Imported as ``from fakes import FakeKube, FakeLeases`` (pytest puts ``tests/`` on ``sys.path``:
``pythonpath`` in pyproject.toml). ``tests/fakeworker.py`` is a different thing: a stand-in worker
process for the integration tests."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

from autolabel_operator.errors import Conflict


class FakeLeases:
    """An API server's Lease store: create = 409 if it exists; replace = 409 unless the
    resourceVersion matches. Yields to the event loop on every call, like a real client."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.version = 0
        self.writes = 0
        self.reads = 0

    async def get_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        await asyncio.sleep(0)
        self.reads += 1
        obj = self.objects.get((namespace, name))
        return copy.deepcopy(obj) if obj else None

    async def create_lease(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(0)
        key = (namespace, body["metadata"]["name"])
        if key in self.objects:
            raise Conflict("exists")
        return self._store(key, body)

    async def replace_lease(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(0)
        current = self.objects.get((namespace, name))
        if current is None or body["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
            raise Conflict("changed")
        return self._store((namespace, name), body)

    def _store(self, key: tuple[str, str], body: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        self.writes += 1
        stored = copy.deepcopy(body)
        stored["metadata"]["resourceVersion"] = str(self.version)
        self.objects[key] = stored
        return copy.deepcopy(stored)

    def holder(self, name: str = "l") -> str | None:
        return self.objects[("ns", name)]["spec"].get("holderIdentity")


class FakeKube(FakeLeases):
    """The calls the reconciler makes, in memory (409 on duplicate creates, like the API server)."""

    def __init__(self) -> None:
        super().__init__()
        self.jobs: dict[str, dict[str, Any]] = {}
        self.created: dict[str, list[dict[str, Any]]] = {"configmaps": [], "secrets": []}
        self.suspends: list[tuple[str, bool]] = []
        self.secrets: dict[str, dict[str, str]] = {}

    async def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.jobs.get(name))

    async def create_job(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        name = body["metadata"]["name"]
        if name in self.jobs:
            raise Conflict("exists")
        self.jobs[name] = copy.deepcopy(body)
        return copy.deepcopy(body)

    async def set_job_suspend(self, namespace: str, name: str, suspend: bool) -> None:
        self.jobs[name]["spec"]["suspend"] = suspend
        self.suspends.append((name, suspend))

    async def ensure(self, plural: str, namespace: str, body: dict[str, Any]) -> None:
        self.created[plural].append(body)

    async def read_secret(self, namespace: str, name: str) -> dict[str, str] | None:
        return self.secrets.get(name)
