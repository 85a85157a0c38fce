"""The operator's memory settings and its memory report (operator/autolabel_operator/memory.py)."""

from __future__ import annotations

import logging
import os
import signal
from typing import Any

import pytest
from autolabel_operator import memory


class FakeLibc:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append((param, value))
        return 1


def test_the_operator_asks_glibc_for_two_malloc_arenas_unless_the_environment_says_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    libc = FakeLibc()
    monkeypatch.setattr(memory, "_libc", lambda: libc)
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    memory.limit_malloc_arenas()
    assert libc.calls == [(memory.M_ARENA_MAX, 2)]
    monkeypatch.setenv("MALLOC_ARENA_MAX", "8")
    memory.limit_malloc_arenas()
    assert libc.calls == [(memory.M_ARENA_MAX, 2)]


def test_sigusr2_logs_what_holds_the_memory(caplog: pytest.LogCaptureFixture) -> None:
    previous: Any = signal.getsignal(signal.SIGUSR2)
    try:
        memory.report_on_signal()
        with caplog.at_level(logging.WARNING, logger="autolabel_operator.memory"):
            os.kill(os.getpid(), signal.SIGUSR2)  # the handler runs before the next bytecode
        lines = [r.getMessage() for r in caplog.records]
        assert any(line.startswith("memory: live objects by type: ") and "dict" in line for line in lines)
    finally:
        signal.signal(signal.SIGUSR2, previous)
