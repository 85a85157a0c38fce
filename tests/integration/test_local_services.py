"""`make cluster-up/down` and the S3 server: real processes that come up and leave nothing behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from devenv.procs import REPO_ROOT, pid_alive, port_is_listening

pytestmark = [pytest.mark.needs_cluster, pytest.mark.needs_s3]  # starts its own


def _devenv(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "tools")}
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, env=env, check=True)


def _listening_ports(pids: list[int]) -> set[int]:
    """TCP ports in LISTEN state owned by the given pids (from /proc, no extra tools)."""
    inodes: set[str] = set()
    for pid in pids:
        fd_dir = Path(f"/proc/{pid}/fd")
        for fd in fd_dir.iterdir() if fd_dir.exists() else []:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A = LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def test_cluster_up_serves_a_real_api_and_down_leaves_nothing_behind(tmp_path: Path) -> None:
    state = tmp_path / "cluster"
    up = _devenv("devenv.cluster", "up", "--state-dir", str(state))
    assert "Kubernetes v1.36" in up.stdout
    pids = list(json.loads((state / "pids.json").read_text()).values())
    assert len(pids) == 4 and all(pid_alive(p) for p in pids)
    ports = _listening_ports(pids)
    assert len(ports) >= 4, ports  # etcd client+peer, apiserver, controller manager, scheduler
    kubeconfig = state / "kubeconfig"
    nodes = subprocess.run([str(REPO_ROOT / ".cache/bin/kubectl"), "--kubeconfig", str(kubeconfig), "get", "nodes",
                            "-o", "json"], capture_output=True, text=True, check=True)
    node = json.loads(nodes.stdout)["items"][0]
    assert node["metadata"]["name"] == "local-node"
    assert node["status"]["allocatable"]["nvidia.com/gpu"] == "2"

    down = _devenv("devenv.cluster", "down", "--state-dir", str(state))
    assert "kube-apiserver" in down.stdout
    assert not any(pid_alive(p) for p in pids)
    assert not any(port_is_listening(p) for p in ports)
    assert not state.exists()


def test_s3_server_speaks_s3_and_stops_cleanly(tmp_path: Path) -> None:
    from devenv.s3 import MinioServer

    server = MinioServer(tmp_path / "s3").start()
    pid = next(iter(server.procs.alive().values()))
    port = int(server.endpoint_url.rsplit(":", 1)[1])
    try:
        server.make_bucket("probe")
        client = server.client()
        client.put_object(Bucket="probe", Key="a/b.txt", Body=b"hello")
        assert client.get_object(Bucket="probe", Key="a/b.txt")["Body"].read() == b"hello"
    finally:
        server.stop()
    assert not pid_alive(pid)
    assert not port_is_listening(port)
