"""``make dev-up`` / ``make dev-down`` (tools/devenv/dev.py): everything comes up, works together, and
``down`` leaves no process and no listening port behind. One slow test: it starts its own control plane."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

pytestmark = [pytest.mark.needs_cluster, pytest.mark.needs_s3]  # starts its own, as `make dev-up`

REPO_ROOT = Path(__file__).resolve().parents[2]


def dev(*args: str, dev_dir: Path, cluster_dir: Path, timeout: float = 400) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "devenv.dev", *args, "--dir", str(dev_dir), "--cluster-dir", str(cluster_dir)],
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT / "tools")},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def recorded_pids(*pid_files: Path) -> dict[str, int]:
    pids: dict[str, int] = {}
    for pid_file in pid_files:
        pids.update(json.loads(pid_file.read_text()))
    return pids


def listening_ports(pid: int) -> set[int]:
    try:
        conns = psutil.Process(pid).net_connections(kind="tcp")
    except psutil.NoSuchProcess:
        return set()
    return {c.laddr.port for c in conns if c.status == psutil.CONN_LISTEN}


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def port_open(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_dev_up_then_down_leaves_nothing_behind(tmp_path: Path) -> None:
    dev_dir, cluster_dir = tmp_path / "dev", tmp_path / "cluster"
    try:
        up = dev("up", dev_dir=dev_dir, cluster_dir=cluster_dir)
        assert up.returncode == 0, up.stdout + up.stderr
        assert "operator: started" in up.stdout and "local node runner: started" in up.stdout

        env_text = (dev_dir / "env").read_text()
        env = dict(
            line.removeprefix("export ").split("=", 1) for line in env_text.splitlines() if line.startswith("export")
        )
        assert set(env) == {
            "KUBECONFIG",
            "AWS_ENDPOINT_URL",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_REGION",
        }
        sourced = subprocess.run(
            ["bash", "-c", f"source {dev_dir / 'env'} && echo $KUBECONFIG $AWS_ENDPOINT_URL"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert sourced.stdout.split() == [env["KUBECONFIG"], env["AWS_ENDPOINT_URL"]]
        flavors = (dev_dir / "flavors.yaml").read_text()
        assert "cpu:" in flavors and "nvidia.com/gpu: 1" in flavors

        # Everything works together: the S3 server answers, the operator's metrics too, and a pod runs.
        with urllib.request.urlopen(f"{env['AWS_ENDPOINT_URL']}/minio/health/live", timeout=5) as resp:
            assert resp.status == 200
        state = json.loads((dev_dir / "state.json").read_text())
        metrics_port = state["operator_ports"][0]
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as resp:
            assert resp.status == 200
        kubectl = [str(REPO_ROOT / ".cache" / "bin" / "kubectl"), "--kubeconfig", env["KUBECONFIG"]]
        subprocess.run(
            [*kubectl, "run", "probe", "--image=none", "--restart=Never", "--command", "--", "sh", "-c", "sleep 300"],
            check=True,
            capture_output=True,
        )
        deadline = time.monotonic() + 60
        phase = ""
        while time.monotonic() < deadline and phase != "Running":
            out = subprocess.run([*kubectl, "get", "pod", "probe", "-o", "jsonpath={.status.phase}"],
                                 capture_output=True, text=True)  # fmt: skip
            phase = out.stdout
            time.sleep(0.5)
        assert phase == "Running"
        container_id = subprocess.run(
            [*kubectl, "get", "pod", "probe", "-o", "jsonpath={.status.containerStatuses[0].containerID}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        pod_pid = int(container_id.removeprefix("local://"))

        again = dev("up", dev_dir=dev_dir, cluster_dir=cluster_dir)
        assert again.returncode == 0 and "already running" in again.stdout

        pids = recorded_pids(cluster_dir / "pids.json", dev_dir / "s3" / "pids.json", dev_dir / "pids.json")
        assert set(pids) >= {"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "minio",
                             "node-runner", "operator"}  # fmt: skip
        ports = set().union(*(listening_ports(pid) for pid in pids.values()))
        assert len(ports) >= 5
    finally:
        down = dev("down", dev_dir=dev_dir, cluster_dir=cluster_dir)
    assert down.returncode == 0, down.stdout + down.stderr
    for name in ("operator", "node-runner", "minio", "kube-apiserver", "etcd"):
        assert name in down.stdout
    assert not [name for name, pid in pids.items() if alive(pid)]
    assert not alive(pod_pid)
    assert not [port for port in ports if port_open(port)]
    assert not (dev_dir / "env").exists()

    nothing = dev("down", dev_dir=dev_dir, cluster_dir=cluster_dir)
    assert nothing.returncode == 0 and "nothing was running" in nothing.stdout
