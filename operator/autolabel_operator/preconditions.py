"""The operator's precondition check (before anything is scheduled) and its access to object storage
(reading the workers' results is :mod:`.results`).

The rules themselves live in :mod:`autolabel.preconditions` (shared with the worker's preflight); here we
only stream the manifest, add the operator's own rules (the spec's URIs are s3://, :func:`local_paths`; the
flavor must exist; the storage policy for jobs without their own credentials, :func:`storage_policy`), turn
storage errors into CamelCase reasons and retry unreachable storage with backoff. The operator's Storage
(:func:`storage_config`) refuses local paths too: it never opens its own filesystem for a job. Storage
calls are synchronous boto3, so they run in a thread (:func:`asyncio.to_thread`), never on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from autolabel.api import AutoLabelJob, Mode
from autolabel.contract import CREDENTIAL_KEYS, storage_region
from autolabel.preconditions import PreconditionFailure, check_manifest, check_model
from autolabel.storage import (
    Storage,
    StorageConfig,
    StorageError,
    StorageUnreachable,
    is_s3,
    split_s3,
    uri_scheme,
)

from .config import Settings, job_endpoint, same_endpoint, uses_operator_credentials

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Credentials:
    access_key: str | None
    secret_key: str | None


def storage_config(job: AutoLabelJob, settings: Settings, credentials: Credentials) -> StorageConfig:
    return StorageConfig(
        endpoint_url=job_endpoint(job, settings),
        region=storage_region(job, settings.s3_region),
        access_key=credentials.access_key,
        secret_key=credentials.secret_key,
        # Few connection retries per call: the operator retries whole checks with its own backoff
        # and must not block a reconcile for minutes.
        connect_retries=2,
        connect_timeout=5.0,
        read_timeout=30.0,
        # A job's objects are in object storage; a local path would be the operator's own filesystem.
        local_paths=False,
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


def _listed(values: tuple[str, ...]) -> str:
    return ", ".join(values) if values else "none"


def spec_uris(job: AutoLabelJob) -> list[tuple[str, str]]:
    """``(field, URI)`` of every object the spec names: the manifest, ``spec.output`` (when set), the
    PreLabeling model and the ActiveLearning pretrained weights (when set)."""
    uris = [("spec.dataset.manifest", job.spec.dataset.manifest)]
    if job.spec.output:  # unset or empty: beside the manifest
        uris.append(("spec.output", job.spec.output))
    if job.spec.pre_labeling is not None:
        uris.append(("spec.preLabeling.model.uri", job.spec.pre_labeling.model.uri))
    if job.spec.active_learning is not None and job.spec.active_learning.pretrained_weights:
        uris.append(("spec.activeLearning.pretrainedWeights", job.spec.active_learning.pretrained_weights))
    return uris


def local_paths(job: AutoLabelJob) -> list[PreconditionFailure]:
    """``SpecInvalid`` for each URI of the spec that is not ``s3://bucket/...``: a local path (the CRD's
    patterns refuse them, but an object may reach the operator without that validation: an older or
    hand-edited CRD). Local paths are for ``autolabel run --local``; the operator never opens one."""
    failures: list[PreconditionFailure] = []
    for field_name, uri in spec_uris(job):
        if is_s3(uri) and _bucket_of(uri):
            continue
        if is_s3(uri):
            what = "has no bucket"
        elif uri_scheme(uri) in (None, "file://"):
            what = "is a local path"
        else:
            what = "is not an s3:// URI"
        failures.append(
            PreconditionFailure(
                "SpecInvalid",
                f"{field_name} {uri!r} {what}: the operator reads and writes only s3://bucket/... objects "
                "(local paths are for `autolabel run --local`)",
            )
        )
    return failures


def _bucket_of(uri: str) -> str | None:
    """The bucket of an s3:// URI, or None when it has none (``s3:///key``)."""
    try:
        return split_s3(uri)[0]
    except ValueError:
        return None


def storage_policy(job: AutoLabelJob, settings: Settings) -> list[PreconditionFailure]:
    """What a job without ``spec.storage.secretRef`` (so, on the operator's credentials) may do; empty for
    a job with its own Secret. Checked before any storage request is made for the job.

    - ``CredentialsRequired``: its namespace is not in ``AUTOLABEL_DEFAULT_CREDENTIALS_NAMESPACES``;
    - ``EndpointNotAllowed``: ``spec.storage.endpoint`` is not the operator's endpoint (the operator would
      sign requests for a host the user chose);
    - ``BucketNotAllowed``: the manifest, ``spec.output``, the model or the pretrained weights is in a
      bucket not in ``AUTOLABEL_ALLOWED_BUCKETS`` (lines of the manifest are checked while it is read).
    """
    if not uses_operator_credentials(job):
        return []
    namespace = job.metadata.namespace or "default"
    own_secret = (
        f"create a Secret with keys {' and '.join(CREDENTIAL_KEYS)} in namespace {namespace!r} and name it "
        "in spec.storage.secretRef"
    )
    if not settings.default_credentials_allowed(namespace):
        return [
            PreconditionFailure(
                "CredentialsRequired",
                f"spec.storage.secretRef is required: namespace {namespace!r} may not use the operator's storage "
                f"credentials (AUTOLABEL_DEFAULT_CREDENTIALS_NAMESPACES); {own_secret}",
            )
        ]
    failures: list[PreconditionFailure] = []
    endpoint = job.spec.storage.endpoint if job.spec.storage else None
    if endpoint and not same_endpoint(endpoint, settings.s3_endpoint):
        failures.append(
            PreconditionFailure(
                "EndpointNotAllowed",
                f"spec.storage.endpoint {endpoint!r} is not the operator's storage endpoint "
                f"({settings.s3_endpoint or 'the AWS S3 default'}), the only one its credentials are sent to; "
                f"to use another endpoint, {own_secret}",
            )
        )
    for field_name, uri in spec_uris(job):
        bucket = _bucket_of(uri) if is_s3(uri) else None
        if bucket is not None and not settings.bucket_allowed(bucket):
            failures.append(
                PreconditionFailure(
                    "BucketNotAllowed",
                    f"{field_name} {uri}: bucket {bucket!r} is not allowed with the operator's storage "
                    f"credentials (AUTOLABEL_ALLOWED_BUCKETS: {_listed(settings.allowed_buckets)}); "
                    f"to use it, {own_secret}",
                )
            )
    return failures


def _bucket_hint(failures: list[PreconditionFailure], settings: Settings) -> list[PreconditionFailure]:
    """The manifest's BucketNotAllowed, with what the job's owner can do about it."""
    hint = (
        f" (AUTOLABEL_ALLOWED_BUCKETS: {_listed(settings.allowed_buckets)}); objects in other buckets need "
        "the job's own credentials in spec.storage.secretRef"
    )
    return [PreconditionFailure(f.reason, f.message + hint) if f.reason == "BucketNotAllowed" else f for f in failures]


async def check(job: AutoLabelJob, settings: Settings, storage: Storage) -> list[PreconditionFailure]:
    """Every failed precondition (empty: all met). Unreachable storage is retried with backoff, then
    reported as ``StorageUnreachable`` naming the object. A job that names a local path
    (:func:`local_paths`) or breaks the storage policy (:func:`storage_policy`) gets no storage request at
    all."""
    # First: their reasons are the ones the status shows.
    policy = [*local_paths(job), *storage_policy(job, settings)]
    failures: list[PreconditionFailure] = list(policy)
    flavor = job.spec.resources.flavor
    if settings.flavors.get(flavor) is None:
        failures.append(
            PreconditionFailure(
                "UnknownFlavor",
                f"spec.resources.flavor {flavor!r} is not in the operator's flavor catalogue "
                f"(known: {', '.join(sorted(settings.flavors.flavors))})",
            )
        )
    if policy:
        return failures
    manifest = job.spec.dataset.manifest
    buckets = settings.buckets_for_operator_credentials() if uses_operator_credentials(job) else None

    def read() -> list[PreconditionFailure]:
        return check_manifest(storage, manifest, job.spec.task, track_duplicates=False, allowed_buckets=buckets)[1]

    read_failures = await _retrying(read, settings.storage_retries, settings.storage_backoff, manifest)
    failures += _bucket_hint(read_failures, settings)
    if job.spec.mode == Mode.PRE_LABELING and job.spec.pre_labeling is not None:
        model_uri = job.spec.pre_labeling.model.uri
        failures += await _retrying(
            lambda: check_model(storage, model_uri, job.spec.task),
            settings.storage_retries,
            settings.storage_backoff,
            model_uri,
        )
    weights = job.spec.active_learning.pretrained_weights if job.spec.active_learning else None
    if job.spec.mode == Mode.ACTIVE_LEARNING and weights:
        failures += await _retrying(
            lambda: check_weights(storage, weights), settings.storage_retries, settings.storage_backoff, weights
        )
    return failures


def check_weights(storage: Storage, uri: str) -> list[PreconditionFailure]:
    """``spec.activeLearning.pretrainedWeights`` names an object that exists (``ModelNotFound``, before the
    lock and the Job; whether its tensors fit the detector only the worker can tell: ``ModelInvalid``)."""
    try:
        if storage.exists(uri):
            return []
    except StorageUnreachable as exc:
        return [PreconditionFailure("StorageUnreachable", str(exc))]
    except (StorageError, ValueError) as exc:
        return [PreconditionFailure("ModelNotFound", f"spec.activeLearning.pretrainedWeights {uri}: {exc}")]
    return [PreconditionFailure("ModelNotFound", f"spec.activeLearning.pretrainedWeights {uri}: no such object")]
