"""What every handler shares: the reconciler, one lock per AutoLabelJob, and applying an outcome.

The :class:`Runtime` is made by the startup handler and kept in kopf's operator memo (``memo.runtime``);
kopf gives every resource's handlers a shallow copy of that memo, so they all share the one Runtime.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Mapping
from typing import Any

import kopf

from autolabel.contract import format_time

from .. import metrics
from ..errors import Conflict, KubeError
from ..names import WAKE_ANNOTATION, dataset_key
from ..reconcile import Children, Outcome, Reconciler
from ..status import is_terminal

log = logging.getLogger(__name__)


class Runtime:
    """The operator's state in memory. The operator is the only writer of AutoLabelJob status, so the
    status it last wrote is never older than what a (possibly lagging) watch event shows."""

    def __init__(self, reconciler: Reconciler) -> None:
        self.reconciler = reconciler
        self._locks: dict[str, asyncio.Lock] = {}
        self._status: dict[str, dict[str, Any]] = {}

    def lock(self, uid: str) -> asyncio.Lock:
        return self._locks.setdefault(uid, asyncio.Lock())

    def forget(self, uid: str) -> None:
        self._locks.pop(uid, None)
        self._status.pop(uid, None)
        self.reconciler.forget(uid)
        metrics.PHASES.forget(uid)

    async def wake(self, namespace: str, name: str) -> None:
        """Make an AutoLabelJob reconcile now (its update handler watches this annotation)."""
        wake = {"metadata": {"annotations": {WAKE_ANNOTATION: format_time(micro=True)}}}
        await self.reconciler.kube.patch_autolabeljob(namespace, name, wake)  # None (404): gone, fine

    def _ended(self, uid: str) -> bool:
        """This process wrote a final status for ``uid`` (the index may not have seen it yet): it no
        longer competes for its dataset's lock."""
        return is_terminal(self._status.get(uid))

    def status_of(self, body: Mapping[str, Any]) -> dict[str, Any]:
        uid = body["metadata"]["uid"]
        if uid in self._status:
            return copy.deepcopy(self._status[uid])
        return copy.deepcopy(dict(body.get("status") or {}))

    async def reconcile(
        self,
        body: kopf.Body,
        job_index: kopf.Index,
        pod_index: kopf.Index,
        dataset_index: kopf.Index,
    ) -> Outcome | None:
        # A private copy of what the reconcile reads. Not the status (status_of copies the newest one) nor
        # metadata.managedFields (the API server's field bookkeeping, most of a body's size): deep copies
        # were 14% of the operator's samples with 100 jobs at once (py-spy, docs/benchmarks.md).
        raw: dict[str, Any] = copy.deepcopy({k: body.get(k) for k in ("apiVersion", "kind", "spec")})
        raw["metadata"] = copy.deepcopy({k: v for k, v in body["metadata"].items() if k != "managedFields"})
        meta = raw["metadata"]
        uid, namespace, name = meta["uid"], meta["namespace"], meta["name"]
        async with self.lock(uid):
            raw["status"] = self.status_of(body)
            manifest = ((raw.get("spec") or {}).get("dataset") or {}).get("manifest", "")
            children = Children(
                job=next(iter(job_index.get(uid, [])), None),
                pods=list(pod_index.get(uid, [])),
                competitors=[
                    c for c in dataset_index.get((namespace, dataset_key(manifest)), []) if not self._ended(c.uid)
                ],
            )
            try:
                outcome = await self.reconciler.reconcile(raw, children)
            except (KubeError, Conflict, OSError) as exc:
                metrics.RECONCILE_ERRORS.labels(type(exc).__name__).inc()
                raise kopf.TemporaryError(f"reconcile of {namespace}/{name} failed: {exc}", delay=5) from exc
            except Exception:
                metrics.RECONCILE_ERRORS.labels("unexpected").inc()
                raise
            kube = self.reconciler.kube
            if outcome.labels:
                await kube.patch_autolabeljob(namespace, name, {"metadata": {"labels": outcome.labels}})
            if outcome.status:
                patched = await kube.patch_autolabeljob(namespace, name, {"status": outcome.status}, status=True)
                if patched is None:  # deleted meanwhile
                    return outcome
                self._status[uid] = dict(patched.get("status") or {})
            metrics.PHASES.set(uid, outcome.phase)
            for waiter in outcome.wake:
                await self.wake(namespace, waiter)
        for kind, reason, message in outcome.events:
            kopf.event(body, type=kind, reason=reason, message=message)
        return outcome


def runtime_of(memo: kopf.Memo) -> Runtime:
    """The operator's Runtime from a handler's memo (absent only while the operator starts or stops)."""
    runtime = memo.get("runtime")
    if not isinstance(runtime, Runtime):
        raise kopf.TemporaryError("the operator is still starting", delay=1)
    return runtime


async def reconcile_from_handler(memo: kopf.Memo, body: kopf.Body, handler_kwargs: Mapping[str, Any]) -> None:
    """Reconcile with the indexes kopf hands every handler (by the ids in :mod:`.indexes`)."""
    await runtime_of(memo).reconcile(
        body, handler_kwargs["worker_jobs"], handler_kwargs["worker_pods"], handler_kwargs["active_by_dataset"]
    )
