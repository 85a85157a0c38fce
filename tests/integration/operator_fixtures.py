"""Helpers for the integration tests (no fixtures: those are in ``conftest.py``): the operator and the local
node runner as subprocesses (killable with SIGKILL and restartable), datasets in the S3 server,
AutoLabelJobs via kubectl.

Imported as ``from .operator_fixtures import ...`` by ``conftest.py`` and ``test_operator_*.py``, and as
``operator_fixtures`` by ``benchmarks/bench_operator.py`` (which puts this folder on ``sys.path``)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import yaml
from devenv.cluster import LocalCluster
from devenv.s3 import MinioServer

REPO = Path(__file__).resolve().parents[2]
FAKE_WORKER = REPO / "tests" / "fakeworker.py"
BUCKET = "datasets"
T = TypeVar("T")

FLAVORS = """
default: cpu
flavors:
  cpu:
    resources: {requests: {cpu: 10m, memory: 64Mi}}
  gpu-1:
    resources: {limits: {nvidia.com/gpu: 1}}
  gpu-8:
    resources: {limits: {nvidia.com/gpu: 8}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(fn: Callable[[], T], timeout: float, what: str, interval: float = 0.3) -> T:
    """Poll ``fn`` until it returns something truthy; fail naming ``what`` and the last value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")


class Process:
    """A background process with its log file, stopped by pid (SIGTERM, then SIGKILL)."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.argv, self.env, self.log = argv, env, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        out = open(self.log, "ab")  # noqa: SIM115 - kept open for the child's lifetime
        self.proc = subprocess.Popen(
            self.argv, env=self.env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True
        )
        out.close()

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL to its process group: no cleanup handlers, like a crashed or evicted operator pod."""
        if self.proc is not None:
            self._signal_group(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        """SIGTERM to its process group (also when the leader has exited but left children), SIGKILL after 15 s."""
        if self.proc is None:
            return
        self._signal_group(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.kill()
        self._signal_group(signal.SIGKILL)  # whatever of its group outlived the leader

    def _signal_group(self, sig: int) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    def tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@contextlib.contextmanager
def control_plane(state: Path, extra_args: dict[str, list[str]] | None = None) -> Iterator[LocalCluster]:
    """A local control plane (for the benchmarks) with the AutoLabelJob CRD established; stopped on exit."""
    cluster = LocalCluster(state, extra_args)
    cluster.start()
    try:
        cluster.kubectl("apply", "-f", str(REPO / "crds"))
        cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/autolabeljobs.autolabel.dev")
        yield cluster
    finally:
        cluster.stop()


def node_runner(cluster: LocalCluster, state: Path) -> Process:
    """The local node runner (``python -m devenv.node``) for the pods bound to ``local-node`` (not started)."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "tools")}
    argv = [sys.executable, "-m", "devenv.node", "--kubeconfig", str(cluster.kubeconfig)]
    return Process([*argv, "--node-name", "local-node", "--state-dir", str(state)], env, state / "node.log")


class OperatorProcess(Process):
    def __init__(self, cluster: LocalCluster, s3: MinioServer, state: Path, worker_command: str | None = None) -> None:
        """``worker_command`` None: the fake worker; "": the real ``autolabel-worker`` (the default)."""
        flavors = state / "flavors.yaml"
        flavors.write_text(FLAVORS)
        self.metrics_port = free_port()
        self.health_port = free_port()
        env = {
            **os.environ,
            "KUBECONFIG": str(cluster.kubeconfig),
            "AUTOLABEL_FLAVORS": str(flavors),
            "AUTOLABEL_S3_ENDPOINT": s3.endpoint_url,
            "AUTOLABEL_S3_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": s3.access_key,
            "AWS_SECRET_ACCESS_KEY": s3.secret_key,
            # Every test makes its own namespace: jobs without a secretRef may use these keys in any of them
            # ("*", a development setting), for the tests' bucket only.
            "AUTOLABEL_DEFAULT_CREDENTIALS_NAMESPACES": "*",
            "AUTOLABEL_ALLOWED_BUCKETS": BUCKET,
            "AUTOLABEL_WORKER_COMMAND": f"{sys.executable} {FAKE_WORKER}" if worker_command is None else worker_command,
            "AUTOLABEL_WORKER_IMAGE": "autolabel-worker:test",
            "AUTOLABEL_METRICS_PORT": str(self.metrics_port),
            "AUTOLABEL_LIVENESS": f"http://127.0.0.1:{self.health_port}/healthz",
            "AUTOLABEL_RECONCILE_INTERVAL": "1",
            "AUTOLABEL_STORAGE_RETRIES": "2",
            "AUTOLABEL_STORAGE_BACKOFF": "0.5",
        }
        env.pop("AWS_ENDPOINT_URL", None)
        super().__init__([sys.executable, "-m", "autolabel_operator.main"], env, state / "operator.log")

    def start(self) -> None:
        """Starts it and waits for its /metrics; stops it again if it does not come up."""
        super().start()
        try:
            wait_for(self._serving, 60, "the operator's /metrics")
        except AssertionError as exc:
            self.stop()
            raise AssertionError(f"the operator did not come up: {exc}\n--- {self.log} ---\n{self.tail()}") from None
        except BaseException:
            self.stop()
            raise

    def _serving(self) -> str:
        if not self.running():
            assert self.proc is not None
            raise AssertionError(f"the operator exited with code {self.proc.returncode}")
        return self.metrics()

    def metrics(self) -> str:
        return self._get(f"http://127.0.0.1:{self.metrics_port}/metrics")

    def healthz(self) -> str:
        return self._get(f"http://127.0.0.1:{self.health_port}/healthz")

    @staticmethod
    def _get(url: str) -> str:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return str(r.read().decode()) or "ok"
        except OSError:
            return ""


@contextlib.contextmanager
def running_operator(
    cluster: LocalCluster, s3: MinioServer, state: Path, worker_command: str | None = None
) -> Iterator[OperatorProcess]:
    """The operator as a subprocess for the length of the block; stopped also when its start fails."""
    op = OperatorProcess(cluster, s3, state, worker_command)
    try:
        op.start()
        yield op
    finally:
        op.stop()


# ------------------------------------------------------------------------------------- helpers


def put(s3: MinioServer, key: str, data: bytes) -> str:
    s3.client().put_object(Bucket=BUCKET, Key=key, Body=data)
    return f"s3://{BUCKET}/{key}"


def get_json(s3: MinioServer, key: str) -> Any:
    return json.loads(s3.client().get_object(Bucket=BUCKET, Key=key)["Body"].read())


def manifest_lines(labels: dict[str, int], unlabeled: int) -> list[str]:
    lines = []
    n = 0
    for label, count in labels.items():
        for _ in range(count):
            n += 1
            annotation = [{"type": "modelarts/image_classification", "name": label}]
            lines.append(json.dumps({"source": f"img/{n:05d}.png", "annotation": annotation}))
    for _ in range(unlabeled):
        n += 1
        lines.append(json.dumps({"source": f"img/{n:05d}.png"}))
    return lines


def dataset(s3: MinioServer, labels: dict[str, int] | None = None, unlabeled: int = 6) -> str:
    """A manifest in a fresh folder; returns its s3:// URI."""
    labels = {"cat": 5, "dog": 6} if labels is None else labels
    folder = f"ds-{uuid.uuid4().hex[:8]}"
    return put(s3, f"{folder}/data.manifest", ("\n".join(manifest_lines(labels, unlabeled)) + "\n").encode())


def job_manifest(name: str, manifest: str, annotations: dict[str, str] | None = None, **spec: Any) -> str:
    body: dict[str, Any] = {
        "apiVersion": "autolabel.dev/v1alpha1",
        "kind": "AutoLabelJob",
        "metadata": {"name": name, "annotations": annotations or {}},
        "spec": {
            "task": "ImageClassification",
            "mode": "ActiveLearning",
            "dataset": {"manifest": manifest},
            **spec,
        },
    }
    return yaml.safe_dump(body)


def apply(cluster: LocalCluster, namespace: str, text: str) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=text)


def get(cluster: LocalCluster, namespace: str, kind: str, name: str | None = None, *args: str) -> Any:
    argv = ["get", kind, "-n", namespace, "-o", "json", *args]
    if name:
        argv.insert(2, name)
    result = cluster.kubectl(*argv, check=False)
    if result.returncode != 0:
        return None
    return json.loads(result.stdout)


def alj(cluster: LocalCluster, namespace: str, name: str) -> dict[str, Any]:
    return get(cluster, namespace, "autolabeljobs", name) or {}


def phase(cluster: LocalCluster, namespace: str, name: str) -> str | None:
    return (alj(cluster, namespace, name).get("status") or {}).get("phase")


def condition(obj: dict[str, Any], ctype: str) -> dict[str, Any]:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond["type"] == ctype:
            return dict(cond)
    return {}


def wait_phase(
    cluster: LocalCluster, namespace: str, name: str, wanted: str | set[str], timeout: float = 60
) -> dict[str, Any]:
    """Wait until the AutoLabelJob's phase is one of ``wanted``; fail showing its last status."""
    wanted_set = {wanted} if isinstance(wanted, str) else wanted
    deadline = time.monotonic() + timeout
    obj: dict[str, Any] = {}
    while time.monotonic() < deadline:
        obj = alj(cluster, namespace, name)
        if (obj.get("status") or {}).get("phase") in wanted_set:
            return obj
        time.sleep(0.3)
    raise AssertionError(
        f"timed out after {timeout}s waiting for {namespace}/{name} to reach {sorted(wanted_set)}; "
        f"status: {json.dumps(obj.get('status'), indent=1)}"
    )
