"""The per-dataset lock: one ``coordination.k8s.io/v1`` Lease per dataset and namespace.

Decisions are pure functions (:func:`decide`); :func:`acquire` and :func:`release` apply them through a
small async client (:class:`LeaseClient`) with optimistic concurrency: create (409 = someone else was
first), or replace with the resourceVersion we read (409 = lost the race). Nobody ever writes a Lease
without the resourceVersion it decided on, so two reconcilers (or two operators) cannot both win.

Who may take the lock:
* the holder re-enters (operator restarts keep the lock);
* otherwise only when the Lease is free (released) or its holder is no longer an active AutoLabelJob
  (finished, failed, suspended, deleted) — never because an operator outage let ``renewTime`` age,
  so a restart after a long outage does not steal a live job's lock;
* and only the first in creation order (creationTimestamp, then name) among the active jobs of the
  dataset that do not hold it, so waiting jobs start in the order they were created.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from autolabel.contract import format_time, parse_time

from .errors import Conflict
from .names import DATASET_LABEL, MANAGED_BY, MANAGED_BY_LABEL, MANIFEST_ANNOTATION, dataset_key

HOLDER_NAME_ANNOTATION = "autolabel.dev/holder-name"


@dataclass(frozen=True, order=True)
class Candidate:
    """An active AutoLabelJob of the dataset, sortable in creation order."""

    created: str  # creationTimestamp (RFC 3339, second resolution: ties are broken by name)
    name: str
    uid: str


@dataclass(frozen=True)
class LeaseView:
    holder: str | None
    holder_name: str | None
    renew_time: datetime | None
    duration: int | None
    resource_version: str | None
    transitions: int
    acquire_time: str | None = None

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> LeaseView:
        spec = body.get("spec") or {}
        meta = body.get("metadata") or {}
        return cls(
            holder=spec.get("holderIdentity") or None,
            holder_name=(meta.get("annotations") or {}).get(HOLDER_NAME_ANNOTATION),
            renew_time=parse_time(spec.get("renewTime")),
            duration=spec.get("leaseDurationSeconds"),
            resource_version=meta.get("resourceVersion"),
            transitions=spec.get("leaseTransitions") or 0,
            acquire_time=spec.get("acquireTime"),
        )

    def expired(self, now: datetime) -> bool:
        if self.renew_time is None or self.duration is None:
            return True
        return (now - self.renew_time).total_seconds() > self.duration


class Action(enum.Enum):
    CREATE = "create"  # no Lease yet: create it with us as holder
    TAKE = "take"  # free, or held by an inactive job: replace (compare-and-swap)
    RENEW = "renew"  # we hold it
    WAIT = "wait"


@dataclass(frozen=True)
class Decision:
    action: Action
    blocker: str | None = None  # WAIT: the job we wait for (holder, or an earlier waiter)
    message: str = ""


def decide(
    lease: LeaseView | None, me: Candidate, active: Iterable[Candidate], now: datetime | None = None
) -> Decision:
    """What ``me`` should do about the dataset's Lease. ``active`` are the dataset's active jobs
    (not finished, not suspended, not being deleted), ``me`` among them or not."""
    active = sorted(set(active) | {me})
    active_uids = {c.uid for c in active}
    if lease is not None and lease.holder == me.uid:
        return Decision(Action.RENEW)
    holder_alive = lease is not None and lease.holder is not None and lease.holder in active_uids
    if holder_alive:
        assert lease is not None
        holder = next(c for c in active if c.uid == lease.holder)
        return Decision(Action.WAIT, holder.name, f"dataset is locked by AutoLabelJob {holder.name} (uid {holder.uid})")
    first = active[0]
    if first.uid != me.uid:
        return Decision(
            Action.WAIT,
            first.name,
            f"waiting for AutoLabelJob {first.name}, created earlier for the same dataset, to run first",
        )
    return Decision(Action.CREATE if lease is None else Action.TAKE)


def lease_body(
    name: str,
    namespace: str,
    manifest_uri: str,
    holder: Candidate | None,
    duration: int,
    now: datetime,
    previous: LeaseView | None = None,
) -> dict[str, Any]:
    transitions = previous.transitions if previous else 0
    if holder is not None and previous is not None and previous.holder != holder.uid:
        transitions += 1
    meta: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "labels": {DATASET_LABEL: dataset_key(manifest_uri), MANAGED_BY_LABEL: MANAGED_BY},
        "annotations": {
            MANIFEST_ANNOTATION: manifest_uri,
            HOLDER_NAME_ANNOTATION: holder.name if holder else "",
        },
    }
    if previous is not None and previous.resource_version:
        meta["resourceVersion"] = previous.resource_version
    spec: dict[str, Any] = {"leaseDurationSeconds": duration, "leaseTransitions": transitions}
    if holder is not None:
        spec["holderIdentity"] = holder.uid
        spec["renewTime"] = format_time(now, micro=True)
        same_holder = previous is not None and previous.holder == holder.uid and previous.acquire_time
        spec["acquireTime"] = previous.acquire_time if same_holder and previous else format_time(now, micro=True)
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta, "spec": spec}


class LeaseClient(Protocol):
    """What the lock needs of the API: read, create and compare-and-swap a Lease (409: :class:`Conflict`)."""

    async def get_lease(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    async def create_lease(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]: ...
    async def replace_lease(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]: ...


@dataclass(frozen=True)
class LockState:
    held: bool
    decision: Decision


async def acquire(
    client: LeaseClient,
    namespace: str,
    name: str,
    manifest_uri: str,
    me: Candidate,
    active: Iterable[Candidate],
    duration: int,
    now: datetime | None = None,
    renew_after: float | None = None,
) -> LockState:
    """Take, re-enter or renew the lock; ``held`` is True only when the API server agreed.

    ``renew_after``: a held lease is rewritten only when its renewTime is at least this old
    (default: a third of the duration), to keep writes low with many jobs."""
    now = now or datetime.now(UTC)
    active = list(active)
    raw = await client.get_lease(namespace, name)
    lease = LeaseView.from_body(raw) if raw is not None else None
    decision = decide(lease, me, active, now)
    if decision.action is Action.WAIT:
        return LockState(False, decision)
    if decision.action is Action.RENEW:
        assert lease is not None
        threshold = duration / 3 if renew_after is None else renew_after
        if lease.renew_time is not None and (now - lease.renew_time).total_seconds() < threshold:
            return LockState(True, decision)
    body = lease_body(name, namespace, manifest_uri, me, duration, now, lease)
    try:
        if decision.action is Action.CREATE:
            await client.create_lease(namespace, body)
        else:
            await client.replace_lease(namespace, name, body)
    except Conflict:
        # Somebody changed the Lease since we read it: the next reconcile decides again.
        return LockState(False, Decision(Action.WAIT, None, "lost a race for the dataset lock; retrying"))
    return LockState(True, decision)


async def release(client: LeaseClient, namespace: str, name: str, uid: str, attempts: int = 3) -> bool:
    """Free the Lease if ``uid`` holds it (idempotent). True when it is not held by ``uid`` afterwards."""
    for _ in range(attempts):
        raw = await client.get_lease(namespace, name)
        if raw is None:
            return True
        lease = LeaseView.from_body(raw)
        if lease.holder != uid:
            return True
        body = dict(raw)
        body["spec"] = {k: v for k, v in (raw.get("spec") or {}).items() if k not in ("holderIdentity",)}
        body["spec"]["renewTime"] = format_time(micro=True)
        meta = dict(raw.get("metadata") or {})
        meta["annotations"] = {**(meta.get("annotations") or {}), HOLDER_NAME_ANNOTATION: ""}
        body["metadata"] = meta
        try:
            await client.replace_lease(namespace, name, body)
            return True
        except Conflict:
            continue
    return False
