"""The operator's memory after bursts: glibc malloc keeps what a burst of reconciles freed in one arena per
thread, so RSS stays at the burst's high-water mark; and a report of what holds memory, on a signal.
Measured in docs/benchmarks.md, "Operator at scale". (Calling ``malloc_trim`` every 30 s was tried: 7 MiB
back once after 100 jobs, nothing after 1,000; not kept.)"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os
import signal
import tracemalloc
from collections import Counter

log = logging.getLogger(__name__)

M_ARENA_MAX = -8  # glibc's mallopt parameter (malloc.h)


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def limit_malloc_arenas(arenas: int = 2) -> None:
    """At most ``arenas`` malloc arenas (glibc's default: 8 per core), unless ``MALLOC_ARENA_MAX`` says
    otherwise; call before any thread starts. Each storage thread would get an arena of its own: 100 jobs
    at once left 292 MiB RSS with the default, 224 MiB with 2 arenas."""
    libc = _libc()
    if libc is not None and "MALLOC_ARENA_MAX" not in os.environ:
        with contextlib.suppress(AttributeError):
            libc.mallopt(M_ARENA_MAX, arenas)


def report_on_signal(signum: int = signal.SIGUSR2, top: int = 15) -> None:
    """``kill -USR2 <operator>`` logs what holds the operator's memory: the live objects by type (gc) and,
    when the operator runs with ``PYTHONTRACEMALLOC=N``, the source lines that allocated most of what is
    still alive. For looking into RSS, not for normal operation."""

    def report(*_: object) -> None:
        counts = Counter(type(obj).__name__ for obj in gc.get_objects())
        log.warning("memory: live objects by type: %s", ", ".join(f"{n} {c}" for n, c in counts.most_common(top)))
        if tracemalloc.is_tracing():
            snapshot = tracemalloc.take_snapshot()
            stats = snapshot.statistics("lineno")
            total = sum(s.size for s in stats)
            log.warning("memory: %.1f MiB traced in %d blocks", total / 2**20, sum(s.count for s in stats))
            for stat in stats[:top]:
                log.warning("memory: %s", stat)

    with contextlib.suppress(ValueError, AttributeError):  # not the main thread, or no such signal
        signal.signal(signum, report)
