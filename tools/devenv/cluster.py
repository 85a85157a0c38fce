"""A real Kubernetes control plane as local processes: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler (built from the official sources by tools/build-bins.sh), plus one Node object that
stands for this machine.

    python -m devenv.cluster up   [--state-dir .cluster]    # = make cluster-up
    python -m devenv.cluster down [--state-dir .cluster]    # = make cluster-down

The flags follow controller-runtime's envtest (sigs.k8s.io/controller-runtime/pkg/envtest). Differences, and why:
- a static token file authenticates the admin (group system:masters) and the two controllers;
- the node-lifecycle controller is off and the TaintNodesByCondition admission plugin is disabled, so the
  one Node stays Ready without a kubelet's heartbeats (the local node runner runs its pods);
- every port is picked free at start, so several clusters (tests, `make dev-up`) can run side by side.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

from devenv.procs import LocalService, ProcessGroup, StartError, ensure_binaries, free_port, http_ok, stop_pid

NODE_NAME = "local-node"
NODE_GPUS = 2
SERVICE_CIDR = "10.0.0.0/24"


COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")


class LocalCluster(LocalService):
    def __init__(self, state_dir: str | Path = ".cluster", extra_args: Mapping[str, Sequence[str]] | None = None):
        """``extra_args``: more command-line flags for a component (keys from :data:`COMPONENTS`)."""
        self.state_dir = Path(state_dir).resolve()
        self.procs = ProcessGroup(self.state_dir)
        self.kubeconfig = self.state_dir / "kubeconfig"
        self.extra_args = {name: list(args) for name, args in (extra_args or {}).items()}
        self._argv: dict[str, list[str]] = {}  # each component's command line, for restart()
        self._health: dict[str, Callable[[], bool]] = {}
        unknown = set(self.extra_args) - set(COMPONENTS)
        if unknown:
            raise ValueError(f"extra_args for unknown components {sorted(unknown)}; known: {', '.join(COMPONENTS)}")

    # ------------------------------------------------------------------ lifecycle

    name = "the local control plane"
    start_timeout = 120.0

    def _prepare(self) -> Path:
        return ensure_binaries("kube", "etcd")

    def _start(self, bins: Path, timeout: float) -> None:
        """etcd, the API server, the controller manager and the scheduler, each waited for on its health
        endpoint (etcd /health, the API server /readyz, the other two /healthz), then the Node registered;
        ``timeout`` for each of the three stages. A component that fails is named
        (:class:`devenv.procs.StartError`) with the last lines of its log."""
        certs = self.state_dir / "certs"
        certs.mkdir(parents=True)
        self._write_service_account_key(certs)
        token = secrets.token_hex(16)
        (certs / "tokens.csv").write_text(f'{token},admin,admin,"system:masters"\n')

        etcd_port, etcd_peer, api_port = free_port(), free_port(), free_port()
        cm_port, sched_port = free_port(), free_port()
        self._run("etcd", [
            str(bins / "etcd"), "--name", "local", "--data-dir", str(self.state_dir / "etcd"),
            "--listen-client-urls", f"http://127.0.0.1:{etcd_port}",
            "--advertise-client-urls", f"http://127.0.0.1:{etcd_port}",
            "--listen-peer-urls", f"http://127.0.0.1:{etcd_peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{etcd_peer}",
            "--initial-cluster", f"local=http://127.0.0.1:{etcd_peer}",
            "--unsafe-no-fsync", "--log-level", "warn",
        ])  # fmt: skip
        self._health["etcd"] = lambda: http_ok(f"http://127.0.0.1:{etcd_port}/health")
        self.procs.wait_healthy({"etcd": self._health["etcd"]}, timeout)

        self._run("kube-apiserver", [
            str(bins / "kube-apiserver"),
            "--etcd-servers", f"http://127.0.0.1:{etcd_port}",
            "--cert-dir", str(certs), "--secure-port", str(api_port),
            "--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1",
            "--service-cluster-ip-range", SERVICE_CIDR, "--allow-privileged=true",
            "--disable-admission-plugins", "ServiceAccount,TaintNodesByCondition",
            "--authorization-mode", "RBAC", "--token-auth-file", str(certs / "tokens.csv"),
            "--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
            "--service-account-key-file", str(certs / "sa.pub"),
            "--service-account-signing-key-file", str(certs / "sa.key"),
            "--v", "1",
        ])  # fmt: skip
        auth = {"Authorization": f"Bearer {token}"}
        server = f"https://127.0.0.1:{api_port}"
        self._health["kube-apiserver"] = lambda: http_ok(f"{server}/readyz", auth, insecure=True)
        self.procs.wait_healthy({"kube-apiserver": self._health["kube-apiserver"]}, timeout)
        self._write_kubeconfig(server, token, certs / "apiserver.crt")

        # Both serve HTTPS with a self-signed certificate on --secure-port; /healthz is in their default
        # --authorization-always-allow-paths and needs no credentials.
        self._run("kube-controller-manager", [
            str(bins / "kube-controller-manager"), "--kubeconfig", str(self.kubeconfig),
            "--bind-address", "127.0.0.1", "--secure-port", str(cm_port), "--leader-elect=false",
            "--controllers", "*,-node-lifecycle-controller,-cloud-node-lifecycle-controller",
            "--root-ca-file", str(certs / "apiserver.crt"),
            "--service-account-private-key-file", str(certs / "sa.key"),
            "--concurrent-job-syncs", "10", "--v", "1",
        ])  # fmt: skip
        self._run("kube-scheduler", [
            str(bins / "kube-scheduler"), "--kubeconfig", str(self.kubeconfig),
            "--bind-address", "127.0.0.1", "--secure-port", str(sched_port), "--leader-elect=false",
            "--v", "1",
        ])  # fmt: skip
        self._health["kube-controller-manager"] = lambda: http_ok(f"https://127.0.0.1:{cm_port}/healthz", insecure=True)
        self._health["kube-scheduler"] = lambda: http_ok(f"https://127.0.0.1:{sched_port}/healthz", insecure=True)
        self.procs.wait_healthy(
            {name: self._health[name] for name in ("kube-controller-manager", "kube-scheduler")}, timeout
        )
        (self.state_dir / "cluster.json").write_text(
            json.dumps(
                {
                    "server": server,
                    "etcd": f"http://127.0.0.1:{etcd_port}",
                    "controller-manager": f"https://127.0.0.1:{cm_port}",
                    "scheduler": f"https://127.0.0.1:{sched_port}",
                },
                indent=1,
            )
        )
        self._register_node()

    def _run(self, component: str, argv: list[str]) -> None:
        self._argv[component] = [*argv, *self.extra_args.get(component, [])]
        self.procs.start(component, self._argv[component])

    def restart(self, component: str, down_seconds: float = 0.0, kill: bool = False, timeout: float = 120) -> float:
        """Stops one component of a cluster this object started (SIGTERM, or SIGKILL with ``kill``), waits
        ``down_seconds``, starts it again with the same command line (same ports, data and certificates:
        etcd keeps its data, the API server its serving certificate, so clients and the kubeconfig stay
        valid) and returns once its health endpoint answers: the seconds it was down. For fault tests
        (an API server upgrade, an etcd restart)."""
        if component not in self._argv:
            raise ValueError(f"{component!r} was not started by this object; started: {', '.join(self._argv)}")
        pid = self.procs.alive().get(component)
        stopped_at = time.monotonic()
        if pid is not None:
            if kill:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
            stop_pid(pid)
        time.sleep(down_seconds)
        self.procs.start(component, self._argv[component])
        self.procs.wait_healthy({component: self._health[component]}, timeout)
        return time.monotonic() - stopped_at

    # ------------------------------------------------------------------ helpers

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        """Runs the kubectl built with the control plane against this cluster."""
        from devenv.procs import bin_dir

        result = subprocess.run(
            [str(bin_dir() / "kubectl"), "--kubeconfig", str(self.kubeconfig), *args],
            input=input,
            capture_output=True,
            text=True,
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed ({result.returncode}): {result.stderr}")
        return result

    def _write_service_account_key(self, certs: Path) -> None:
        subprocess.run(["openssl", "genrsa", "-out", str(certs / "sa.key"), "2048"], check=True,
                       capture_output=True)
        subprocess.run(["openssl", "rsa", "-in", str(certs / "sa.key"), "-pubout", "-out", str(certs / "sa.pub")],
                       check=True, capture_output=True)

    def _write_kubeconfig(self, server: str, token: str, ca_file: Path) -> None:
        # The apiserver's self-signed serving certificate (written to --cert-dir) is its own CA bundle.
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "local", "cluster": {"server": server, "certificate-authority": str(ca_file)}}],
            "users": [{"name": "admin", "user": {"token": token}}],
            "contexts": [{"name": "local", "context": {"cluster": "local", "user": "admin"}}],
            "current-context": "local",
        }
        tmp = self.kubeconfig.with_suffix(".tmp")
        tmp.write_text(json.dumps(config, indent=1))
        tmp.replace(self.kubeconfig)
        self.kubeconfig.chmod(0o600)

    def _register_node(self) -> None:
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        capacity = {"cpu": "2", "memory": "24Gi", "pods": "110", "nvidia.com/gpu": str(NODE_GPUS),
                    "ephemeral-storage": "50Gi"}
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": NODE_NAME,
                "labels": {
                    "kubernetes.io/hostname": NODE_NAME,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "autolabel.dev/local-node": "true",
                },
            },
            "spec": {},
        }
        self.kubectl("create", "-f", "-", input=json.dumps(node))
        status = {
            "status": {
                "capacity": capacity,
                "allocatable": capacity,
                "conditions": [
                    {"type": "Ready", "status": "True", "reason": "LocalNodeRunner",
                     "message": "this machine, run by tools/devenv/node.py",
                     "lastHeartbeatTime": now, "lastTransitionTime": now}
                ],
                "addresses": [{"type": "InternalIP", "address": "127.0.0.1"},
                              {"type": "Hostname", "address": NODE_NAME}],
                "nodeInfo": {"architecture": "amd64", "operatingSystem": "linux", "kubeletVersion": "local",
                             "kubeProxyVersion": "", "bootID": "", "machineID": "", "systemUUID": "",
                             "containerRuntimeVersion": "local-process://", "kernelVersion": "",
                             "osImage": ""},
            }
        }
        self.kubectl("patch", "node", NODE_NAME, "--subresource=status", "--type=merge", "-p", json.dumps(status))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devenv.cluster", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--state-dir", default=".cluster")
    args = parser.parse_args(argv)
    cluster = LocalCluster(args.state_dir)
    if args.command == "up":
        if cluster.procs.alive():
            print(f"cluster already running ({cluster.state_dir}); kubeconfig: {cluster.kubeconfig}")
            return 0
        try:
            cluster.start()
        except StartError as exc:
            print(f"cluster up failed: {exc}", file=sys.stderr)
            for note in getattr(exc, "__notes__", []):
                print(note, file=sys.stderr)
            return 1
        version = cluster.kubectl("version", "-o", "json").stdout
        server = json.loads(version)["serverVersion"]["gitVersion"]
        print(f"cluster up: Kubernetes {server}; kubeconfig: {cluster.kubeconfig}")
        print(f"  export KUBECONFIG={cluster.kubeconfig}")
    elif args.command == "down":
        stopped = cluster.stop()
        print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
    else:
        alive = cluster.procs.alive()
        print(json.dumps(alive, indent=1) if alive else "not running")
        return 0 if alive else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
