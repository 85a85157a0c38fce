"""The operator's precondition check (before anything is scheduled) and its access to object storage
(reading the workers' results is :mod:`.results`).

The rules themselves live in :mod:`autolabel.preconditions` (shared with the worker's preflight); here we
only stream the manifest, add the operator's own rule (the flavor must exist), turn storage errors into
CamelCase reasons and retry unreachable storage with backoff. Storage calls are synchronous boto3, so
they run in a thread (:func:`asyncio.to_thread`), never on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from autolabel.api import AutoLabelJob, Mode
from autolabel.contract import storage_endpoint, storage_region
from autolabel.preconditions import PreconditionFailure, check_manifest, check_model
from autolabel.storage import Storage, StorageConfig

from .config import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Credentials:
    access_key: str | None
    secret_key: str | None


def storage_config(job: AutoLabelJob, settings: Settings, credentials: Credentials) -> StorageConfig:
    return StorageConfig(
        endpoint_url=storage_endpoint(job, settings.s3_endpoint),
        region=storage_region(job, settings.s3_region),
        access_key=credentials.access_key,
        secret_key=credentials.secret_key,
        # Few connection retries per call: the operator retries whole checks with its own backoff
        # and must not block a reconcile for minutes.
        connect_retries=2,
        connect_timeout=5.0,
        read_timeout=30.0,
    )


@lru_cache(maxsize=64)
def storage_for(config: StorageConfig) -> Storage:
    """One Storage (one boto3 client, thread-safe) per distinct endpoint/credentials."""
    return Storage(config)


async def _retrying(
    fn: Callable[[], list[PreconditionFailure]], attempts: int, backoff: float, what: str
) -> list[PreconditionFailure]:
    """Run a blocking check in a thread; while it reports StorageUnreachable, retry with exponential
    backoff; the last answer counts."""
    delay = backoff
    failures: list[PreconditionFailure] = []
    for attempt in range(1, attempts + 1):
        failures = await asyncio.to_thread(fn)
        if not any(f.reason == "StorageUnreachable" for f in failures) or attempt == attempts:
            return failures
        log.warning("%s: storage unreachable (try %d/%d), retrying in %.1fs", what, attempt, attempts, delay)
        await asyncio.sleep(delay)
        delay *= 2
    return failures


async def check(job: AutoLabelJob, settings: Settings, storage: Storage) -> list[PreconditionFailure]:
    """Every failed precondition (empty: all met). Unreachable storage is retried with backoff, then
    reported as ``StorageUnreachable`` naming the object."""
    failures: list[PreconditionFailure] = []
    flavor = job.spec.resources.flavor
    if settings.flavors.get(flavor) is None:
        failures.append(
            PreconditionFailure(
                "UnknownFlavor",
                f"spec.resources.flavor {flavor!r} is not in the operator's flavor catalogue "
                f"(known: {', '.join(sorted(settings.flavors.flavors))})",
            )
        )
    manifest = job.spec.dataset.manifest
    failures += await _retrying(
        lambda: check_manifest(storage, manifest, job.spec.task, track_duplicates=False)[1],
        settings.storage_retries,
        settings.storage_backoff,
        manifest,
    )
    if job.spec.mode == Mode.PRE_LABELING and job.spec.pre_labeling is not None:
        model_uri = job.spec.pre_labeling.model.uri
        failures += await _retrying(
            lambda: check_model(storage, model_uri, job.spec.task),
            settings.storage_retries,
            settings.storage_backoff,
            model_uri,
        )
    return failures
