"""What every test run checks, unit and integration alike.

- Tests say what they need: a test that uses the ``cluster`` fixture (directly or through another
  fixture, such as ``namespace``) must be marked ``needs_cluster``, one that uses ``s3_server`` (or
  ``storage``, ...) ``needs_s3``; a test that forgets fails before anything is started. Unit tests
  (tests/unit) need neither: the fixtures live in tests/integration/conftest.py, and a unit test marked
  as needing one fails too.
- Nothing outlives the run: at the end of the session, any process still running whose command line,
  working directory or environment points into this run's temporary folder (a control plane, an S3
  server, a node runner's pod, an operator) is killed and listed in the summary as left behind.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

TESTS = Path(__file__).resolve().parent

# fixture -> the marker a test using it must carry
NEEDS = {"cluster": "needs_cluster", "s3_server": "needs_s3", "label_studio": "needs_label_studio"}


def missing_markers(item: pytest.Item) -> list[str]:
    """The ``needs_*`` markers ``item`` lacks for the fixtures it uses (its whole fixture closure)."""
    used = getattr(item, "fixturenames", ())
    return [marker for fixture, marker in NEEDS.items() if fixture in used and item.get_closest_marker(marker) is None]


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.path.is_relative_to(TESTS / "unit"):
        used = [f for f in NEEDS if f in getattr(item, "fixturenames", ())]
        marked = [m for m in NEEDS.values() if item.get_closest_marker(m) is not None]
        if used or marked:
            what = " and ".join([*(f"uses {f}" for f in used), *(f"is marked {m}" for m in marked)])
            pytest.fail(
                f"{item.nodeid} is a unit test but {what}: unit tests start no server (move it to tests/integration)",
                pytrace=False,
            )
    missing = missing_markers(item)
    if missing:
        uses = ", ".join(f for f, m in NEEDS.items() if m in missing)
        marks = ", ".join(f"pytest.mark.{m}" for m in missing)
        pytest.fail(
            f"{item.nodeid} uses {uses} but is not marked {' and '.join(missing)}: add "
            f"`pytestmark = [{marks}]` to its module (or mark the test)",
            pytrace=False,
        )


# ------------------------------------------------------------------------ nothing left behind

_LEFT_BEHIND: list[str] = []


def _points_into(proc: psutil.Process, folder: str) -> bool:
    inside = (folder, folder + os.sep)

    def hit(text: str) -> bool:
        return text == folder or folder + os.sep in text

    try:
        if any(hit(arg) for arg in proc.cmdline()):
            return True
        if proc.cwd().startswith(inside[1]) or proc.cwd() == inside[0]:
            return True
        return any(hit(value) for value in proc.environ().values())
    except (psutil.Error, OSError):
        return False


def processes_under(folder: Path) -> list[psutil.Process]:
    """Running processes (not zombies) of this user, other than this one and its ancestors, that point
    into ``folder``."""
    mine = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
    uid = os.getuid()
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.pid in mine or proc.uids().real != uid or proc.status() == psutil.STATUS_ZOMBIE:
                continue
        except psutil.Error:
            continue
        if _points_into(proc, str(folder)):
            found.append(proc)
    return found


def kill_processes_under(folder: Path) -> list[str]:
    """SIGKILLs every process that :func:`processes_under` finds; returns them as ``pid command``."""
    killed = []
    procs = processes_under(folder)
    for proc in procs:
        try:
            killed.append(f"{proc.pid} {' '.join(proc.cmdline())[:200]}")
            proc.send_signal(signal.SIGKILL)
        except psutil.Error:
            continue
    psutil.wait_procs(procs, timeout=10)
    return killed


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """After a test's own fixtures are finalized: kills what is still running in its ``tmp_path`` (a
    control plane that a failing test started but did not get to stop), and says so."""
    tmp_path = getattr(item, "funcargs", {}).get("tmp_path")
    try:
        return (yield)
    finally:
        if isinstance(tmp_path, Path):
            _LEFT_BEHIND.extend(f"{item.nodeid}: {line}" for line in kill_processes_under(tmp_path))


@pytest.fixture(scope="session", autouse=True)
def _nothing_left_behind(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Torn down last: kills what the session's own finalizers missed (in any of its temporary folders),
    and says so."""
    yield
    _LEFT_BEHIND.extend(f"session: {line}" for line in kill_processes_under(tmp_path_factory.getbasetemp()))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _LEFT_BEHIND:
        terminalreporter.section("processes left behind by tests and fixtures (killed)", red=True)
        for line in _LEFT_BEHIND:
            terminalreporter.line(line)
