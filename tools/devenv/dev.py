"""The local development environment: control plane + S3 server + local node runner + operator.

    python -m devenv.dev up     [--dir .dev]    # = make dev-up
    python -m devenv.dev down   [--dir .dev]    # = make dev-down
    python -m devenv.dev status [--dir .dev]

``up`` starts, each in the background with its pid recorded and its log under ``<dir>/logs``: the control
plane (``devenv.cluster.LocalCluster('.cluster')``, reused when ``make cluster-up`` already runs it),
MinIO (``<dir>/s3``), the CRDs from ``crds/``, the local node runner (``devenv.node``, pods' folders and
logs under ``<dir>/node``) and the operator (``autolabel-operator``, with a flavor catalogue written to
``<dir>/flavors.yaml`` and the MinIO endpoint and credentials as its storage defaults). It writes
``<dir>/env`` for ``source``. ``up`` is idempotent; ``down`` stops exactly what ``up`` started (by pid),
in reverse order, checks that none of its ports is still listening, and says what it stopped.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from devenv.cluster import LocalCluster
from devenv.procs import REPO_ROOT, ProcessGroup, free_port, http_ok, port_is_listening, wait_until
from devenv.s3 import MinioServer

CLUSTER_DIR = REPO_ROOT / ".cluster"
NODE_NAME = "local-node"

# `cpu` runs on this machine; `gpu-1` asks for a GPU (the local Node advertises 2, so it is schedulable
# here too; its pods get one of this machine's real GPUs when one is free, else the worker uses the CPU).
FLAVORS_YAML = """\
# Flavor catalogue of the local development environment (written by `make dev-up`).
default: cpu
flavors:
  cpu:
    resources:
      requests: {cpu: "1", memory: 2Gi}
  gpu-1:
    resources:
      requests: {cpu: "1", memory: 2Gi, nvidia.com/gpu: 1}
      limits: {nvidia.com/gpu: 1}
"""


class DevEnv:
    """What ``up`` started is recorded in ``<dir>/state.json`` so that ``down`` stops exactly that."""

    def __init__(self, directory: str | Path = ".dev", cluster_dir: str | Path = CLUSTER_DIR):
        self.dir = Path(directory).resolve()
        self.cluster = LocalCluster(cluster_dir)
        self.s3 = MinioServer(self.dir / "s3")
        self.procs = ProcessGroup(self.dir)
        self.state_file = self.dir / "state.json"
        self.env_file = self.dir / "env"

    # ------------------------------------------------------------------ state

    def _state(self) -> dict[str, Any]:
        return dict(json.loads(self.state_file.read_text())) if self.state_file.exists() else {}

    def _save(self, state: dict[str, Any]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        tmp.replace(self.state_file)

    def running(self) -> dict[str, str]:
        """What is up now: component -> how it is known to run."""
        up: dict[str, str] = {}
        if self.cluster.procs.alive():
            up["cluster"] = str(self.cluster.kubeconfig)
        if self.s3.procs.alive():
            up["s3"] = self.s3.endpoint_url
        for name, pid in self.procs.alive().items():
            up[name] = f"pid {pid}"
        return up

    # ------------------------------------------------------------------ up

    def up(self, out: Any = sys.stdout) -> int:
        """Start whatever is not running yet; returns 1 when the environment is incomplete (the operator
        is missing or failed to start), 0 otherwise."""
        self.dir.mkdir(parents=True, exist_ok=True)
        state = self._state()
        already = self.running()
        if {"cluster", "s3", "node-runner", "operator"} <= set(already):
            print(f"dev environment already running ({self.dir}); source {self.env_file}", file=out)
            return 0

        if "cluster" in already and state.get("cluster_started"):
            print(f"control plane: running ({self.cluster.state_dir})", file=out)
        elif "cluster" in already:
            print(f"control plane: already running from {self.cluster.state_dir} (reused; down leaves it)", file=out)
        else:
            print("control plane: starting ...", file=out, flush=True)
            state["cluster_started"] = True  # recorded first: a half-started control plane is ours to stop
            self._save(state)
            self.cluster.start()
        state["cluster_ports"] = self._cluster_ports()

        if "s3" not in already:
            print("S3 server (MinIO): starting ...", file=out, flush=True)
            state["s3_started"] = True
            self._save(state)
            self.s3.start()
        state["s3_endpoint"] = self.s3.endpoint_url
        self._save(state)

        crds = REPO_ROOT / "crds"
        self.cluster.kubectl("apply", "-f", str(crds))
        self.cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")

        self._write_env_file()
        (self.dir / "flavors.yaml").write_text(FLAVORS_YAML)

        alive = self.procs.alive()
        if "node-runner" not in alive:
            log = self.procs.start(
                "node-runner",
                [sys.executable, "-m", "devenv.node", "--kubeconfig", str(self.cluster.kubeconfig),
                 "--node-name", NODE_NAME, "--state-dir", str(self.dir / "node")],
                env={"PYTHONPATH": _pythonpath()},
            )  # fmt: skip

            def runner_ready() -> bool:
                if "node-runner" not in self.procs.alive():
                    raise RuntimeError(f"the local node runner exited at start; see {log}:\n{_tail(log)}")
                return "started (state in" in log.read_text()

            wait_until(runner_ready, 60, "local node runner", log)
            print(f"local node runner: started (log {log})", file=out)

        status = 0
        if "operator" not in alive:
            status = self._start_operator(state, out)
        self._save(state)
        self._print_summary(out)
        return status

    def _start_operator(self, state: dict[str, Any], out: Any) -> int:
        script = Path(sys.executable).parent / "autolabel-operator"
        if importlib.util.find_spec("autolabel_operator.main") is None or not script.exists():
            print("operator: MISSING — the autolabel_operator package (operator/) or its console script "
                  f"{script} is not installed; jobs will not be reconciled", file=out)  # fmt: skip
            return 1
        metrics, health = free_port(), free_port()
        env = {
            "KUBECONFIG": str(self.cluster.kubeconfig),
            "AUTOLABEL_FLAVORS": str(self.dir / "flavors.yaml"),
            "AUTOLABEL_S3_ENDPOINT": self.s3.endpoint_url,
            "AUTOLABEL_S3_REGION": self.s3.region,
            "AWS_ACCESS_KEY_ID": self.s3.access_key,
            "AWS_SECRET_ACCESS_KEY": self.s3.secret_key,
            # One developer's machine: jobs in any namespace may use the MinIO keys for any bucket. Never on
            # a shared cluster (docs/operations.md, "Storage credentials").
            "AUTOLABEL_DEFAULT_CREDENTIALS_NAMESPACES": "*",
            "AUTOLABEL_ALLOWED_BUCKETS": "*",
            "AUTOLABEL_METRICS_PORT": str(metrics),
            "AUTOLABEL_LIVENESS": f"http://127.0.0.1:{health}/healthz",
        }
        log = self.procs.start("operator", [str(script)], env=env)
        state["operator_ports"] = [metrics, health]
        pid = self.procs.alive().get("operator")

        def healthy() -> bool:
            if pid is None or "operator" not in self.procs.alive():
                raise RuntimeError(f"the operator exited at start; see {log}:\n{_tail(log)}")
            return http_ok(f"http://127.0.0.1:{health}/healthz")

        try:
            wait_until(healthy, 90, "operator liveness endpoint", log)
        except (RuntimeError, TimeoutError) as exc:
            print(f"operator: FAILED — {exc}", file=out)
            return 1
        print(f"operator: started (log {log}; metrics http://127.0.0.1:{metrics}/metrics)", file=out)
        return 0

    def _cluster_ports(self) -> list[int]:
        info = json.loads((self.cluster.state_dir / "cluster.json").read_text())
        return [int(url.rsplit(":", 1)[1].rstrip("/")) for url in (info["server"], info["etcd"])]

    def _write_env_file(self) -> None:
        values = {"KUBECONFIG": str(self.cluster.kubeconfig), **self.s3.env()}
        lines = ["# Written by `make dev-up`: source it to reach the local cluster and S3 server."]
        lines += [f"export {key}={shlex.quote(value)}" for key, value in values.items()]
        self.env_file.write_text("\n".join(lines) + "\n")

    def _print_summary(self, out: Any) -> None:
        print(f"\nenvironment: source {self.env_file}", file=out)
        print(self.env_file.read_text().split("\n", 1)[1], end="", file=out)
        print(f"pods' logs: {self.dir / 'node' / 'pods'}/<namespace>_<pod>_<uid>/logs/<container>.log", file=out)

    # ------------------------------------------------------------------ down

    def down(self, out: Any = sys.stdout) -> int:
        state = self._state()
        stopped = self.procs.stop_all(timeout=40)  # operator first, then the node runner (it stops its pods)
        if state.get("s3_started"):
            stopped += self.s3.stop()
        if state.get("cluster_started"):
            stopped += self.cluster.stop()
        elif state:
            print("control plane: left running (it ran before dev-up; `make cluster-down` stops it)", file=out)
        ports = list(state.get("operator_ports", []))
        if state.get("cluster_started"):
            ports += state.get("cluster_ports", [])
        if state.get("s3_started") and state.get("s3_endpoint"):
            ports.append(int(state["s3_endpoint"].rsplit(":", 1)[1]))
        listening = [p for p in ports if port_is_listening(p)]
        print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"), file=out)
        for name in ("state.json", "env", "flavors.yaml"):
            (self.dir / name).unlink(missing_ok=True)
        shutil.rmtree(self.dir / "node", ignore_errors=True)
        if listening:
            print(f"still listening on 127.0.0.1 ports {listening}", file=out)
            return 1
        return 0


def _pythonpath() -> str:
    tools = str(REPO_ROOT / "tools")
    current = os.environ.get("PYTHONPATH")
    return f"{tools}{os.pathsep}{current}" if current else tools


def _tail(log: Path, lines: int = 20) -> str:
    try:
        return "\n".join(log.read_text().splitlines()[-lines:])
    except OSError:
        return ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devenv.dev", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--dir", default=".dev", help="state, pid files and logs (default .dev)")
    parser.add_argument("--cluster-dir", default=str(CLUSTER_DIR), help="the control plane's state (.cluster)")
    args = parser.parse_args(argv)
    env = DevEnv(args.dir, args.cluster_dir)
    if args.command == "up":
        started = time.monotonic()
        try:
            status = env.up()
        except Exception as exc:
            print(f"dev-up failed: {exc}\n(`make dev-down` stops what was started)", file=sys.stderr)
            return 1
        print(f"dev-up took {time.monotonic() - started:.0f}s")
        return status
    if args.command == "down":
        return env.down()
    up = env.running()
    print(json.dumps(up, indent=1) if up else "not running")
    return 0 if up else 1


if __name__ == "__main__":
    sys.exit(main())
