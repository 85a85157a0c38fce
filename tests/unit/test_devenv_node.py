"""The pure parts of the local node runner (tools/devenv/node.py): env resolution like the kubelet,
``$(VAR)`` expansion, quantities, status documents; plus one pod worker run against a recording API."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from fractions import Fraction
from pathlib import Path
from typing import Any, cast

import pytest
from devenv import node
from devenv.node import (
    ContainerResult,
    ContainerState,
    PodConfigError,
    command_line,
    container_env,
    exit_code_of,
    expand,
    field_ref_value,
    parse_quantity,
    pod_phase,
    resolve_executable,
    resource_field_value,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$(A)", "1"),
        ("x$(A)y$(B)z", "x1y2z"),
        ("$(MISSING)", "$(MISSING)"),
        ("$$(A)", "$(A)"),
        ("$$", "$"),
        ("$$$(A)", "$1"),
        ("$A", "$A"),
        ("$(A", "$(A"),
        ("end$", "end$"),
        ("$()", "$()"),
        ("$(EMPTY)", ""),
        ("", ""),
    ],
)
def test_expand_follows_kubernetes_rules(text: str, expected: str) -> None:
    assert expand(text, {"A": "1", "B": "2", "EMPTY": ""}) == expected


class FakeSources:
    def __init__(self, secrets: dict[str, dict[str, str]], config_maps: dict[str, dict[str, str]]):
        self.secrets, self.config_maps = secrets, config_maps

    def secret(self, namespace: str, name: str) -> Mapping[str, str] | None:
        return self.secrets.get(f"{namespace}/{name}")

    def config_map(self, namespace: str, name: str) -> Mapping[str, str] | None:
        return self.config_maps.get(f"{namespace}/{name}")


POD: dict[str, Any] = {
    "metadata": {
        "name": "p1",
        "namespace": "team-a",
        "uid": "u-1",
        "labels": {"app": "al", "batch.kubernetes.io/job-completion-index": "2"},
        "annotations": {"batch.kubernetes.io/job-completion-index": "2"},
    },
    "spec": {"nodeName": "local-node", "serviceAccountName": "default"},
}
SOURCES = FakeSources(
    secrets={"team-a/s3": {"AWS_ACCESS_KEY_ID": "ak", "AWS_SECRET_ACCESS_KEY": "sk", "bad=key": "x"}},
    config_maps={"team-a/job": {"job.json": '{"a": 1}', "MODE": "fast"}},
)


def test_env_resolution_order_sources_and_expansion() -> None:
    container = {
        "name": "worker",
        "envFrom": [{"secretRef": {"name": "s3"}}, {"configMapRef": {"name": "job"}, "prefix": "CM_"}],
        "env": [
            {"name": "MODE", "value": "$(CM_MODE)-x"},
            {"name": "JOB", "valueFrom": {"configMapKeyRef": {"name": "job", "key": "job.json"}}},
            {"name": "KEY", "valueFrom": {"secretKeyRef": {"name": "s3", "key": "AWS_ACCESS_KEY_ID"}}},
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {
                "name": "JOB_COMPLETION_INDEX",
                "valueFrom": {
                    "fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}
                },
            },
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "LATER", "value": "$(NOT_YET)"},
            {"name": "NOT_YET", "value": "defined after use"},
            {"name": "ESCAPED", "value": "$$(POD)"},
            {"name": "API", "value": "https://$(KUBERNETES_SERVICE_HOST)"},
            {"name": "IMAGE_PATH", "value": "$(PATH)"},
            {"name": "OPT", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k", "optional": True}}},
        ],
    }
    services = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "MODE": "service"}
    env = container_env(POD, container, SOURCES, service_env=services)
    assert env["KUBERNETES_SERVICE_HOST"] == "127.0.0.1"
    assert env["AWS_SECRET_ACCESS_KEY"] == "sk"
    assert "bad=key" not in env
    assert env["CM_job.json"] == '{"a": 1}'
    assert env["MODE"] == "fast-x"
    assert env["JOB"] == '{"a": 1}'
    assert env["KEY"] == "ak"
    assert (env["POD"], env["NS"], env["UID"], env["NODE"]) == ("p1", "team-a", "u-1", "local-node")
    assert env["JOB_COMPLETION_INDEX"] == "2"
    assert env["APP"] == "al"
    assert env["LATER"] == "$(NOT_YET)"  # only variables defined earlier are expanded
    assert env["ESCAPED"] == "$(POD)"
    assert env["API"] == "https://127.0.0.1"  # service variables can be referenced
    assert env["IMAGE_PATH"] == "$(PATH)"  # what an image provides cannot
    assert "OPT" not in env


@pytest.mark.parametrize(
    ("var", "message"),
    [
        (
            {"name": "X", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k"}}},
            "Secret team-a/nope not found",
        ),
        (
            {"name": "X", "valueFrom": {"secretKeyRef": {"name": "s3", "key": "missing"}}},
            "couldn't find key 'missing' in Secret team-a/s3",
        ),
        (
            {"name": "X", "valueFrom": {"configMapKeyRef": {"name": "job", "key": "missing"}}},
            "couldn't find key 'missing' in ConfigMap team-a/job",
        ),
        ({"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "status.phase"}}}, "unsupported fieldRef"),
    ],
)
def test_env_errors_name_container_and_variable(var: dict[str, Any], message: str) -> None:
    with pytest.raises(PodConfigError) as err:
        container_env(POD, {"name": "worker", "env": [var]}, SOURCES)
    assert "container 'worker' env 'X'" in str(err.value)
    assert message in str(err.value)


def test_env_from_missing_source() -> None:
    ref: dict[str, Any] = {"name": "gone"}
    container = {"name": "c", "envFrom": [{"configMapRef": ref}]}
    with pytest.raises(PodConfigError, match="envFrom ConfigMap team-a/gone not found"):
        container_env(POD, container, SOURCES)
    ref["optional"] = True
    assert container_env(POD, container, SOURCES) == {}


def test_quantities_and_resource_field_refs() -> None:
    assert parse_quantity("500m") == Fraction(1, 2)
    assert parse_quantity("2Gi") == 2 * 2**30
    assert parse_quantity("1e3") == 1000
    assert parse_quantity(3) == 3
    with pytest.raises(ValueError, match="unknown suffix"):
        parse_quantity("3Xi")
    container = {"name": "c", "resources": {"requests": {"cpu": "250m"}, "limits": {"memory": "1Gi"}}}
    allocatable = {"cpu": "2", "memory": "24Gi"}
    assert resource_field_value(container, {"resource": "requests.cpu"}, allocatable) == "1"  # rounded up
    assert resource_field_value(container, {"resource": "requests.cpu", "divisor": "1m"}, allocatable) == "250"
    assert resource_field_value(container, {"resource": "limits.cpu"}, allocatable) == "2"  # node allocatable
    assert resource_field_value(container, {"resource": "limits.memory", "divisor": "1Mi"}, allocatable) == "1024"
    assert resource_field_value(container, {"resource": "requests.memory", "divisor": "1Mi"}, allocatable) == "1024"


def test_field_ref_whole_label_map() -> None:
    assert field_ref_value(POD, "metadata.labels") == 'app="al"\nbatch.kubernetes.io/job-completion-index="2"'


def test_command_line_expands_and_requires_a_command(tmp_path: Path) -> None:
    container = {"name": "c", "command": ["sh", "-c"], "args": ["echo $(MSG) $$(MSG) $HOME"]}
    assert command_line(container, {"MSG": "hi"}) == ["sh", "-c", "echo hi $(MSG) $HOME"]
    with pytest.raises(FileNotFoundError, match="runs commands, not images"):
        command_line({"name": "c", "image": "busybox", "args": ["x"]}, {})
    assert resolve_executable("sh", "/usr/bin:/bin").endswith("/sh")
    with pytest.raises(FileNotFoundError, match="executable file not found"):
        resolve_executable("no-such-binary-xyz", str(tmp_path))


def test_exit_codes_and_phases() -> None:
    assert exit_code_of(0) == 0
    assert exit_code_of(3) == 3
    assert exit_code_of(-15) == 143
    assert exit_code_of(-9) == 137

    def ended(code: int) -> ContainerState:
        state = ContainerState({"name": f"c{code}"}, started_at=1.0)
        state.result = ContainerResult(code, 1.0, 2.0)
        return state

    running = ContainerState({"name": "r"}, started_at=1.0)
    waiting = ContainerState({"name": "w"})
    assert pod_phase("Never", [waiting]) == "Pending"
    assert pod_phase("Never", [running, ended(1)]) == "Running"
    assert pod_phase("Never", [ended(0), ended(0)]) == "Succeeded"
    assert pod_phase("Never", [ended(0), ended(2)]) == "Failed"
    assert pod_phase("OnFailure", [ended(0), ended(2)]) == "Running"


def test_container_status_documents() -> None:
    state = ContainerState({"name": "w", "image": "img"})
    assert state.status()["state"] == {"waiting": {"reason": "ContainerCreating"}}
    state.started_at, state.pid = 0.0, 42
    doc = state.status()
    assert doc["state"] == {"running": {"startedAt": "1970-01-01T00:00:00Z"}}
    assert doc["ready"] and doc["started"] and doc["containerID"] == "local://42"
    state.result = ContainerResult(1, 0.0, 61.0, message="boom")
    doc = state.status()
    assert doc["state"]["terminated"] == {
        "exitCode": 1,
        "reason": "Error",
        "startedAt": "1970-01-01T00:00:00Z",
        "finishedAt": "1970-01-01T00:01:01Z",
        "message": "boom",
    }
    assert not doc["ready"]


class RecordingCore:
    """Records what a pod worker writes, in place of the API server (the real thing is tested in
    tests/integration/test_node_runner.py)."""

    def __init__(self) -> None:
        self.patches: list[dict[str, Any]] = []
        self.deleted: list[str] = []

    def patch_namespaced_pod_status(self, name: str, namespace: str, body: dict[str, Any], **_: Any) -> None:
        self.patches.append(body["status"])

    def delete_namespaced_pod(self, name: str, namespace: str, **_: Any) -> None:
        self.deleted.append(name)


class FakeRunner:
    def __init__(self, state_dir: Path):
        self.state_dir = state_dir
        self.core = RecordingCore()
        self.sources = SOURCES
        self.default_path = "/usr/bin:/bin"
        self.service_env: dict[str, str] = {}
        self.allocatable: dict[str, str] = {}
        self.gpus = node.GpuPool([])
        self.done = threading.Event()

    def worker_done(self, worker: Any) -> None:
        self.done.set()


def _pod(containers: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "p", "namespace": "team-a", "uid": "uid-1"},
        "spec": {"restartPolicy": "Never", "containers": containers, **spec},
    }


def test_pod_worker_runs_init_then_main_and_reports(tmp_path: Path) -> None:
    runner = FakeRunner(tmp_path)
    pod = _pod(
        [
            {
                "name": "main",
                "command": ["sh", "-c"],
                "args": ['cat ../work/init.txt; echo "key=$KEY tmp=$TMPDIR"; pwd; exit 3'],
                "env": [{"name": "KEY", "valueFrom": {"secretKeyRef": {"name": "s3", "key": "AWS_ACCESS_KEY_ID"}}}],
                "terminationMessagePolicy": "FallbackToLogsOnError",
            }
        ],
        initContainers=[{"name": "init", "command": ["sh", "-c", "echo from-init > init.txt"]}],
    )
    worker = node.PodWorker(cast(Any, runner), pod)
    worker.start()
    for _ in range(100):
        phases = [p["phase"] for p in runner.core.patches]
        if "Failed" in phases:
            break
        time.sleep(0.1)
    final = runner.core.patches[-1]
    assert final["phase"] == "Failed"
    term = final["containerStatuses"][0]["state"]["terminated"]
    assert term["exitCode"] == 3 and term["reason"] == "Error"
    assert "from-init" in term["message"] and "key=ak" in term["message"]
    assert final["initContainerStatuses"][0]["state"]["terminated"]["reason"] == "Completed"
    assert "Running" in [p["phase"] for p in runner.core.patches]
    log = (worker.dir / "logs" / "main.log").read_text()
    assert f"tmp={worker.dir / 'tmp'}" in log and str(worker.dir / "work") in log
    # a terminal pod keeps no thread: its later deletion is the runner's business
    assert runner.done.wait(10)
    assert runner.core.deleted == []
    assert not (worker.dir / "tmp").exists()


def test_pod_worker_kills_process_group_on_deletion(tmp_path: Path) -> None:
    runner = FakeRunner(tmp_path)
    pod = _pod([{"name": "sleeper", "command": ["sh", "-c", "sleep 300 & echo $! > child.pid; wait"]}])
    pod["spec"]["terminationGracePeriodSeconds"] = 2
    worker = node.PodWorker(cast(Any, runner), pod)
    worker.start()
    child_pid_file = worker.dir / "work" / "child.pid"
    for _ in range(100):
        if child_pid_file.exists() and child_pid_file.read_text().strip():
            break
        time.sleep(0.05)
    child = int(child_pid_file.read_text())
    worker.update({**pod, "metadata": {**pod["metadata"], "deletionTimestamp": "2026-01-01T00:00:00Z"}})
    assert runner.done.wait(10)
    final = runner.core.patches[-1]
    assert final["phase"] == "Failed"
    assert final["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 143  # SIGTERM
    assert runner.core.deleted == ["p"]
    assert not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]


def test_pod_worker_deadline_and_missing_command(tmp_path: Path) -> None:
    runner = FakeRunner(tmp_path)
    pod = _pod([{"name": "long", "command": ["sleep", "30"]}], activeDeadlineSeconds=1)
    worker = node.PodWorker(cast(Any, runner), pod)
    worker.start()
    for _ in range(100):
        if runner.core.patches and runner.core.patches[-1]["phase"] == "Failed":
            break
        time.sleep(0.1)
    assert runner.core.patches[-1]["reason"] == "DeadlineExceeded"
    worker.shutdown()

    runner = FakeRunner(tmp_path / "2")
    worker = node.PodWorker(cast(Any, runner), _pod([{"name": "x", "command": ["no-such-binary-xyz"]}]))
    worker.start()
    for _ in range(50):
        if runner.core.patches and runner.core.patches[-1]["phase"] == "Failed":
            break
        time.sleep(0.1)
    term = runner.core.patches[-1]["containerStatuses"][0]["state"]["terminated"]
    assert term["reason"] == "StartError" and term["exitCode"] == 128
    assert "no-such-binary-xyz" in term["message"]
    worker.shutdown()


def test_only_empty_dir_volumes_are_supported() -> None:
    pod = _pod(
        [{"name": "c", "command": ["true"], "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"},
                                                             {"name": "cfg", "mountPath": "/etc/cfg"}]}],
        volumes=[{"name": "tmp", "emptyDir": {}}, {"name": "cfg", "configMap": {"name": "x"}},
                 {"name": "unused", "hostPath": {"path": "/"}}],
    )  # fmt: skip
    assert node.unsupported_volumes(pod) == ["volume 'cfg' (configMap)"]


def test_pod_with_unsupported_volume_fails_clearly(tmp_path: Path) -> None:
    runner = FakeRunner(tmp_path)
    pod = _pod(
        [{"name": "c", "command": ["true"], "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
        volumes=[{"name": "data", "persistentVolumeClaim": {"claimName": "pvc"}}],
    )
    worker = node.PodWorker(cast(Any, runner), pod)
    worker.start()
    for _ in range(50):
        if runner.core.patches:
            break
        time.sleep(0.1)
    final = runner.core.patches[-1]
    assert final["phase"] == "Failed" and final["reason"] == "UnsupportedVolume"
    assert "volume 'data' (persistentVolumeClaim)" in final["message"]
    worker.shutdown()


def test_containers_started_decides_what_a_restarted_runner_resumes() -> None:
    waiting = {"name": "c", "state": {"waiting": {"reason": "CreateContainerConfigError"}}, "lastState": {}}
    assert not node.containers_started({"status": {"phase": "Pending", "containerStatuses": [waiting]}})
    assert not node.containers_started({"status": {}})
    assert node.containers_started({"status": {"phase": "Running"}})
    init_done = {"name": "i", "state": {"terminated": {"exitCode": 0}}}
    assert node.containers_started(
        {"status": {"phase": "Pending", "initContainerStatuses": [init_done], "containerStatuses": [waiting]}}
    )


def test_native_sidecar_runs_beside_main_and_stops_after_it(tmp_path: Path) -> None:
    runner = FakeRunner(tmp_path)
    sidecar = {"name": "side", "restartPolicy": "Always", "command": ["sh", "-c", "echo up > side.txt; sleep 300"]}
    main = {"name": "main", "command": ["sh", "-c", "sleep 0.5; cat side.txt"]}
    pod = _pod([main], initContainers=[sidecar], terminationGracePeriodSeconds=2)
    worker = node.PodWorker(cast(Any, runner), pod)
    worker.start()
    assert runner.done.wait(20)
    final = runner.core.patches[-1]
    assert final["phase"] == "Succeeded"  # the sidecar's SIGTERM exit does not fail the pod
    assert final["initContainerStatuses"][0]["state"]["terminated"]["exitCode"] == 143
    assert (worker.dir / "logs" / "main.log").read_text() == "up\n"
    running = [p for p in runner.core.patches if p["phase"] == "Running"]
    assert running and running[-1]["initContainerStatuses"][0]["ready"] is True


def test_gpu_requests_assignment_and_detection() -> None:
    def c(name: str, gpus: int | None, where: str = "limits") -> dict[str, Any]:
        return {"name": name, "resources": {where: {"nvidia.com/gpu": gpus}} if gpus is not None else {}}

    pod = {"spec": {"containers": [c("a", 2), c("b", None), c("c", 1, "requests")], "initContainers": [c("i", 1)]}}
    assert node.pod_gpu_need(pod) == 3
    assert node.assign_gpus(pod, ["0", "1", "2"]) == {"a": ["0", "1"], "b": [], "c": ["2"], "i": ["0"]}
    assert node.assign_gpus(pod, ["5"]) == {"a": ["5"], "b": [], "c": [], "i": ["5"]}  # fewer than asked for
    assert node.detect_gpus({"CUDA_VISIBLE_DEVICES": "1, 3"}) == ["1", "3"]
    assert node.detect_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []
    pool = node.GpuPool(["0", "1"])
    first, second, third = pool.take(1), pool.take(1), pool.take(1)
    assert (first, second, third) == (["0"], ["1"], [])
    pool.give_back(second)
    pool.give_back(first)
    assert pool.take(2) == ["0", "1"]


def test_containers_see_only_their_gpus(tmp_path: Path) -> None:
    runner = FakeRunner(tmp_path)
    runner.gpus = node.GpuPool(["0", "1"])
    script = 'echo "cuda=[$CUDA_VISIBLE_DEVICES]"'
    pod = _pod(
        [
            {"name": "gpu", "command": ["sh", "-c", script], "resources": {"limits": {"nvidia.com/gpu": 2}}},
            {"name": "cpu", "command": ["sh", "-c", script]},
        ]
    )
    pod["spec"]["initContainers"] = [
        {"name": "greedy", "command": ["sh", "-c", script], "resources": {"limits": {"nvidia.com/gpu": 3}}}
    ]
    worker = node.PodWorker(cast(Any, runner), pod)
    worker.start()
    assert runner.done.wait(20)
    logs = worker.dir / "logs"
    assert (logs / "gpu.log").read_text() == "cuda=[0,1]\n"
    assert (logs / "cpu.log").read_text() == "cuda=[]\n"
    greedy = (logs / "greedy.log").read_text()
    assert "asks for 3 nvidia.com/gpu; this machine gives it 2 (0, 1)" in greedy and "cuda=[0,1]" in greedy
    assert runner.gpus.take(2) == ["0", "1"]  # given back when the pod ended


def test_terminal_status_is_retried_when_the_api_server_hiccups(tmp_path: Path) -> None:
    class FlakyCore(RecordingCore):
        def __init__(self) -> None:
            super().__init__()
            self.failures = 0

        def patch_namespaced_pod_status(self, name: str, namespace: str, body: dict[str, Any], **_: Any) -> None:
            if body["status"]["phase"] in ("Succeeded", "Failed") and self.failures < 2:
                self.failures += 1
                raise ConnectionError("connection refused")
            super().patch_namespaced_pod_status(name, namespace, body)

    runner = FakeRunner(tmp_path)
    runner.core = FlakyCore()
    worker = node.PodWorker(cast(Any, runner), _pod([{"name": "c", "command": ["true"]}]))
    worker.start()
    assert runner.done.wait(20)
    assert runner.core.failures == 2
    assert runner.core.patches[-1]["phase"] == "Succeeded"
