"""The per-dataset lock: pure decisions, and acquire/release against a fake API with real
resourceVersion (compare-and-swap) semantics."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from autolabel_operator import lock
from autolabel_operator.lock import Action, Candidate, LeaseView, decide
from fakes import FakeLeases

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
A = Candidate("2026-11-27T10:00:00Z", "a", "uid-a")
B = Candidate("2026-11-27T10:00:01Z", "b", "uid-b")
C = Candidate("2026-11-27T10:00:01Z", "c", "uid-c")  # same second as b: the name decides


def view(holder: str | None, renewed: datetime = NOW, duration: int = 60) -> LeaseView:
    return LeaseView(holder, None, renewed, duration, "1", 0)


def test_no_lease_first_in_order_creates_others_wait_for_it() -> None:
    assert decide(None, A, [A, B, C], NOW).action is Action.CREATE
    waiting = decide(None, B, [A, B, C], NOW)
    assert waiting.action is Action.WAIT and waiting.blocker == "a"
    assert decide(None, C, [B, C], NOW).blocker == "b"  # same timestamp: ordered by name


def test_holder_reenters_even_when_expired_and_others_wait_for_a_live_holder() -> None:
    stale = view("uid-b", NOW - timedelta(hours=3))
    assert decide(stale, B, [A, B], NOW).action is Action.RENEW
    # An operator outage let the lease expire; b is still an active job: a must not steal it.
    d = decide(stale, A, [A, B], NOW)
    assert d.action is Action.WAIT and d.blocker == "b" and "uid-b" in d.message


def test_released_or_dead_holder_is_taken_by_the_first_waiter_only() -> None:
    free = view(None)
    assert decide(free, A, [A, B], NOW).action is Action.TAKE
    assert decide(free, B, [A, B], NOW).action is Action.WAIT
    dead = view("uid-gone")  # the holder finished, was suspended or deleted
    assert decide(dead, B, [B, C], NOW).action is Action.TAKE
    assert decide(dead, C, [B, C], NOW).blocker == "b"


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_acquire_renew_release_cycle() -> None:
    leases = FakeLeases()

    async def scenario() -> None:
        got = await lock.acquire(leases, "ns", "l", "s3://d/m", A, [A, B], 60, NOW)
        assert got.held and leases.holder() == "uid-a"
        lease = leases.objects[("ns", "l")]
        assert lease["spec"]["acquireTime"] == lease["spec"]["renewTime"] == "2026-11-27T12:00:00.000000Z"
        assert lease["metadata"]["annotations"]["autolabel.dev/holder-name"] == "a"
        # b waits, naming the holder.
        waiting = await lock.acquire(leases, "ns", "l", "s3://d/m", B, [A, B], 60, NOW)
        assert not waiting.held and waiting.decision.blocker == "a"
        # Renewal within a third of the duration writes nothing; later it moves renewTime only.
        writes = leases.writes
        assert (await lock.acquire(leases, "ns", "l", "s3://d/m", A, [A, B], 60, NOW + timedelta(seconds=5))).held
        assert leases.writes == writes
        later = NOW + timedelta(seconds=30)
        assert (await lock.acquire(leases, "ns", "l", "s3://d/m", A, [A, B], 60, later)).held
        lease = leases.objects[("ns", "l")]
        assert lease["spec"]["renewTime"] == "2026-11-27T12:00:30.000000Z"
        assert lease["spec"]["acquireTime"] == "2026-11-27T12:00:00.000000Z"
        # Release by someone else changes nothing; by the holder frees it.
        assert await lock.release(leases, "ns", "l", "uid-b")
        assert leases.holder() == "uid-a"
        assert await lock.release(leases, "ns", "l", "uid-a")
        assert leases.holder() is None
        assert await lock.release(leases, "ns", "l", "uid-a")  # idempotent
        # a is finished (no longer active): b takes it over, a transition is counted.
        got = await lock.acquire(leases, "ns", "l", "s3://d/m", B, [B], 60, later)
        assert got.held and leases.holder() == "uid-b"
        assert leases.objects[("ns", "l")]["spec"]["leaseTransitions"] == 1

    run(scenario())


def test_concurrent_acquirers_exactly_one_wins() -> None:
    """Twenty reconcilers of the same dataset at once, each believing it is first (stale views):
    the API server's 409s let exactly one through."""
    leases = FakeLeases()
    candidates = [Candidate(f"2026-11-27T10:00:{i:02d}Z", f"j{i:02d}", f"uid-{i}") for i in range(20)]

    async def scenario() -> list[lock.LockState]:
        # Each sees only itself as active, the worst case of lagging indexes.
        return await asyncio.gather(*(lock.acquire(leases, "ns", "l", "s3://d/m", c, [c], 60, NOW) for c in candidates))

    states = run(scenario())
    assert sum(s.held for s in states) == 1
    winner = next(c for c, s in zip(candidates, states, strict=True) if s.held)
    assert leases.holder() == winner.uid


def test_takeover_race_on_a_dead_holder_has_one_winner() -> None:
    leases = FakeLeases()

    async def scenario() -> tuple[lock.LockState, lock.LockState]:
        await lock.acquire(leases, "ns", "l", "s3://d/m", A, [A], 60, NOW)
        # a is gone; b and c both think they are first.
        return await asyncio.gather(
            lock.acquire(leases, "ns", "l", "s3://d/m", B, [B], 60, NOW),
            lock.acquire(leases, "ns", "l", "s3://d/m", C, [C], 60, NOW),
        )

    states = run(scenario())
    assert sum(s.held for s in states) == 1
    assert leases.holder() in {"uid-b", "uid-c"}
