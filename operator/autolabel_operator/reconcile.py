"""One reconciliation of an AutoLabelJob: from what is (the resource, its Job and pods from kopf's indexes,
the dataset Lease, the worker's objects in storage) to what should be, plus the status that says so.

Called by the create/resume/update handlers and by the timer; idempotent, so being called twice, or
after a crash at any line, converges to the same state: names are deterministic, creation is
409-tolerant, the lock is compare-and-swap, and terminal states are final.
"""

from __future__ import annotations

import copy
import logging
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from autolabel.api import AutoLabelJob, Phase, results_prefix
from autolabel.storage import Storage

from . import lock, metrics
from .config import Settings
from .jobs import build_configmap, build_credentials_secret, build_job, shards
from .kube import Kube
from .lock import Candidate, Conflict
from .names import DATASET_LABEL, child_name, dataset_key, lease_name
from .preconditions import Credentials, read_json, storage_config, storage_for
from .preconditions import check as check_preconditions
from .status import (
    FAILED,
    LOCK_ACQUIRED,
    PRECONDITIONS_MET,
    RUNNING,
    SUCCEEDED,
    derive,
    get_condition,
    is_terminal,
    is_true,
    now_rfc3339,
    observe,
    progress_from,
    result_from,
    set_condition,
)

log = logging.getLogger(__name__)

STAGES = ("preflight", "train", "calibrate", "inference", "write", "done")
WORKER_STOPPED_REASONS = ("Terminated", "Interrupted")  # the worker was stopped, it did not fail by itself


@dataclass
class Children:
    """What kopf's indexes know about the job's world."""

    job: dict[str, Any] | None = None
    pods: list[dict[str, Any]] = field(default_factory=list)
    competitors: list[Candidate] = field(default_factory=list)  # active jobs of the same dataset


@dataclass
class Outcome:
    status: dict[str, Any]  # the changed status fields (value None removes a field)
    labels: dict[str, str]  # metadata labels to set
    events: list[tuple[str, str, str]]  # (type, reason, message)
    phase: str | None
    wake: list[str] = field(default_factory=list)  # AutoLabelJobs (same namespace) to reconcile now


class SpecError(ValueError):
    pass


def candidate_of(body: dict[str, Any]) -> Candidate:
    meta = body["metadata"]
    return Candidate(meta.get("creationTimestamp") or "", meta["name"], meta["uid"])


def is_active(body: dict[str, Any]) -> bool:
    """Competes for its dataset's lock: not finished, not suspended, not being deleted."""
    return (
        not is_terminal(body.get("status"))
        and not (body.get("spec") or {}).get("suspend")
        and not (body.get("metadata") or {}).get("deletionTimestamp")
    )


def next_waiter(competitors: list[Candidate], me: str) -> list[str]:
    """The name of the job that should take the lock after ``me`` (empty when none waits)."""
    others = sorted(c for c in competitors if c.uid != me)
    return [others[0].name] if others else []


def aggregate_progress(docs: list[Any]) -> dict[str, Any] | None:
    """Progress of a sharded job: processed/total summed, the stage of the slowest shard."""
    parts = [p for p in (progress_from(d) for d in docs) if p]
    if not parts:
        return None
    if len(docs) == 1:
        return parts[0]
    stage_rank = {s: i for i, s in enumerate(STAGES)}
    stages = [p.get("stage") for p in parts if p.get("stage")]
    stage = "failed" if "failed" in stages else None
    if stage is None and stages:
        stage = min(stages, key=lambda s: stage_rank.get(str(s), -1))
    if len(parts) < len(docs) and stage == "done":
        stage = "inference"
    processed = sum(p.get("processed", 0) for p in parts)
    total = sum(p.get("total", 0) for p in parts)
    out: dict[str, Any] = {"processed": processed, "total": total}
    if stage:
        out["stage"] = stage
    out["percent"] = int(100 * processed / total) if total else 0
    return out


def aggregate_summaries(docs: list[Any]) -> dict[str, Any] | None:
    """The shards' summaries merged, for when no top-level summary.json was written."""
    parts = [d for d in docs if isinstance(d, dict)]
    if not parts or len(parts) < len(docs):
        return None
    out: dict[str, Any] = {}
    for key in ("total", "autoLabeled", "hardExamples"):
        values = [p.get(key) for p in parts]
        if all(isinstance(v, int) for v in values):
            out[key] = sum(v for v in values if isinstance(v, int))
    pairs = [(p.get("estimatedPrecision"), p.get("autoLabeled")) for p in parts]
    weighted: list[tuple[float, int]] = [
        (float(e), int(w)) for e, w in pairs if isinstance(e, int | float) and isinstance(w, int)
    ]
    total_weight: int = sum(w for _, w in weighted)
    if len(weighted) == len(parts) and total_weight > 0:
        out["estimatedPrecision"] = sum(e * w for e, w in weighted) / total_weight
    verifiable = [p.get("targetVerifiable") for p in parts]
    if all(isinstance(v, bool) for v in verifiable):
        out["targetVerifiable"] = all(verifiable)
    return out


class StatusBuilder:
    """The new status, built from the old one; :meth:`finish` gives the diff and the events."""

    def __init__(self, old: dict[str, Any], generation: int | None) -> None:
        self.old = old
        self.new = copy.deepcopy(old)
        self.generation = generation
        self.now = now_rfc3339()
        self.events: list[tuple[str, str, str]] = []
        self.labels: dict[str, str] = {}
        self.wake: list[str] = []

    @property
    def conditions(self) -> list[dict[str, Any]]:
        return list(self.new.get("conditions") or [])

    def cond(self, ctype: str, status: str, reason: str, message: str) -> None:
        self.new["conditions"] = set_condition(
            self.new.get("conditions"), ctype, status, reason, message, self.generation, self.now
        )

    def finish(self, phase: Phase | str | None, message: str | None) -> Outcome:
        new, old = self.new, self.old
        if phase is not None:
            new["phase"] = str(phase)
        if message is not None:
            new["message"] = message
        new["observedGeneration"] = self.generation
        if new.get("phase") != old.get("phase"):
            kind = "Warning" if new.get("phase") == Phase.FAILED else "Normal"
            self.events.append((kind, str(new.get("phase")), new.get("message") or ""))
        changed: dict[str, Any] = {k: v for k, v in new.items() if old.get(k) != v}
        changed.update({k: None for k in old if k not in new})
        return Outcome(changed, self.labels, self.events, new.get("phase"), self.wake)

    def fail(self, reason: str, message: str) -> Outcome:
        self.cond(RUNNING, "False", reason, message)
        self.cond(SUCCEEDED, "False", reason, message)
        self.cond(FAILED, "True", reason, message)
        self.new.setdefault("completionTime", self.now)
        return self.finish(Phase.FAILED, message)


class Reconciler:
    def __init__(self, settings: Settings, kube: Kube) -> None:
        self.settings = settings
        self.kube = kube
        self._credentials: dict[str, Credentials] = {}
        self._lease_checked: set[str] = set()  # jobs whose Lease this process has read at least once

    def forget(self, uid: str) -> None:
        self._credentials.pop(uid, None)
        self._lease_checked.discard(uid)

    async def credentials(self, job: AutoLabelJob) -> Credentials:
        uid = job.metadata.uid or ""
        cached = self._credentials.get(uid)
        if cached is not None:
            return cached
        ref = job.spec.storage.secret_ref if job.spec.storage else None
        if ref is None:
            creds = Credentials(self.settings.access_key, self.settings.secret_key)
        else:
            data = await self.kube.read_secret(job.metadata.namespace or "default", ref.name)
            if data is None:
                raise SpecError(f"spec.storage.secretRef: Secret {ref.name!r} not found")
            missing = [k for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY") if not data.get(k)]
            if missing:
                raise SpecError(f"spec.storage.secretRef: Secret {ref.name!r} lacks key(s) {', '.join(missing)}")
            creds = Credentials(data["AWS_ACCESS_KEY_ID"], data["AWS_SECRET_ACCESS_KEY"])
        self._credentials[uid] = creds
        return creds

    async def storage(self, job: AutoLabelJob) -> Storage:
        return storage_for(storage_config(job, self.settings, await self.credentials(job)))

    async def read_progress(self, job: AutoLabelJob) -> tuple[dict[str, Any] | None, str | None, str | None]:
        """``status.progress``, and the worker's error message and CamelCase reason if it wrote them."""
        storage = await self.storage(job)
        prefix = results_prefix(job)
        n = shards(job)
        uris = [f"{prefix}progress.json"]
        if n > 1:
            uris = [f"{prefix}shards/{i}/progress.json" for i in range(n)]
        docs = [await read_json(storage, uri) for uri in uris]
        failed = [(i, d) for i, d in enumerate(docs) if isinstance(d, dict) and d.get("error")]
        errors = [f"shard {i}: {d['error']}" if n > 1 else str(d["error"]) for i, d in failed]
        reasons = [str(d["reason"]) for _, d in failed if _is_reason(d.get("reason"))]
        return aggregate_progress(docs), "; ".join(errors) or None, (reasons[0] if reasons else None)

    async def read_result(self, job: AutoLabelJob) -> dict[str, Any]:
        storage = await self.storage(job)
        prefix = results_prefix(job)
        summary = await read_json(storage, f"{prefix}summary.json")
        n = shards(job)
        if summary is None and n > 1:
            summary = aggregate_summaries(
                [await read_json(storage, f"{prefix}shards/{i}/summary.json") for i in range(n)]
            )
        return result_from(summary, prefix)

    # ------------------------------------------------------------------------------------ main
    async def reconcile(self, raw: dict[str, Any], children: Children) -> Outcome:
        meta = raw["metadata"]
        b = StatusBuilder(copy.deepcopy(raw.get("status") or {}), meta.get("generation"))
        try:
            job = AutoLabelJob.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            if is_terminal(b.old):
                return b.finish(None, None)
            return b.fail("SpecInvalid", f"{where}: {first['msg']}")
        namespace = job.metadata.namespace or "default"
        uid = job.metadata.uid or ""
        manifest = job.spec.dataset.manifest
        key = dataset_key(manifest)
        if job.metadata.labels.get(DATASET_LABEL) != key:
            b.labels[DATASET_LABEL] = key
        lease = lease_name(manifest)
        b.new["leaseName"] = lease

        held = is_true(b.conditions, LOCK_ACQUIRED)  # as last recorded
        if is_terminal(b.old):
            if held:  # only after a crash between the end and its status; normally released already
                await lock.release(self.kube, namespace, lease, uid)
            return b.finish(None, None)

        # 1. Preconditions, once, before anything is scheduled.
        if not is_true(b.conditions, PRECONDITIONS_MET):
            try:
                failures = await check_preconditions(job, self.settings, await self.storage(job))
            except SpecError as exc:
                b.cond(PRECONDITIONS_MET, "False", "SecretNotFound", str(exc))
                return b.fail("SecretNotFound", str(exc))
            if failures:
                message = "; ".join(f.message for f in failures)
                for reason in sorted({f.reason for f in failures}):
                    metrics.PRECONDITION_FAILURES.labels(reason).inc()
                b.cond(PRECONDITIONS_MET, "False", failures[0].reason, message)
                return b.fail(failures[0].reason, message)
            b.cond(PRECONDITIONS_MET, "True", "Checked", f"dataset {manifest} meets every precondition")

        child = child_name(job)
        job_obj = children.job

        # 2. Suspended by the user: stop the pods, free the lock.
        if job.spec.suspend:
            if job_obj is not None and not (job_obj.get("spec") or {}).get("suspend"):
                await self.kube.set_job_suspend(namespace, child, True)
            if held:
                # Once, when it stops holding the lock (not on every timer tick while suspended).
                await lock.release(self.kube, namespace, lease, uid)
                b.wake = next_waiter(children.competitors, uid)
            message = "suspended (spec.suspend); the dataset lock is released"
            b.cond(LOCK_ACQUIRED, "False", "Suspended", message)
            if get_condition(b.conditions, RUNNING) is not None or job_obj is not None:
                b.cond(RUNNING, "False", "Suspended", message)
            return b.finish(Phase.SUSPENDED, message)

        # 3. The dataset lock. A job that does not hold it and has an earlier active job before it waits
        # without reading the Lease: a thousand queued jobs cost no API calls per tick. Only once this
        # process has read the Lease for it: after a crash between taking the Lease and recording it,
        # the first look finds "holder is me" and goes on, instead of two jobs waiting for each other.
        me = candidate_of(raw)
        earlier = sorted(c for c in children.competitors if c < me and c.uid != uid)
        if earlier and not is_true(b.conditions, LOCK_ACQUIRED) and uid in self._lease_checked:
            message = f"waiting for AutoLabelJob {earlier[0].name}, created earlier for the same dataset"
            if len(earlier) > 1:
                message += f" ({len(earlier)} jobs are ahead)"
            b.cond(LOCK_ACQUIRED, "False", "DatasetBusy", message)
            return b.finish(Phase.WAITING, message)
        state = await lock.acquire(
            self.kube, namespace, lease, manifest, me, children.competitors, self.settings.lease_duration
        )
        self._lease_checked.add(uid)
        if not state.held:
            b.cond(LOCK_ACQUIRED, "False", "DatasetBusy", state.decision.message)
            return b.finish(Phase.WAITING, state.decision.message)
        b.cond(LOCK_ACQUIRED, "True", "Acquired", f"holds the dataset lock (Lease {lease})")

        # 4. The worker Job: adopt or create (deterministic name: never two).
        if job_obj is None:
            job_obj = await self.kube.get_job(namespace, child)  # the index may lag behind a create
        if job_obj is None and b.new.get("jobName"):
            # Our Job vanished (deleted by hand, or by its TTL while the operator was down).
            result = await self.read_result(job)
            if "total" in result:
                job_obj = {
                    "spec": {"completions": shards(job)},
                    "status": {"conditions": [{"type": "Complete", "status": "True"}]},
                }
            else:
                b.events.append(("Warning", "JobRecreated", f"worker Job {child} was gone; creating it again"))
        if job_obj is None:
            flavor = self.settings.flavors.get(job.spec.resources.flavor)
            if flavor is None:  # the catalogue changed since the preconditions passed
                return b.fail("UnknownFlavor", f"spec.resources.flavor {job.spec.resources.flavor!r} is unknown")
            secret = build_credentials_secret(raw, job, self.settings)
            if secret is not None:
                await self.kube.ensure("secrets", namespace, secret)
            await self.kube.ensure("configmaps", namespace, build_configmap(raw, job))
            try:
                job_obj = await self.kube.create_job(namespace, build_job(raw, job, self.settings, flavor))
                b.events.append(("Normal", "JobCreated", f"created worker Job {child} ({shards(job)} shard(s))"))
            except Conflict:
                job_obj = await self.kube.get_job(namespace, child)
        elif not job.spec.queue_name and (job_obj.get("spec") or {}).get("suspend") and "metadata" in job_obj:
            # Resumed by the user (spec.suspend back to false): let the Job run again.
            await self.kube.set_job_suspend(namespace, child, False)
            job_obj = copy.deepcopy(job_obj)
            job_obj["spec"]["suspend"] = False
            b.events.append(("Normal", "Resumed", f"resumed worker Job {child}"))
        b.new["jobName"] = child

        obs = observe(job_obj, children.pods)
        derived = derive(obs, job.spec.queue_name)
        for item in derived.conditions:
            b.cond(*item)
        if obs.start_time and not b.new.get("startTime"):
            b.new["startTime"] = obs.start_time
        message = derived.message
        worker_error = worker_reason = None
        if derived.phase in (Phase.RUNNING, Phase.SUCCEEDED, Phase.FAILED):
            progress, worker_error, worker_reason = await self.read_progress(job)
            if progress:
                b.new["progress"] = progress
        if derived.phase not in (Phase.SUCCEEDED, Phase.FAILED):
            return b.finish(derived.phase, message)

        # 5. The end: free the lock (waking the next job of the dataset), record the outcome.
        await lock.release(self.kube, namespace, lease, uid)
        b.wake = next_waiter(children.competitors, uid)
        b.cond(LOCK_ACQUIRED, "False", "Released", "released: the job has ended")
        b.new.setdefault("completionTime", obs.completion_time or b.now)
        self._observe_end(job, b.new, str(derived.phase))
        if derived.phase == Phase.FAILED:
            # The worker's own reason (e.g. TooManyUnreadableImages) says more than the Job's, unless the
            # worker only reports being stopped (SIGTERM: the Job's deadline, say): then the Job's says why.
            if worker_reason in WORKER_STOPPED_REASONS:
                worker_reason = None
            reason = worker_reason or (get_condition(b.conditions, FAILED) or {}).get("reason") or "JobFailed"
            if worker_error:
                message = f"{message}; worker error: {worker_error}"
            return b.fail(reason, message)
        result = await self.read_result(job)
        b.new["result"] = result
        metrics.record_result(job.spec.mode, result)
        if "total" in result:
            message = (
                f"{result.get('total')} images: {result.get('autoLabeled', '?')} auto-labeled, "
                f"{result.get('hardExamples', '?')} hard examples; results in {result['uri']}"
            )
        return b.finish(Phase.SUCCEEDED, message)

    def _observe_end(self, job: AutoLabelJob, new: dict[str, Any], outcome: str) -> None:
        start, end = new.get("startTime"), new.get("completionTime")
        if start and end:
            seconds = (_parse(end) - _parse(start)).total_seconds()
            metrics.JOB_DURATION.labels(outcome, job.spec.mode).observe(max(0.0, seconds))


def _is_reason(value: Any) -> bool:
    """A metav1.Condition reason: CamelCase identifier."""
    return isinstance(value, str) and bool(re.fullmatch(r"[A-Z][A-Za-z0-9_]{0,127}", value))


def _parse(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)
