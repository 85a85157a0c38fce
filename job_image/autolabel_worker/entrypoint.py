"""The worker container's entry point (``autolabel-worker``), also used by ``autolabel run --local``.

Environment (set by the operator on the pod, see the design brief's worker contract):

- ``AUTOLABEL_JOB`` (required): the AutoLabelJob as JSON (metadata + spec);
- ``AUTOLABEL_OUTPUT``: the results prefix (default ``results_prefix(job)``);
- ``AUTOLABEL_SHARDS`` / ``JOB_COMPLETION_INDEX``: shard count and this pod's index (default 1 / 0);
- ``AUTOLABEL_TIME_BUDGET_SECONDS``: overrides ``spec.activeLearning.timeBudgetSeconds``;
- ``AWS_ENDPOINT_URL``, ``AWS_REGION``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``: the store.

Exit codes tell the operator (and a pod failure policy) what kind of failure it was:

====  ==============================================================  ==========
code  meaning                                                         retryable
====  ==============================================================  ==========
0     success                                                         n/a
1     unexpected error (a bug; see the log)                           maybe
2     the job description is invalid (env or spec)                    no
3     the dataset or model cannot be used (manifest, preconditions,   no
      too many unreadable images, labels.json)
4     object storage unreachable after retries                        yes
5     object storage refused or lacks an object (credentials, 404)    no
130   interrupted (SIGINT)                                            n/a
143   terminated (SIGTERM: pod deleted or suspended, deadline passed) n/a
====  ==============================================================  ==========

On failure ``progress.json`` gets stage ``failed`` with ``error`` (the message) and ``reason``
(a CamelCase condition reason); the operator copies both into the AutoLabelJob's status.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from autolabel.api import AutoLabelJob, results_prefix
from autolabel.manifest import ManifestError, VocError
from autolabel.storage import (
    ObjectNotFound,
    ScopedWriter,
    Storage,
    StorageConfig,
    StorageError,
    StorageUnreachable,
)

log = logging.getLogger("autolabel_worker")

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_BAD_JOB = 2
EXIT_DATA = 3
EXIT_STORAGE_UNREACHABLE = 4
EXIT_STORAGE = 5
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143

MAX_ERROR_CHARS = 4000  # progress.json's error ends up in a Kubernetes condition message

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JobConfigError(ValueError):
    """The job description handed to the worker is unusable."""


class Terminated(BaseException):
    """SIGTERM arrived (the pod is being deleted, suspended or is past its deadline).

    A BaseException, so that ``except Exception`` blocks inside the pipeline do not swallow it.
    """


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated("stopped by SIGTERM (the pod was deleted or suspended, or the Job passed its deadline)")


def configure_logging(level: int = logging.INFO) -> None:
    """Plain log lines on stderr (what ``kubectl logs`` shows)."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=level, format=LOG_FORMAT, datefmt="%Y-%m-%dT%H:%M:%S", stream=sys.stderr)
    else:
        root.setLevel(level)
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def classify_error(exc: BaseException) -> tuple[int, str]:
    """``(exit code, CamelCase reason)`` for an exception raised by a run."""
    from autolabel_worker.images import ImageError
    from autolabel_worker.preflight import PreflightError

    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED, "Interrupted"
    if isinstance(exc, Terminated):
        return EXIT_TERMINATED, "Terminated"
    if isinstance(exc, JobConfigError | ValidationError):
        return EXIT_BAD_JOB, "InvalidJob"
    if isinstance(exc, PreflightError):
        code = EXIT_STORAGE_UNREACHABLE if exc.reason == "StorageUnreachable" else EXIT_DATA
        return code, exc.reason
    if isinstance(exc, ManifestError):
        return EXIT_DATA, "ManifestInvalid"
    if isinstance(exc, VocError | ImageError):
        return EXIT_DATA, "DatasetInvalid"
    if isinstance(exc, StorageUnreachable):
        return EXIT_STORAGE_UNREACHABLE, "StorageUnreachable"
    if isinstance(exc, ObjectNotFound):
        return EXIT_STORAGE, "ObjectNotFound"
    if isinstance(exc, StorageError):
        return EXIT_STORAGE, "StorageError"
    reason = getattr(exc, "reason", None)
    if isinstance(reason, str) and reason.isidentifier() and reason[:1].isupper():
        return EXIT_DATA, reason  # errors from the pipeline that carry their own condition reason
    return EXIT_INTERNAL, "WorkerError"


def storage_for(job: AutoLabelJob) -> Storage:
    """A Storage for the job: ``spec.storage`` endpoint/region when given, else the environment."""
    spec_storage = job.spec.storage
    config = StorageConfig(
        endpoint_url=spec_storage.endpoint if spec_storage else None,
        region=spec_storage.region if spec_storage else None,
    )
    return Storage(config)


def with_time_budget(job: AutoLabelJob, seconds: int | None) -> AutoLabelJob:
    """The job with ``spec.activeLearning.timeBudgetSeconds`` replaced (validated again)."""
    if seconds is None:
        return job
    doc = job.model_dump(by_alias=True, exclude_none=True, mode="json")
    doc["spec"].setdefault("activeLearning", {})["timeBudgetSeconds"] = seconds
    return AutoLabelJob.model_validate(doc)


def _failure_writer(storage: Storage, output_prefix: str, shard_index: int, shard_count: int) -> ScopedWriter:
    writer = ScopedWriter(storage, output_prefix)
    return writer.scoped(f"shards/{shard_index}") if shard_count > 1 else writer


def write_failure(
    storage: Storage, output_prefix: str, shard_index: int, shard_count: int, reason: str, error: str
) -> None:
    """``progress.json`` with stage ``failed``; never raises (the run is failing already)."""
    from autolabel_worker.progress import rfc3339_now

    doc: dict[str, Any] = {
        "stage": "failed",
        "processed": 0,
        "total": 0,
        "percent": 0,
        "updatedAt": rfc3339_now(),
        "reason": reason,
        "error": error if len(error) <= MAX_ERROR_CHARS else error[: MAX_ERROR_CHARS - 1] + "…",
    }
    try:
        writer = _failure_writer(storage, output_prefix, shard_index, shard_count)
        previous = _read_progress(storage, writer)
        if previous:
            doc.update({k: previous[k] for k in ("processed", "total", "percent") if k in previous})
        writer.write_bytes("progress.json", json.dumps(doc).encode())
    except (StorageError, ValueError, OSError) as exc:
        log.error("could not record the failure in progress.json: %s", exc)


def _read_progress(storage: Storage, writer: ScopedWriter) -> dict[str, Any] | None:
    try:
        doc = json.loads(storage.read_bytes(writer.uri("progress.json")))
    except (StorageError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def execute(
    job: AutoLabelJob,
    storage: Storage,
    output_prefix: str | None = None,
    shard_index: int = 0,
    shard_count: int = 1,
) -> int:
    """Run one job (or shard) through the pipeline; returns the exit code. Shared with the CLI."""
    output_prefix = output_prefix or results_prefix(job)
    storage.protect(job.spec.dataset.manifest)  # the product never overwrites its input
    started = time.monotonic()
    log.info(
        "job %s/%s: %s %s, manifest %s, output %s, shard %d/%d",
        job.metadata.namespace or "-",
        job.metadata.name,
        job.spec.mode,
        job.spec.task,
        job.spec.dataset.manifest,
        output_prefix,
        shard_index,
        shard_count,
    )
    try:
        from autolabel_worker.pipeline import run_job  # torch is imported only here

        run_job(job, storage, output_prefix, shard_index, shard_count)
    except BaseException as exc:
        code, reason = classify_error(exc)
        message = str(exc).strip() or type(exc).__name__
        if code == EXIT_INTERNAL and not message.startswith(type(exc).__name__):
            message = f"{type(exc).__name__}: {message}"  # a bug: the exception type helps whoever reads it
        if code == EXIT_INTERNAL:
            log.exception("job failed with an unexpected error")
        else:
            log.error("job failed (%s): %s", reason, message)
        write_failure(storage, output_prefix, shard_index, shard_count, reason, message)
        if isinstance(exc, SystemExit | GeneratorExit):
            raise
        return code
    log.info("job finished in %.1fs; results in %s", time.monotonic() - started, output_prefix)
    return EXIT_OK


def _int_env(env: dict[str, str], name: str, default: int, minimum: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise JobConfigError(f"environment variable {name}={raw!r} is not an integer") from exc
    if value < minimum:
        raise JobConfigError(f"environment variable {name}={value} must be at least {minimum}")
    return value


def _validate_tolerating_newer_fields(doc: Any) -> AutoLabelJob:
    """Validate the job; fields this worker does not know (a newer operator/CRD than this image) are
    dropped with a warning instead of failing the run. Every other error still fails."""
    try:
        return AutoLabelJob.model_validate(doc)
    except ValidationError as exc:
        errors = exc.errors()
        if not errors or any(e["type"] != "extra_forbidden" for e in errors) or not isinstance(doc, dict):
            raise
        for err in errors:
            *parents, last = err["loc"]
            node: Any = doc
            for part in parents:
                node = node[part]
            node.pop(last, None)
        log.warning(
            "ignoring fields this worker does not know (is the image older than the operator?): %s",
            ", ".join(".".join(str(p) for p in e["loc"]) for e in errors),
        )
        return AutoLabelJob.model_validate(doc)


def job_from_env(env: dict[str, str]) -> tuple[AutoLabelJob, str, int, int]:
    """``(job, output prefix, shard index, shard count)`` from the pod's environment."""
    raw = env.get("AUTOLABEL_JOB")
    if not raw:
        raise JobConfigError("environment variable AUTOLABEL_JOB is not set (the AutoLabelJob as JSON)")
    try:
        doc = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise JobConfigError(f"AUTOLABEL_JOB is not valid JSON: {exc}") from exc
    try:
        job = _validate_tolerating_newer_fields(doc)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}" for err in exc.errors()
        )
        raise JobConfigError(f"AUTOLABEL_JOB is not a valid AutoLabelJob: {problems}") from exc
    budget = env.get("AUTOLABEL_TIME_BUDGET_SECONDS", "").strip()
    if budget:
        job = with_time_budget(job, _int_env(env, "AUTOLABEL_TIME_BUDGET_SECONDS", 0, 10))
    shard_count = _int_env(env, "AUTOLABEL_SHARDS", 1, 1)
    shard_index = _int_env(env, "JOB_COMPLETION_INDEX", 0, 0)
    if shard_index >= shard_count:
        raise JobConfigError(f"JOB_COMPLETION_INDEX={shard_index} is not below AUTOLABEL_SHARDS={shard_count}")
    output = env.get("AUTOLABEL_OUTPUT", "").strip() or results_prefix(job)
    return job, output, shard_index, shard_count


def main(argv: Sequence[str] | None = None) -> int:
    """Container entry point; returns (and exits with) the exit code."""
    configure_logging()
    signal.signal(signal.SIGTERM, _raise_terminated)  # record why in progress.json, then exit 143
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return EXIT_OK
    env = dict(os.environ)
    try:
        job, output, shard_index, shard_count = job_from_env(env)
    except JobConfigError as exc:
        log.error("%s", exc)
        output = env.get("AUTOLABEL_OUTPUT", "").strip()
        if output:  # the operator named the results folder: tell it why, through progress.json
            try:
                shard_count = max(1, int(env.get("AUTOLABEL_SHARDS", "1")))
                shard_index = max(0, int(env.get("JOB_COMPLETION_INDEX", "0")))
            except ValueError:
                shard_count, shard_index = 1, 0
            write_failure(Storage(), output, shard_index, shard_count, "InvalidJob", str(exc))
        return EXIT_BAD_JOB
    return execute(job, storage_for(job), output, shard_index, shard_count)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
