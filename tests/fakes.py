"""In-memory fakes of the operator's API client (``autolabel_operator.kube.Kube`` and the
``autolabel_operator.lock.LeaseClient`` protocol it implements), and an object store served from a
folder (:class:`LocalS3Storage`: the operator reads only s3:// URIs), shared by the unit tests.

Imported as ``from fakes import FakeKube, FakeLeases, LocalS3Storage`` (pytest puts ``tests/`` on ``sys.path``:
``pythonpath`` in pyproject.toml). ``tests/fakeworker.py`` is a different thing: a stand-in worker
process for the integration tests."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from autolabel_operator.errors import Conflict

from autolabel.storage import S3_SCHEME, Storage, StorageConfig, StorageError, is_s3, split_s3


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
        self.workloads: dict[str, dict[str, Any]] = {}  # Kueue's, by name
        self.workload_lists = 0

    async def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.jobs.get(name))

    async def create_job(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        name = body["metadata"]["name"]
        if name in self.jobs:
            raise Conflict("exists")
        self.jobs[name] = copy.deepcopy(body)
        self.jobs[name]["metadata"].setdefault("uid", f"job-uid-{name}")
        return copy.deepcopy(self.jobs[name])

    async def set_job_suspend(self, namespace: str, name: str, suspend: bool) -> None:
        self.jobs[name]["spec"]["suspend"] = suspend
        self.suspends.append((name, suspend))

    async def ensure(self, plural: str, namespace: str, body: dict[str, Any]) -> None:
        self.created[plural].append(body)

    async def list_workloads(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        self.workload_lists += 1
        key, value = selector.split("=", 1)
        return [copy.deepcopy(w) for w in self.workloads.values() if w["metadata"]["labels"].get(key) == value]

    async def patch_workload(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        """A JSON merge patch of ``metadata.annotations`` and ``spec`` (None deletes a key)."""
        workload = self.workloads[name]
        for part, fields in (("annotations", patch.get("metadata", {}).get("annotations", {})),
                             ("spec", patch.get("spec", {}))):  # fmt: skip
            target = workload.setdefault("spec", {}) if part == "spec" else workload["metadata"].setdefault(part, {})
            for key, value in fields.items():
                if value is None:
                    target.pop(key, None)
                else:
                    target[key] = value

    async def read_secret(self, namespace: str, name: str) -> dict[str, str] | None:
        return self.secrets.get(name)


class LocalS3Storage(Storage):
    """``s3://bucket/key`` served from ``<root>/bucket/key`` (no server, no boto3), with S3's meaning: an
    object is a file, never a folder; a listing is every key that starts with the prefix. Errors name the
    s3:// URI, as the real store's do.

    Anything but an s3:// URI goes to :class:`Storage` itself, so it meets the real rule: refused
    (``LocalPathRefused``) with the operator's config (``local_paths=False``). ``asked`` records every URI
    it was asked about, shared by the copies :meth:`for_config` makes (the Reconciler's
    ``storage_factory``)."""

    def __init__(self, root: Path | str, config: StorageConfig | None = None, asked: list[str] | None = None):
        super().__init__(config)
        self.root = Path(root)
        self.asked: list[str] = [] if asked is None else asked
        self.configs: list[StorageConfig] = []
        self._files = Storage()  # plain local files, for the folder behind the s3:// URIs

    def for_config(self, config: StorageConfig) -> LocalS3Storage:
        """A Storage for ``config`` over the same folder (and the same ``asked``)."""
        self.configs.append(config)
        return LocalS3Storage(self.root, config, self.asked)

    def path(self, uri: str) -> Path:
        """The file behind ``s3://bucket/key``."""
        bucket, key = split_s3(uri)
        return self.root / bucket / key

    def write_text(self, uri: str, text: str) -> str:
        """Put an object (a test's setup); returns ``uri``."""
        path = self.path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return uri

    @contextlib.contextmanager
    def _named(self, uri: str) -> Iterator[None]:
        """Errors of the file behind ``uri`` re-raised naming ``uri``."""
        try:
            yield
        except StorageError as exc:
            raise type(exc)(uri, exc.cause) from exc

    def read_bytes(self, uri: str) -> bytes:
        self.asked.append(uri)
        if not is_s3(uri):
            return super().read_bytes(uri)
        with self._named(uri):
            return self._files.read_bytes(str(self.path(uri)))

    def iter_lines(self, uri: str) -> Iterator[str]:
        self.asked.append(uri)
        if not is_s3(uri):
            yield from super().iter_lines(uri)
            return
        with self._named(uri):
            yield from self._files.iter_lines(str(self.path(uri)))

    def exists(self, uri: str) -> bool:
        self.asked.append(uri)
        if not is_s3(uri):
            return super().exists(uri)
        return self.path(uri).is_file()

    def list(self, prefix: str) -> Iterator[str]:
        self.asked.append(prefix)
        if not is_s3(prefix):
            yield from super().list(prefix)
            return
        bucket, key_prefix = split_s3(prefix)
        folder = self.root / bucket
        keys = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()] if folder.is_dir() else []
        yield from (f"{S3_SCHEME}{bucket}/{key}" for key in sorted(keys) if key.startswith(key_prefix))

    def write_bytes(self, uri: str, data: bytes) -> None:
        self.asked.append(uri)
        if not is_s3(uri):
            return super().write_bytes(uri, data)
        self._check_writable(uri)
        with self._named(uri):
            self._files.write_bytes(str(self.path(uri)), data)

    def upload_file(self, local_file: str, uri: str) -> None:
        self.asked.append(uri)
        if not is_s3(uri):
            return super().upload_file(local_file, uri)
        self._check_writable(uri)
        if not os.path.isfile(local_file):
            raise StorageError(local_file, "cannot upload: no such file")
        with self._named(uri):
            self._files.upload_file(local_file, str(self.path(uri)))


def issue_fake_credentials(job: Any, settings: Any) -> Any:
    """A stand-in for the store's STS (autolabel_operator.credentials.issue_job_credentials): temporary
    credentials named after the job, never the operator's keys."""
    from autolabel_operator.credentials import JobCredentials

    return JobCredentials(f"tmp-{job.short_uid}", "tmp-secret", "tmp-token", "2099-01-01T00:00:00Z")
