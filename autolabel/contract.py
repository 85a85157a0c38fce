"""The contract between the operator and the worker, in one place.

The operator starts worker pods and reads what they write; the worker (and ``tests/fakeworker.py``, which
stands in for it in operator tests) honours the same names. Everything both sides must agree on lives
here, and nowhere else:

- the pod's environment variables (:class:`Env`);
- the worker's exit codes, with a retryable column the Job's ``podFailurePolicy`` is derived from
  (:data:`EXIT_CODES`);
- the stage names of ``progress.json`` (:class:`Stage`);
- the files under a job's results prefix and the shard folders (:func:`shard_prefix`, :func:`run_prefix`);
- parsing ``progress.json`` / ``summary.json`` and merging the shards' (:func:`merge_progress`,
  :func:`merge_summaries`), and turning them into ``status.progress`` / ``status.result``;
- timestamps (:func:`format_time`, :func:`parse_time`);
- resolving the time budget and the store's endpoint and region for a job.

Imports only the standard library, pydantic and :mod:`autolabel.api`.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import IntEnum, StrEnum
from typing import Any, TypeGuard

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from autolabel.api import AutoLabelJob, Mode, Progress, Result

# ----------------------------------------------------------------------------------- environment


class Env(StrEnum):
    """The worker pod's environment variables (set by the operator's Job, read by the worker)."""

    JOB = "AUTOLABEL_JOB"
    """The AutoLabelJob as JSON (metadata + spec); required."""
    OUTPUT = "AUTOLABEL_OUTPUT"
    """The results prefix, ``<output>/<run name>/``; default :func:`autolabel.api.results_prefix`."""
    SHARDS = "AUTOLABEL_SHARDS"
    """How many shards the Job has (default 1)."""
    SHARD_INDEX = "JOB_COMPLETION_INDEX"
    """This pod's shard; set by the Job controller itself (Indexed completion mode)."""
    TIME_BUDGET = "AUTOLABEL_TIME_BUDGET_SECONDS"
    """Training time budget; overrides ``spec.activeLearning.timeBudgetSeconds``."""
    ENDPOINT = "AWS_ENDPOINT_URL"
    REGION = "AWS_REGION"
    ACCESS_KEY = "AWS_ACCESS_KEY_ID"
    SECRET_KEY = "AWS_SECRET_ACCESS_KEY"
    SESSION_TOKEN = "AWS_SESSION_TOKEN"
    """Only with temporary credentials (the operator's scoped ones, or a user's Secret that has one)."""


CREDENTIAL_KEYS = (Env.ACCESS_KEY.value, Env.SECRET_KEY.value)
"""The keys a storage credentials Secret must have (the pod's env reads them by the same names)."""

# ------------------------------------------------------------------------------------ exit codes


class ExitCode(IntEnum):
    OK = 0
    INTERNAL = 1
    BAD_JOB = 2
    DATA = 3
    STORAGE_UNREACHABLE = 4
    STORAGE = 5
    INTERRUPTED = 130
    TERMINATED = 143


@dataclass(frozen=True)
class ExitCodeInfo:
    meaning: str
    retryable: bool | None
    """Whether running the pod again can help; None where the question does not arise."""
    reason: str | None = None
    """The failure reason the code alone names (the operator's fallback when the worker's progress.json,
    which carries the precise reason, cannot be read: object storage down for good)."""


EXIT_CODES: dict[ExitCode, ExitCodeInfo] = {
    ExitCode.OK: ExitCodeInfo("success", None),
    ExitCode.INTERNAL: ExitCodeInfo("unexpected error (a bug; see the log)", True),
    ExitCode.BAD_JOB: ExitCodeInfo("the job description is invalid (environment or spec)", False),
    ExitCode.DATA: ExitCodeInfo(
        "the dataset or model cannot be used (manifest, preconditions, too many unreadable images, labels.json)",
        False,
    ),
    ExitCode.STORAGE_UNREACHABLE: ExitCodeInfo(
        "object storage unreachable after retries", True, reason="StorageUnreachable"
    ),
    ExitCode.STORAGE: ExitCodeInfo("object storage refused or lacks an object (credentials, 404)", False),
    ExitCode.INTERRUPTED: ExitCodeInfo("interrupted (SIGINT)", None),
    ExitCode.TERMINATED: ExitCodeInfo("terminated (SIGTERM: pod deleted or suspended, deadline passed)", None),
}


def exit_code_reason(codes: list[int]) -> str | None:
    """The reason named by the first of ``codes`` (pods' exit codes) that names one, else None."""
    for code in codes:
        try:
            reason = EXIT_CODES[ExitCode(code)].reason
        except ValueError:  # not one of ours (e.g. 137: killed)
            continue
        if reason:
            return reason
    return None


def non_retryable_exit_codes() -> list[int]:
    """Exit codes of failures a retry cannot fix: the Job fails that shard at once."""
    return sorted(int(code) for code, info in EXIT_CODES.items() if info.retryable is False)


# ---------------------------------------------------------------------------------------- stages


class Stage(StrEnum):
    """``progress.json``'s ``stage``, in the order a run goes through them (``failed`` ends any)."""

    PREFLIGHT = "preflight"
    TRAIN = "train"
    CALIBRATE = "calibrate"
    INFERENCE = "inference"
    WRITE = "write"
    DONE = "done"
    FAILED = "failed"


STAGE_ORDER = [s.value for s in Stage if s is not Stage.FAILED]

STOPPED_REASONS = ("Terminated", "Interrupted")
"""Failure reasons that mean the worker was stopped from outside, not that it failed by itself."""

# ----------------------------------------------------------------------------------------- files

PROGRESS_FILE = "progress.json"
SUMMARY_FILE = "summary.json"
RESULT_FILE = "result.manifest"
MODEL_DIR = "model"
ANNOTATIONS_DIR = "annotations"

MAX_ERROR_CHARS = 4000
"""``progress.json``'s ``error`` ends up in a Kubernetes condition message (at most 32 KiB)."""


def shard_count(job: AutoLabelJob) -> int:
    """How many worker pods (shards) a job runs: ``computeNodes`` for PreLabeling, else one."""
    return job.spec.resources.compute_nodes if job.spec.mode == Mode.PRE_LABELING else 1


def shard_prefix(index: int) -> str:
    """The folder of one shard's objects, relative to the job's results prefix."""
    return f"shards/{index}/"


def run_prefix(results_prefix: str, shard_index: int, shard_count: int) -> str:
    """Where one worker pod writes: the results prefix itself, or its shard's folder when sharded."""
    base = results_prefix if results_prefix.endswith("/") else results_prefix + "/"
    return base + shard_prefix(shard_index) if shard_count > 1 else base


def progress_uris(results_prefix: str, shard_count: int) -> list[str]:
    """Every ``progress.json`` a job's pods write (one per shard)."""
    return [run_prefix(results_prefix, i, shard_count) + PROGRESS_FILE for i in range(shard_count)]


def shard_summary_uris(results_prefix: str, shard_count: int) -> list[str]:
    return [run_prefix(results_prefix, i, shard_count) + SUMMARY_FILE for i in range(shard_count)]


# ------------------------------------------------------------------------------------ timestamps


def format_time(moment: datetime | None = None, *, micro: bool = False) -> str:
    """RFC 3339 in UTC: ``2026-11-29T17:34:00Z`` (metav1.Time), or with microseconds (MicroTime)."""
    moment = (moment or datetime.now(UTC)).astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ" if micro else "%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str | None) -> datetime | None:
    """An RFC 3339 timestamp as an aware UTC datetime; None for None or an empty string."""
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)


# ------------------------------------------------------------------------------------- documents


class ProgressDoc(BaseModel):
    """``progress.json``: written by the worker on every stage change and every few seconds."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")

    stage: str | None = None
    processed: int = Field(default=0, ge=0)
    total: int = Field(default=0, ge=0)
    percent: int = Field(default=0, ge=0, le=100)
    updated_at: str | None = None
    error: str | None = None
    reason: str | None = None
    """CamelCase condition reason of a failure (e.g. ``TooManyUnreadableImages``)."""

    def to_json(self) -> bytes:
        doc = self.model_dump(by_alias=True, exclude_none=True, mode="json")
        if self.error is not None and len(self.error) > MAX_ERROR_CHARS:
            doc["error"] = self.error[: MAX_ERROR_CHARS - 1] + "…"
        return json.dumps(doc, ensure_ascii=False).encode()

    def to_status(self) -> Progress:
        """``status.progress`` of the AutoLabelJob."""
        return Progress(stage=self.stage, processed=self.processed, total=self.total, percent=self.percent)

    @property
    def failed(self) -> bool:
        return self.stage == Stage.FAILED


def parse_progress(doc: Any) -> ProgressDoc | None:
    """A ``progress.json`` document (parsed JSON) as a :class:`ProgressDoc`; None when unusable.

    A missing ``percent`` is computed from the counts; values out of range are clamped rather than
    rejected, since a half-written or older worker's document still says something useful."""
    if not isinstance(doc, dict):
        return None
    clean: dict[str, Any] = {k: v for k, v in doc.items() if k not in ("processed", "total", "percent", "stage")}
    if isinstance(doc.get("stage"), str):
        clean["stage"] = doc["stage"]
    for key in ("processed", "total"):
        value = doc.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            clean[key] = value
    percent = doc.get("percent")
    if isinstance(percent, int | float) and not isinstance(percent, bool):
        clean["percent"] = max(0, min(100, int(percent)))
    elif clean.get("total"):
        clean["percent"] = max(0, min(100, int(100 * clean.get("processed", 0) / clean["total"])))
    for key in ("error", "reason", "updatedAt"):
        if key in clean and not isinstance(clean[key], str):
            clean.pop(key)
    try:
        return ProgressDoc.model_validate(clean)
    except ValidationError:
        return None


def merge_progress(docs: Sequence[ProgressDoc | None]) -> ProgressDoc | None:
    """The progress of a job from its shards' (one document per shard, None where a shard has written
    none yet): counts summed, the stage of the slowest shard (``failed`` when any failed), each failed
    shard's error prefixed with its index, the first failure's reason."""
    parts = [d for d in docs if d is not None]
    if not parts:
        return None
    if len(docs) == 1:
        return parts[0]
    stages = [p.stage for p in parts if p.stage]
    stage: str | None = None
    if Stage.FAILED in stages:
        stage = Stage.FAILED.value
    elif stages:
        rank = {s: i for i, s in enumerate(STAGE_ORDER)}
        stage = min(stages, key=lambda s: rank.get(s, -1))
        if len(parts) < len(docs) and stage == Stage.DONE:
            stage = Stage.INFERENCE.value  # a shard that has not started yet is not done
    processed = sum(p.processed for p in parts)
    total = sum(p.total for p in parts)
    failed = [(i, d) for i, d in enumerate(docs) if d is not None and d.error]
    return ProgressDoc(
        stage=stage,
        processed=processed,
        total=total,
        percent=min(100, int(100 * processed / total)) if total else 0,
        error="; ".join(f"shard {i}: {d.error}" for i, d in failed) or None,
        reason=next((d.reason for _, d in failed if d.reason), None),
    )


# The summary's counts that add up over shards, and its lists that concatenate.
_SUMMED = ("total", "autoLabeled", "hardExamples", "convertedImages", "duplicateCount", "annotationWarningCount")
_CONCATENATED = ("unreadableImages", "duplicates")


def merge_summaries(summaries: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One ``summary.json`` from the shards' (in shard order).

    Counts add up, lists concatenate, ``labelCounts`` and ``hardReasons`` add up per key, the duration is
    the slowest shard's (inference too), ``acceptedShare`` is recomputed. ``estimatedPrecision`` is the
    average weighted by each shard's auto-labels (known only when every shard that auto-labeled something
    has one); ``targetVerifiable`` is true only when every shard's is. Other fields (settings such as
    ``targetPrecision``, ``labels``, ``mode``) are the first shard's."""
    merged: dict[str, Any] = dict(summaries[0]) if summaries else {}
    for key in _SUMMED:
        merged[key] = sum(_count(s.get(key)) for s in summaries)
    for key in _CONCATENATED:
        merged[key] = [item for s in summaries for item in (s.get(key) or [])]
    for key in ("labelCounts", "hardReasons"):
        if any(key in s for s in summaries):
            totals: Counter[str] = Counter()
            for s in summaries:
                totals.update({str(k): _count(v) for k, v in (s.get(key) or {}).items()})
            merged[key] = dict(sorted(totals.items(), key=lambda kv: _sort_key(kv[0])))
    duration = max((float(s.get("durationSeconds") or 0.0) for s in summaries), default=0.0)
    merged["durationSeconds"] = duration
    merged["imagesPerSecond"] = round(merged["total"] / duration, 3) if duration > 0 else None
    if "acceptedShare" in merged:
        merged["acceptedShare"] = round(merged["autoLabeled"] / merged["total"], 6) if merged["total"] else None
    if "inferenceSeconds" in merged:  # the shards infer side by side: the slowest one is the wall time
        infer = max((float(s.get("inferenceSeconds") or 0.0) for s in summaries), default=0.0)
        merged["inferenceSeconds"] = infer
        merged["inferenceImagesPerSecond"] = round(merged["total"] / infer, 3) if infer > 0 else None
    # Shards that auto-labeled nothing have no estimate, and need none: they weigh nothing.
    precisions = [(s.get("estimatedPrecision"), _count(s.get("autoLabeled"))) for s in summaries]
    precisions = [(p, n) for p, n in precisions if n > 0]
    known = [(float(p), n) for p, n in precisions if _is_number(p)]
    if merged["autoLabeled"] > 0 and len(known) == len(precisions):
        merged["estimatedPrecision"] = sum(p * n for p, n in known) / merged["autoLabeled"]
    else:
        merged["estimatedPrecision"] = None
    verifiable = [s.get("targetVerifiable") for s in summaries]
    merged["targetVerifiable"] = all(v is True for v in verifiable) if summaries else None
    merged["shards"] = len(summaries)
    merged.pop("shard", None)
    return merged


RESULT_NOTES = 5
"""Notes of summary.json copied into ``status.result.notes`` (the worker puts the most important first)."""
NOTE_CHARS = 500


def summary_to_result(summary: Any, uri: str) -> Result:
    """``status.result`` from a ``summary.json`` document; fields of the wrong type are left out."""
    out = Result(uri=uri)
    if not isinstance(summary, dict):
        return out
    for key, attr in (("total", "total"), ("autoLabeled", "auto_labeled"), ("hardExamples", "hard_examples")):
        value = summary.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            setattr(out, attr, value)
    precision = summary.get("estimatedPrecision")
    if _is_number(precision):
        out.estimated_precision = float(precision)
    verifiable = summary.get("targetVerifiable")
    if isinstance(verifiable, bool):
        out.target_verifiable = verifiable
    notes = summary.get("notes")
    if isinstance(notes, list):
        kept = [note[:NOTE_CHARS] for note in notes if isinstance(note, str) and note][:RESULT_NOTES]
        out.notes = kept or None
    return out


def _count(value: Any) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


def _is_number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _sort_key(key: str) -> tuple[int, int | str]:
    """Numeric keys (hard-example reasons) in numeric order, then the rest by name."""
    return (0, int(key)) if key.isdigit() else (1, key)


# ------------------------------------------------------------------------------------ resolution

DEFAULT_TIME_BUDGET_SECONDS = 600


def time_budget(job: AutoLabelJob, operator_default: int | None = None) -> int | None:
    """The training time budget handed to the worker: the spec's, else the operator's default (None:
    the worker's own default, :data:`DEFAULT_TIME_BUDGET_SECONDS`)."""
    al = job.spec.active_learning
    if al is not None and al.time_budget_seconds:
        return al.time_budget_seconds
    return operator_default


def storage_endpoint(job: AutoLabelJob, default: str | None = None) -> str | None:
    """``spec.storage.endpoint``, else ``default`` (the operator's, or the environment's)."""
    return (job.spec.storage.endpoint if job.spec.storage else None) or default


def storage_region(job: AutoLabelJob, default: str | None = None) -> str | None:
    return (job.spec.storage.region if job.spec.storage else None) or default
