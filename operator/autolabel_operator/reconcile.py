"""One reconciliation of an AutoLabelJob: from what is (the resource, its Job and pods from kopf's indexes,
the dataset Lease, the worker's objects in storage) to what should be, plus the status that says so.

Called by the create/resume/update handlers and by the timer; idempotent, so being called twice, or
after a crash at any line, converges to the same state: names are deterministic, creation is
409-tolerant, the lock is compare-and-swap, and terminal states are final.

:meth:`Reconciler.reconcile` reads as its steps: check the preconditions, honour a suspend, take the
dataset lock, create or adopt the worker Job, observe it, and finish. Each step returns an
:class:`Outcome` when the reconcile ends there, or None to go on.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from autolabel.api import AutoLabelJob, AutoLabelJobStatus, Phase, Result
from autolabel.contract import CREDENTIAL_KEYS, STOPPED_REASONS, ProgressDoc, format_time, parse_time, shard_count
from autolabel.storage import Storage, StorageConfig

from . import kueue, lock, metrics
from .config import Settings
from .credentials import CredentialsNotIssued, JobCredentials, issue_job_credentials
from .errors import Conflict
from .jobs import build_configmap, build_credentials_secret, build_job, issues_job_credentials
from .kube import Kube
from .lock import Candidate
from .names import DATASET_LABEL, child_name, dataset_key, lease_name
from .preconditions import Credentials, local_paths, storage_config, storage_for, storage_policy
from .preconditions import check as check_preconditions
from .results import read_progress, read_result
from .status import (
    FAILED,
    LOCK_ACQUIRED,
    PRECONDITIONS_MET,
    RESULTS_RECORDED,
    RUNNING,
    SUCCEEDED,
    Derived,
    derive,
    get_condition,
    is_terminal,
    is_true,
    observe,
    set_condition,
)

log = logging.getLogger(__name__)


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


class StatusBuilder:
    """The new status, built from the old one; :meth:`finish` gives the diff and the events."""

    def __init__(self, old: dict[str, Any], generation: int | None) -> None:
        self.old = old
        self.new = copy.deepcopy(old)
        self.generation = generation
        self.now = format_time()
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
        # Through the API's model: a status the CRD would reject is a bug here, not a patch the server
        # refuses on every reconcile.
        new = AutoLabelJobStatus.model_validate(new).to_wire()
        changed: dict[str, Any] = {k: v for k, v in new.items() if old.get(k) != v}
        changed.update({k: None for k in old if k not in new})
        return Outcome(changed, self.labels, self.events, new.get("phase"), self.wake)

    def fail(self, reason: str, message: str) -> Outcome:
        self.cond(RUNNING, "False", reason, message)
        self.cond(SUCCEEDED, "False", reason, message)
        self.cond(FAILED, "True", reason, message)
        self.new.setdefault("completionTime", self.now)
        return self.finish(Phase.FAILED, message)


@dataclass
class Pass:
    """One reconcile of one AutoLabelJob: the parsed job, what the indexes say, the status being built."""

    raw: dict[str, Any]
    job: AutoLabelJob
    children: Children
    status: StatusBuilder
    progress: ProgressDoc | None = None
    """What the workers last wrote (read while the Job runs and when it ends)."""

    @property
    def namespace(self) -> str:
        return self.job.metadata.namespace or "default"

    @property
    def uid(self) -> str:
        return self.job.metadata.uid or ""

    @property
    def lease(self) -> str:
        return lease_name(self.job.spec.dataset.manifest)


class Reconciler:
    def __init__(
        self,
        settings: Settings,
        kube: Kube,
        storage_factory: Callable[[StorageConfig], Storage] = storage_for,
        credentials_issuer: Callable[[AutoLabelJob, Settings], JobCredentials] = issue_job_credentials,
    ) -> None:
        """``storage_factory`` turns a job's :func:`~.preconditions.storage_config` (s3:// only) into the
        Storage every read for the job goes through (tests serve s3:// URIs from a folder);
        ``credentials_issuer`` asks the store's STS for a job's scoped credentials (credentials.py)."""
        self.settings = settings
        self.kube = kube
        self.storage_factory = storage_factory
        self.credentials_issuer = credentials_issuer
        self._lease_checked: set[str] = set()  # jobs whose Lease this process has read at least once
        self._results_tries: dict[str, tuple[int, float]] = {}  # uid -> (tries, monotonic time of the next)
        self._kueue_said: dict[str, tuple[float, kueue.Admission]] = {}  # uid -> (when read, Kueue's verdict)

    def forget(self, uid: str) -> None:
        self._lease_checked.discard(uid)
        self._results_tries.pop(uid, None)
        self._kueue_said.pop(uid, None)

    async def credentials(self, job: AutoLabelJob) -> Credentials:
        """The job's storage credentials, read anew each time (not cached): a rotated Secret reaches the
        next precondition check, progress read and Job."""
        ref = job.spec.storage.secret_ref if job.spec.storage else None
        if ref is None:
            creds = Credentials(self.settings.access_key, self.settings.secret_key)
        else:
            data = await self.kube.read_secret(job.metadata.namespace or "default", ref.name)
            if data is None:
                raise SpecError(f"spec.storage.secretRef: Secret {ref.name!r} not found")
            missing = [k for k in CREDENTIAL_KEYS if not data.get(k)]
            if missing:
                raise SpecError(f"spec.storage.secretRef: Secret {ref.name!r} lacks key(s) {', '.join(missing)}")
            creds = Credentials(*(data[k] for k in CREDENTIAL_KEYS))
        return creds

    async def storage(self, job: AutoLabelJob) -> Storage:
        return self.storage_factory(storage_config(job, self.settings, await self.credentials(job)))

    # ------------------------------------------------------------------------------------ main
    async def reconcile(self, raw: dict[str, Any], children: Children) -> Outcome:
        b = StatusBuilder(copy.deepcopy(raw.get("status") or {}), raw["metadata"].get("generation"))
        try:
            job = AutoLabelJob.model_validate(raw)
        except ValidationError as exc:
            if is_terminal(b.old):
                return b.finish(None, None)
            first = exc.errors()[0]
            return b.fail("SpecInvalid", f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}")
        run = Pass(raw, job, children, b)
        key = dataset_key(job.spec.dataset.manifest)
        if job.metadata.labels.get(DATASET_LABEL) != key:
            b.labels[DATASET_LABEL] = key
        b.new["leaseName"] = run.lease
        if is_terminal(b.old):
            return await self.stay_finished(run)
        return (
            await self.check_preconditions(run)
            or await self.suspend(run)
            or await self.take_lock(run)
            or await self.run_worker_job(run)
        )

    async def stay_finished(self, run: Pass) -> Outcome:
        """Terminal states are final; the lock is freed if a crash came between the end and its status."""
        if is_true(run.status.conditions, LOCK_ACQUIRED):
            await lock.release(self.kube, run.namespace, run.lease, run.uid)
        return run.status.finish(None, None)

    async def check_preconditions(self, run: Pass) -> Outcome | None:
        """Step 1: the dataset's preconditions, once, before anything is scheduled."""
        b, job = run.status, run.job
        if is_true(b.conditions, PRECONDITIONS_MET):
            return None
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
        b.cond(PRECONDITIONS_MET, "True", "Checked", f"dataset {job.spec.dataset.manifest} meets every precondition")
        return None

    async def suspend(self, run: Pass) -> Outcome | None:
        """Step 2: suspended by the user: stop the pods, free the lock."""
        b, job, job_obj = run.status, run.job, run.children.job
        if not job.spec.suspend:
            return None
        message = "suspended (spec.suspend); the dataset lock is released"
        lock_condition = get_condition(b.conditions, LOCK_ACQUIRED) or {}
        stopped = lock_condition.get("reason") == "Suspended" and lock_condition.get("message") == message
        if job_obj is not None and job.spec.queue_name:
            self._kueue_said.pop(run.uid, None)  # on resume, the Workload is read (and re-activated) at once
            if not stopped and not await self.deactivate_workload(run, job_obj):
                message += "; waiting for Kueue to create the Job's Workload, to deactivate it"
        elif job_obj is not None and not (job_obj.get("spec") or {}).get("suspend"):
            await self.kube.set_job_suspend(run.namespace, child_name(job), True)
        if is_true(b.conditions, LOCK_ACQUIRED):
            # Once, when it stops holding the lock (not on every timer tick while suspended).
            await lock.release(self.kube, run.namespace, run.lease, run.uid)
            b.wake = next_waiter(run.children.competitors, run.uid)
        b.cond(LOCK_ACQUIRED, "False", "Suspended", message)
        if get_condition(b.conditions, RUNNING) is not None or job_obj is not None:
            b.cond(RUNNING, "False", "Suspended", message)
        return b.finish(Phase.SUSPENDED, message)

    async def deactivate_workload(self, run: Pass, job_obj: dict[str, Any]) -> bool:
        """A Kueue-managed Job is stopped through its Workload (see :mod:`.kueue` for why); False while
        Kueue has not created one yet (the next pass tries again; once done, the status says so and later
        passes read nothing)."""
        ended = observe(job_obj, [])
        if ended.complete or ended.failed:
            return True
        workload = kueue.latest(await self.kube.list_workloads(run.namespace, self._workload_selector(job_obj)))
        if workload is None:
            return False
        if kueue.is_active(workload):
            await self.kube.patch_workload(run.namespace, workload["metadata"]["name"], kueue.activation_patch(False))
            run.status.events.append(
                ("Normal", "Deactivated", f"deactivated Kueue Workload {workload['metadata']['name']} (spec.suspend)")
            )
        return True

    async def kueue_admission(self, run: Pass, job_obj: dict[str, Any]) -> kueue.Admission | None:
        """Kueue's word on a suspended Job's Workload, for the status; re-activates the Workload that a
        suspend of ours deactivated (the job holds its lock again by now)."""
        said = self._kueue_said.get(run.uid)
        if said is not None and time.monotonic() - said[0] < kueue.REFRESH_SECONDS:
            return said[1]
        workload = kueue.latest(await self.kube.list_workloads(run.namespace, self._workload_selector(job_obj)))
        if workload is not None and kueue.deactivated_by_us(workload):
            name = workload["metadata"]["name"]
            await self.kube.patch_workload(run.namespace, name, kueue.activation_patch(True))
            run.status.events.append(("Normal", "Resumed", f"re-activated Kueue Workload {name}"))
            return kueue.Admission(False, "Pending", "re-activated; waiting for Kueue to admit it again")
        verdict = kueue.admission(workload)
        if verdict is not None and verdict.settled:
            self._kueue_said[run.uid] = (time.monotonic(), verdict)
        return verdict

    @staticmethod
    def _workload_selector(job_obj: dict[str, Any]) -> str:
        return kueue.workload_selector(str((job_obj.get("metadata") or {}).get("uid") or ""))

    async def take_lock(self, run: Pass) -> Outcome | None:
        """Step 3: the dataset lock.

        A job that does not hold it and has an earlier active job before it waits without reading the
        Lease: a thousand queued jobs cost no API calls per tick. Only once this process has read the
        Lease for it: after a crash between taking the Lease and recording it, the first look finds
        "holder is me" and goes on, instead of two jobs waiting for each other."""
        b, uid, competitors = run.status, run.uid, run.children.competitors
        me = candidate_of(run.raw)
        earlier = sorted(c for c in competitors if c < me and c.uid != uid)
        if earlier and not is_true(b.conditions, LOCK_ACQUIRED) and uid in self._lease_checked:
            message = f"waiting for AutoLabelJob {earlier[0].name}, created earlier for the same dataset"
            if len(earlier) > 1:
                message += f" ({len(earlier)} jobs are ahead)"
            b.cond(LOCK_ACQUIRED, "False", "DatasetBusy", message)
            return b.finish(Phase.WAITING, message)
        manifest = run.job.spec.dataset.manifest
        state = await lock.acquire(
            self.kube, run.namespace, run.lease, manifest, me, competitors, self.settings.lease_duration
        )
        self._lease_checked.add(uid)
        if not state.held:
            b.cond(LOCK_ACQUIRED, "False", "DatasetBusy", state.decision.message)
            return b.finish(Phase.WAITING, state.decision.message)
        b.cond(LOCK_ACQUIRED, "True", "Acquired", f"holds the dataset lock (Lease {run.lease})")
        return None

    async def run_worker_job(self, run: Pass) -> Outcome:
        """Steps 4-6: create or adopt the worker Job, observe it and its pods, finish when it ends."""
        job_obj = await self.create_or_adopt_job(run)
        if isinstance(job_obj, Outcome):
            return job_obj
        derived = await self.observe(run, job_obj)
        if derived.phase in (Phase.SUCCEEDED, Phase.FAILED):
            return await self.finish(run, derived)
        return run.status.finish(derived.phase, derived.message)

    async def create_or_adopt_job(self, run: Pass) -> dict[str, Any] | Outcome:
        """Step 4: the worker Job, adopted when it exists (deterministic name: never two)."""
        b, job, namespace = run.status, run.job, run.namespace
        child = child_name(job)
        job_obj = run.children.job or await self.kube.get_job(namespace, child)  # the index may lag a create
        if job_obj is None and b.new.get("jobName"):
            # Our Job vanished (deleted by hand, or by its TTL while the operator was down).
            read = await read_result(await self.storage(job), job)
            if read.result.total is not None:
                job_obj = {
                    "spec": {"completions": shard_count(job)},
                    "status": {"conditions": [{"type": "Complete", "status": "True"}]},
                }
            else:
                b.events.append(("Warning", "JobRecreated", f"worker Job {child} was gone; creating it again"))
        if job_obj is None:
            flavor = self.settings.flavors.get(job.spec.resources.flavor)
            if flavor is None:  # the catalogue changed since the preconditions passed
                return b.fail("UnknownFlavor", f"spec.resources.flavor {job.spec.resources.flavor!r} is unknown")
            policy = [*local_paths(job), *storage_policy(job, self.settings)]
            if policy:  # the spec or the storage settings changed since the preconditions passed: copy no keys
                return b.fail(policy[0].reason, "; ".join(f.message for f in policy))
            if issues_job_credentials(job, self.settings):
                # Issued anew for every Job created: a Job created again never runs on expired ones.
                try:
                    issued = await asyncio.to_thread(self.credentials_issuer, job, self.settings)
                except CredentialsNotIssued as exc:
                    return b.fail("CredentialsNotIssued", str(exc))
                await self.kube.ensure("secrets", namespace, build_credentials_secret(run.raw, job, issued))
            await self.kube.ensure("configmaps", namespace, build_configmap(run.raw, job))
            try:
                job_obj = await self.kube.create_job(namespace, build_job(run.raw, job, self.settings, flavor))
                b.events.append(("Normal", "JobCreated", f"created worker Job {child} ({shard_count(job)} shard(s))"))
            except Conflict:
                job_obj = await self.kube.get_job(namespace, child)
        elif not job.spec.queue_name and (job_obj.get("spec") or {}).get("suspend") and "metadata" in job_obj:
            # Resumed by the user (spec.suspend back to false): let the Job run again.
            await self.kube.set_job_suspend(namespace, child, False)
            job_obj = copy.deepcopy(job_obj)
            job_obj["spec"]["suspend"] = False
            b.events.append(("Normal", "Resumed", f"resumed worker Job {child}"))
        b.new["jobName"] = child
        return job_obj or {}

    async def observe(self, run: Pass, job_obj: dict[str, Any]) -> Derived:
        """Step 5: conditions and phase from the Job and its pods; progress from the workers."""
        b = run.status
        obs = observe(job_obj or None, run.children.pods)
        waiting = None
        if run.job.spec.queue_name and obs.suspended and not (obs.complete or obs.failed) and "metadata" in job_obj:
            waiting = await self.kueue_admission(run, job_obj)
        derived = derive(obs, run.job.spec.queue_name, waiting)
        for item in derived.conditions:
            b.cond(*item)
        if obs.start_time and not b.new.get("startTime"):
            b.new["startTime"] = obs.start_time
        if obs.completion_time and derived.phase in (Phase.SUCCEEDED, Phase.FAILED):
            b.new.setdefault("completionTime", obs.completion_time)
        if derived.phase in (Phase.RUNNING, Phase.SUCCEEDED, Phase.FAILED):
            run.progress = await read_progress(await self.storage(run.job), run.job)
            if run.progress is not None:
                b.new["progress"] = run.progress.to_status().to_wire()
        return derived

    async def finish(self, run: Pass, derived: Derived) -> Outcome:
        """Step 6: the end. A successful Job ends only once its results are recorded in the status (read
        again with backoff while they cannot be); then the lock is freed, waking the next job."""
        b, job = run.status, run.job
        result: Result | None = None
        if derived.phase == Phase.SUCCEEDED:
            result = await self.record_results(run)
            if result is None:
                return b.finish(Phase.RUNNING, b.new.get("message"))
        await lock.release(self.kube, run.namespace, run.lease, run.uid)
        b.wake = next_waiter(run.children.competitors, run.uid)
        b.cond(LOCK_ACQUIRED, "False", "Released", "released: the job has ended")
        b.new.setdefault("completionTime", b.now)
        self._observe_duration(job, b.new, str(derived.phase))
        message = derived.message
        if result is None:
            # The worker's own reason (e.g. TooManyUnreadableImages) says more than the Job's, unless the
            # worker only reports being stopped (SIGTERM: the Job's deadline, say): then the Job's says why.
            progress = run.progress
            worker_reason = progress.reason if progress is not None and _is_reason(progress.reason) else None
            if worker_reason in STOPPED_REASONS:
                worker_reason = None
            reason = worker_reason or (get_condition(b.conditions, FAILED) or {}).get("reason") or "JobFailed"
            if progress is not None and progress.error:
                message = f"{message}; worker error: {progress.error}"
            return b.fail(reason, message)
        b.new["result"] = result.to_wire()
        metrics.record_result(job.spec.mode, result)
        message = (
            f"{result.total} images: {_or_unknown(result.auto_labeled)} auto-labeled, "
            f"{_or_unknown(result.hard_examples)} hard examples; results in {result.uri}"
        )
        return b.finish(Phase.SUCCEEDED, message)

    async def record_results(self, run: Pass) -> Result | None:
        """The completed Job's ``status.result``, or None (and ``ResultsRecorded=False`` with the reason,
        ``Succeeded=Unknown``) while its summary cannot be read: a short storage outage at the moment the
        Job completes must not end the job without its counts. Tries are spaced by a doubling backoff."""
        b, uid = run.status, run.uid
        tries, not_before = self._results_tries.get(uid, (0, 0.0))
        if time.monotonic() < not_before:
            read_problem = (get_condition(b.conditions, RESULTS_RECORDED) or {}).get("message", "")
        else:
            read = await read_result(await self.storage(run.job), run.job)
            if read.problem is None:
                self._results_tries.pop(uid, None)
                b.cond(RESULTS_RECORDED, "True", "Recorded", f"results read from {read.result.uri}")
                return read.result
            tries += 1
            delay = min(self.settings.results_backoff * 2 ** (tries - 1), self.settings.results_backoff_max)
            self._results_tries[uid] = (tries, time.monotonic() + delay)
            read_problem = f"{read.problem}; try {tries}, next in {delay:g}s"
        message = f"the worker Job completed, but its results cannot be read yet: {read_problem}"
        b.cond(RESULTS_RECORDED, "False", "ResultsUnreadable", read_problem)
        b.cond(SUCCEEDED, "Unknown", "ResultsNotRecorded", message)
        b.new["message"] = message
        return None

    def _observe_duration(self, job: AutoLabelJob, new: dict[str, Any], outcome: str) -> None:
        start, end = parse_time(new.get("startTime")), parse_time(new.get("completionTime"))
        if start and end:
            metrics.JOB_DURATION.labels(outcome, job.spec.mode).observe(max(0.0, (end - start).total_seconds()))


def _or_unknown(value: int | None) -> str:
    return "?" if value is None else str(value)


def _is_reason(value: Any) -> bool:
    """A metav1.Condition reason: CamelCase identifier."""
    return isinstance(value, str) and bool(re.fullmatch(r"[A-Z][A-Za-z0-9_]{0,127}", value))
