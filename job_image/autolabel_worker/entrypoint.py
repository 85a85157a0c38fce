"""The worker container's entry point (``autolabel-worker``), also used by ``autolabel run --local``.

The pod's environment, the exit codes (with whether a retry can help) and the files written are the
operator <-> worker contract, defined once in :mod:`autolabel.contract`: ``AUTOLABEL_JOB`` (the
AutoLabelJob as JSON, required), ``AUTOLABEL_OUTPUT``, ``AUTOLABEL_SHARDS`` / ``JOB_COMPLETION_INDEX``,
``AUTOLABEL_TIME_BUDGET_SECONDS`` and the ``AWS_*`` variables of the store.

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

from pydantic import ValidationError

from autolabel.api import AutoLabelJob, results_prefix
from autolabel.contract import (
    PROGRESS_FILE,
    Env,
    ExitCode,
    ProgressDoc,
    Stage,
    format_time,
    parse_progress,
    run_prefix,
    storage_endpoint,
    storage_region,
)
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
        return ExitCode.INTERRUPTED, "Interrupted"
    if isinstance(exc, Terminated):
        return ExitCode.TERMINATED, "Terminated"
    if isinstance(exc, JobConfigError | ValidationError):
        return ExitCode.BAD_JOB, "InvalidJob"
    if getattr(exc, "reason", None) == "StorageUnreachable":  # a check that reached no store (preflight, model)
        return ExitCode.STORAGE_UNREACHABLE, "StorageUnreachable"
    if isinstance(exc, PreflightError):
        return ExitCode.DATA, exc.reason
    if isinstance(exc, ManifestError):
        return ExitCode.DATA, "ManifestInvalid"
    if isinstance(exc, VocError | ImageError):
        return ExitCode.DATA, "DatasetInvalid"
    if isinstance(exc, StorageUnreachable):
        return ExitCode.STORAGE_UNREACHABLE, "StorageUnreachable"
    if isinstance(exc, ObjectNotFound):
        return ExitCode.STORAGE, "ObjectNotFound"
    if isinstance(exc, StorageError):
        return ExitCode.STORAGE, "StorageError"
    reason = getattr(exc, "reason", None)
    if isinstance(reason, str) and reason.isidentifier() and reason[:1].isupper():
        return ExitCode.DATA, reason  # errors from the pipeline that carry their own condition reason
    return ExitCode.INTERNAL, "WorkerError"


def storage_for(job: AutoLabelJob) -> Storage:
    """A Storage for the job: ``spec.storage`` endpoint/region when given, else the environment."""
    return Storage(StorageConfig(endpoint_url=storage_endpoint(job), region=storage_region(job)))


def with_time_budget(job: AutoLabelJob, seconds: int | None) -> AutoLabelJob:
    """The job with ``spec.activeLearning.timeBudgetSeconds`` replaced (validated again)."""
    if seconds is None:
        return job
    doc = job.model_dump(by_alias=True, exclude_none=True, mode="json")
    doc["spec"].setdefault("activeLearning", {})["timeBudgetSeconds"] = seconds
    return AutoLabelJob.model_validate(doc)


def write_failure(
    storage: Storage, output_prefix: str, shard_index: int, shard_count: int, reason: str, error: str
) -> None:
    """``progress.json`` with stage ``failed``, keeping the counts reached; never raises (the run is
    failing already)."""
    try:
        writer = ScopedWriter(storage, run_prefix(output_prefix, shard_index, shard_count))
        previous = _read_progress(storage, writer.uri(PROGRESS_FILE))
        doc = ProgressDoc(stage=Stage.FAILED, updated_at=format_time(), reason=reason, error=error)
        if previous is not None:
            doc = doc.model_copy(
                update={"processed": previous.processed, "total": previous.total, "percent": previous.percent}
            )
        writer.write_bytes(PROGRESS_FILE, doc.to_json())
    except (StorageError, ValueError, OSError) as exc:
        log.error("could not record the failure in progress.json: %s", exc)


def _read_progress(storage: Storage, uri: str) -> ProgressDoc | None:
    try:
        return parse_progress(json.loads(storage.read_bytes(uri)))
    except (StorageError, ValueError):
        return None


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
        if code == ExitCode.INTERNAL and not message.startswith(type(exc).__name__):
            message = f"{type(exc).__name__}: {message}"  # a bug: the exception type helps whoever reads it
        if code == ExitCode.INTERNAL:
            log.exception("job failed with an unexpected error")
        else:
            log.error("job failed (%s): %s", reason, message)
        write_failure(storage, output_prefix, shard_index, shard_count, reason, message)
        if isinstance(exc, SystemExit | GeneratorExit):
            raise
        return code
    log.info("job finished in %.1fs; results in %s", time.monotonic() - started, output_prefix)
    return ExitCode.OK


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


def job_from_env(env: dict[str, str]) -> tuple[AutoLabelJob, str, int, int]:
    """``(job, output prefix, shard index, shard count)`` from the pod's environment."""
    raw = env.get(Env.JOB)
    if not raw:
        raise JobConfigError(f"environment variable {Env.JOB} is not set (the AutoLabelJob as JSON)")
    try:
        doc = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise JobConfigError(f"{Env.JOB} is not valid JSON: {exc}") from exc
    try:
        job = AutoLabelJob.model_validate(doc)
    except ValidationError as exc:
        # A field this worker does not know is an error, not something to drop: the API server prunes
        # unknown fields of real resources, so here it is a typo in a hand-made job or an image older
        # than the operator's CRD, and running without the setting would silently do something else.
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: "
            + (
                "unknown field (is the worker image older than the operator?)"
                if err["type"] == "extra_forbidden"
                else err["msg"]
            )
            for err in exc.errors()
        )
        raise JobConfigError(f"{Env.JOB} is not a valid AutoLabelJob: {problems}") from exc
    if env.get(Env.TIME_BUDGET, "").strip():
        job = with_time_budget(job, _int_env(env, Env.TIME_BUDGET, 0, 10))
    shard_count = _int_env(env, Env.SHARDS, 1, 1)
    shard_index = _int_env(env, Env.SHARD_INDEX, 0, 0)
    if shard_index >= shard_count:
        raise JobConfigError(f"{Env.SHARD_INDEX}={shard_index} is not below {Env.SHARDS}={shard_count}")
    output = env.get(Env.OUTPUT, "").strip() or results_prefix(job)
    return job, output, shard_index, shard_count


def main(argv: Sequence[str] | None = None) -> int:
    """Container entry point; returns (and exits with) the exit code."""
    configure_logging()
    signal.signal(signal.SIGTERM, _raise_terminated)  # record why in progress.json, then exit 143
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return ExitCode.OK
    env = dict(os.environ)
    try:
        job, output, shard_index, shard_count = job_from_env(env)
    except JobConfigError as exc:
        log.error("%s", exc)
        output = env.get(Env.OUTPUT, "").strip()
        if output:  # the operator named the results folder: tell it why, through progress.json
            try:
                shard_count = max(1, int(env.get(Env.SHARDS, "1")))
                shard_index = max(0, int(env.get(Env.SHARD_INDEX, "0")))
            except ValueError:
                shard_count, shard_index = 1, 0
            write_failure(Storage(), output, shard_index, shard_count, "InvalidJob", str(exc))
        return ExitCode.BAD_JOB
    return execute(job, storage_for(job), output, shard_index, shard_count)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
