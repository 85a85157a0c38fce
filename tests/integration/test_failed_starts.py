"""A local service whose start fails half-way names the component that failed, with its log, and leaves
nothing running: what had started before it is stopped (`LocalCluster.start`, `MinioServer.start`, and so
`make cluster-up`, `make s3-up` and the session fixtures)."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import psutil
import pytest
from devenv import s3
from devenv.cluster import LocalCluster
from devenv.procs import ProcessGroup, StartError
from devenv.s3 import MinioServer


def running_in(folder: Path) -> list[str]:
    """Live processes whose working directory is ``folder`` (every process a ProcessGroup starts)."""
    found = []
    for proc in psutil.process_iter(["cwd", "cmdline", "status"]):
        if proc.info["cwd"] == str(folder) and proc.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(f"{proc.pid} {' '.join(proc.info['cmdline'] or [])[:160]}")
    return found


def test_a_component_that_never_answers_is_named_with_its_log(tmp_path: Path) -> None:
    procs = ProcessGroup(tmp_path)
    procs.start("sleeper", [sys.executable, "-c", "print('listening soon', flush=True); import time; time.sleep(60)"])
    procs.start("quitter", [sys.executable, "-c", "print('bad flag'); raise SystemExit(3)"])
    try:
        started = time.monotonic()
        with pytest.raises(StartError) as exited:
            procs.wait_healthy({"sleeper": lambda: False, "quitter": lambda: False}, timeout=30)
        assert time.monotonic() - started < 10  # an exit is reported at once, not after the timeout
        assert exited.value.component == "quitter"
        assert "quitter exited with code 3 while starting" in str(exited.value) and "bad flag" in str(exited.value)
        with pytest.raises(StartError) as silent:
            procs.wait_healthy({"sleeper": lambda: False}, timeout=0.5)
        assert silent.value.component == "sleeper"
        assert "sleeper did not become healthy within 0.5s" in str(silent.value)
        assert "listening soon" in str(silent.value)
    finally:
        stopped = procs.stop_all()
    assert [s.split(" (")[0] for s in stopped] == ["sleeper"]  # quitter had exited already
    assert running_in(tmp_path) == []


@pytest.mark.needs_cluster
@pytest.mark.parametrize(
    ("broken", "started_before"),
    [
        ("kube-apiserver", ["etcd"]),
        ("kube-scheduler", ["etcd", "kube-apiserver", "kube-controller-manager"]),
    ],
)
def test_a_cluster_that_fails_half_way_names_the_component_and_leaves_nothing_running(
    tmp_path: Path, broken: str, started_before: list[str]
) -> None:
    state = tmp_path / "cluster"
    cluster = LocalCluster(state, extra_args={broken: ["--no-such-flag"]})
    try:
        with pytest.raises(StartError) as failed:
            cluster.start(timeout=90)
        assert failed.value.component == broken
        message = str(failed.value)
        assert f"{broken} exited with code" in message and "unknown flag: --no-such-flag" in message, message
        (note,) = failed.value.__notes__
        for name in started_before:
            assert f"{name} (pid " in note, note  # it was running, and it was stopped
        assert running_in(state) == []
        assert not (state / "pids.json").exists()
        assert cluster.procs.alive() == {}
    finally:
        cluster.stop()


@pytest.mark.needs_s3
def test_an_s3_server_that_cannot_listen_is_named_and_stopped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        monkeypatch.setattr(s3, "free_port", lambda: int(taken.getsockname()[1]))
        server = MinioServer(tmp_path / "s3")
        try:
            with pytest.raises(StartError) as failed:
                server.start(timeout=60)
            assert failed.value.component == "minio"
            assert "minio exited with code" in str(failed.value), failed.value
            assert running_in(server.state_dir) == []
        finally:
            server.stop()
