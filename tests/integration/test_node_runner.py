"""The local node runner (tools/devenv/node.py) against the real control plane: the real scheduler binds
pods to ``local-node``, the runner runs them as processes, and the real Job controller completes Jobs from
the statuses it reports."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from devenv.cluster import LocalCluster

pytestmark = pytest.mark.needs_cluster

REPO_ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")


class NodeRunnerProcess:
    """``python -m devenv.node`` as a background process, as ``make dev-up`` runs it."""

    def __init__(self, kubeconfig: Path, state_dir: Path):
        self.kubeconfig, self.state_dir = kubeconfig, state_dir
        self.log = state_dir.parent / f"{state_dir.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "tools")}
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "devenv.node", "--kubeconfig", str(self.kubeconfig),
                 "--node-name", "local-node", "--state-dir", str(self.state_dir)],
                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            )  # fmt: skip

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def logs_of(self, namespace: str, pod: str, container: str) -> str:
        [folder] = self.state_dir.glob(f"pods/{namespace}_{pod}_*")
        return (folder / "logs" / f"{container}.log").read_text()


@pytest.fixture(scope="module")
def node_runner(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeRunnerProcess]:
    runner = NodeRunnerProcess(cluster.kubeconfig, tmp_path_factory.mktemp("node") / "state")
    runner.start()
    try:
        yield runner
    finally:
        if runner.proc and runner.proc.poll() is None:
            runner.stop()
        print(f"node runner log: {runner.log}")


def wait_for(check: Callable[[], T | None], timeout: float = 60, what: str = "condition") -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def get(cluster: LocalCluster, *args: str) -> Any:
    result = cluster.kubectl("get", *args, "-o", "json", check=False)
    return json.loads(result.stdout) if result.returncode == 0 else None


def apply(cluster: LocalCluster, namespace: str, obj: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(obj))


def pod(name: str, script: str, **spec: Any) -> dict[str, Any]:
    container = {"name": "main", "image": "busybox", "command": ["sh", "-c", script]}
    container.update(spec.pop("container", {}))
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"restartPolicy": "Never", "containers": [container], **spec},
    }


def finished_pod(cluster: LocalCluster, namespace: str, name: str, timeout: float = 60) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        obj = get(cluster, "pod", "-n", namespace, name)
        return obj if obj and obj["status"].get("phase") in ("Succeeded", "Failed") else None

    return wait_for(done, timeout, f"pod {namespace}/{name} to finish")


def terminated(pod_obj: dict[str, Any]) -> dict[str, Any]:
    return dict(pod_obj["status"]["containerStatuses"][0]["state"]["terminated"])


def test_node_is_ready_with_a_lease(cluster: LocalCluster, node_runner: NodeRunnerProcess) -> None:
    lease = wait_for(lambda: get(cluster, "lease", "-n", "kube-node-lease", "local-node"), 30, "node lease")
    assert lease["spec"]["holderIdentity"] == "local-node"
    node = get(cluster, "node", "local-node")
    ready = next(c for c in node["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"


def test_plain_pod_succeeds(cluster: LocalCluster, namespace: str, node_runner: NodeRunnerProcess) -> None:
    apply(cluster, namespace, pod("hello", 'echo "hello from $HOSTNAME in $PWD"; ls "$TMPDIR" >/dev/null'))
    obj = finished_pod(cluster, namespace, "hello")
    assert obj["status"]["phase"] == "Succeeded"
    state = terminated(obj)
    assert state["exitCode"] == 0 and state["reason"] == "Completed"
    assert state["startedAt"] and state["finishedAt"]
    assert obj["status"]["podIP"] == "127.0.0.1" and obj["status"]["startTime"]
    conditions = {c["type"]: c for c in obj["status"]["conditions"]}
    assert conditions["Ready"]["status"] == "False" and conditions["Ready"]["reason"] == "PodCompleted"
    assert conditions["PodScheduled"]["status"] == "True"  # the real scheduler bound it
    assert "hello from hello in " in node_runner.logs_of(namespace, "hello", "main")
    cluster.kubectl("delete", "pod", "-n", namespace, "hello", "--wait=false")
    wait_for(lambda: get(cluster, "pod", "-n", namespace, "hello") is None, 20, "the finished pod to be deleted")


def test_failing_command_reports_its_exit_code(
    cluster: LocalCluster, namespace: str, node_runner: NodeRunnerProcess
) -> None:
    apply(
        cluster,
        namespace,
        pod(
            "fails",
            "echo about to fail >&2; exit 7",
            container={"terminationMessagePolicy": "FallbackToLogsOnError"},
        ),
    )
    obj = finished_pod(cluster, namespace, "fails")
    assert obj["status"]["phase"] == "Failed"
    state = terminated(obj)
    assert state["exitCode"] == 7 and state["reason"] == "Error"
    assert state["message"] == "about to fail"


def test_unknown_command_fails_with_start_error(
    cluster: LocalCluster, namespace: str, node_runner: NodeRunnerProcess
) -> None:
    manifest = pod("nocmd", "")
    manifest["spec"]["containers"][0]["command"] = ["no-such-command-xyz"]
    apply(cluster, namespace, manifest)
    state = terminated(finished_pod(cluster, namespace, "nocmd"))
    assert state["reason"] == "StartError" and state["exitCode"] == 128
    assert "no-such-command-xyz" in state["message"]


def test_env_from_secret_configmap_and_downward_api(
    cluster: LocalCluster, namespace: str, node_runner: NodeRunnerProcess
) -> None:
    secret = ["--from-literal=AWS_ACCESS_KEY_ID=ak-123", "--from-literal=AWS_SECRET_ACCESS_KEY=sk-456"]
    cluster.kubectl("create", "secret", "generic", "s3", "-n", namespace, *secret)
    config = ['--from-literal=job.json={"name": "j"}', "--from-literal=MODE=fast"]
    cluster.kubectl("create", "configmap", "job", "-n", namespace, *config)
    env = [
        {"name": "KEY", "valueFrom": {"secretKeyRef": {"name": "s3", "key": "AWS_ACCESS_KEY_ID"}}},
        {"name": "JOB", "valueFrom": {"configMapKeyRef": {"name": "job", "key": "job.json"}}},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "TEAM", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['team']"}}},
        {"name": "GREETING", "value": "mode=$(CM_MODE)"},
    ]
    env_from = [{"secretRef": {"name": "s3"}}, {"configMapRef": {"name": "job"}, "prefix": "CM_"}]
    script = 'echo "KEY=$KEY SECRET=$AWS_SECRET_ACCESS_KEY JOB=$JOB POD=$POD_NAME/$POD_NS TEAM=$TEAM $GREETING"'
    manifest = pod("envs", script, container={"env": env, "envFrom": env_from})
    manifest["metadata"]["labels"] = {"team": "vision"}
    apply(cluster, namespace, manifest)
    assert finished_pod(cluster, namespace, "envs")["status"]["phase"] == "Succeeded"
    out = node_runner.logs_of(namespace, "envs", "main")
    assert f'KEY=ak-123 SECRET=sk-456 JOB={{"name": "j"}} POD=envs/{namespace} TEAM=vision mode=fast' in out


def test_missing_secret_waits_then_runs(cluster: LocalCluster, namespace: str, node_runner: NodeRunnerProcess) -> None:
    env = [{"name": "KEY", "valueFrom": {"secretKeyRef": {"name": "late", "key": "k"}}}]
    apply(cluster, namespace, pod("late", 'echo "k=$KEY"', container={"env": env}))

    def config_error() -> str | None:
        obj = get(cluster, "pod", "-n", namespace, "late")
        statuses = (obj or {}).get("status", {}).get("containerStatuses") or [{}]
        waiting = statuses[0].get("state", {}).get("waiting", {})
        return waiting.get("message") if waiting.get("reason") == "CreateContainerConfigError" else None

    message = wait_for(config_error, 30, "CreateContainerConfigError")
    assert f"Secret {namespace}/late not found" in message
    cluster.kubectl("create", "secret", "generic", "late", "-n", namespace, "--from-literal=k=v")
    assert finished_pod(cluster, namespace, "late")["status"]["phase"] == "Succeeded"
    assert "k=v" in node_runner.logs_of(namespace, "late", "main")


def job(name: str, script: str, **spec: Any) -> dict[str, Any]:
    template = pod(name, script)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {"template": {"spec": template["spec"]}, **spec},
    }


def job_condition(cluster: LocalCluster, namespace: str, name: str, timeout: float = 90) -> dict[str, Any]:
    def finished() -> dict[str, Any] | None:
        obj = get(cluster, "job", "-n", namespace, name)
        conds = {c["type"]: c for c in (obj or {}).get("status", {}).get("conditions") or []}
        return obj if any(conds.get(t, {}).get("status") == "True" for t in ("Complete", "Failed")) else None

    return wait_for(finished, timeout, f"job {namespace}/{name} to finish")


def test_job_with_two_completions_completes(
    cluster: LocalCluster, namespace: str, node_runner: NodeRunnerProcess
) -> None:
    apply(cluster, namespace, job("two", "echo run", completions=2, parallelism=2, backoffLimit=0))
    obj = job_condition(cluster, namespace, "two")
    assert obj["status"]["succeeded"] == 2
    assert any(c["type"] == "Complete" and c["status"] == "True" for c in obj["status"]["conditions"])


def test_indexed_job_sees_completion_index(
    cluster: LocalCluster, namespace: str, node_runner: NodeRunnerProcess
) -> None:
    spec = {"completions": 3, "parallelism": 3, "completionMode": "Indexed", "backoffLimit": 0}
    apply(cluster, namespace, job("shards", 'echo "shard=$JOB_COMPLETION_INDEX"', **spec))
    obj = job_condition(cluster, namespace, "shards")
    assert obj["status"]["succeeded"] == 3 and obj["status"]["completedIndexes"] == "0-2"
    logs = "".join(p.read_text() for p in node_runner.state_dir.glob(f"pods/{namespace}_shards-*/logs/main.log"))
    assert sorted(line for line in logs.splitlines()) == ["shard=0", "shard=1", "shard=2"]


def test_failing_job_counts_failures_and_honours_pod_failure_policy(
    cluster: LocalCluster, namespace: str, node_runner: NodeRunnerProcess
) -> None:
    apply(cluster, namespace, job("retry", "exit 3", backoffLimit=1))
    obj = job_condition(cluster, namespace, "retry")
    assert obj["status"]["failed"] == 2
    assert any(c["type"] == "Failed" and c["reason"] == "BackoffLimitExceeded" for c in obj["status"]["conditions"])

    policy = {
        "rules": [{"action": "FailJob", "onExitCodes": {"containerName": "main", "operator": "In", "values": [42]}}]
    }
    apply(cluster, namespace, job("fatal", "exit 42", backoffLimit=5, podFailurePolicy=policy))
    obj = job_condition(cluster, namespace, "fatal")
    assert obj["status"]["failed"] == 1
    assert any(c["type"] == "Failed" and c["reason"] == "PodFailurePolicy" for c in obj["status"]["conditions"])


def pid_of(pod_obj: dict[str, Any]) -> int:
    return int(pod_obj["status"]["containerStatuses"][0]["containerID"].removeprefix("local://"))


def running_pod(cluster: LocalCluster, namespace: str, name: str) -> dict[str, Any]:
    def running() -> dict[str, Any] | None:
        obj = get(cluster, "pod", "-n", namespace, name)
        return obj if obj and obj["status"].get("phase") == "Running" else None

    return wait_for(running, 60, f"pod {namespace}/{name} to run")


def process_gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"


def test_deleting_a_running_pod_kills_its_process(
    cluster: LocalCluster, namespace: str, node_runner: NodeRunnerProcess
) -> None:
    # The shell and its sleep ignore SIGTERM, so the runner must escalate to SIGKILL after the grace period.
    apply(cluster, namespace, pod("stubborn", "trap '' TERM; sleep 300", terminationGracePeriodSeconds=2))
    pid = pid_of(running_pod(cluster, namespace, "stubborn"))
    assert not process_gone(pid)
    started = time.monotonic()
    cluster.kubectl("delete", "pod", "-n", namespace, "stubborn", "--wait=false")
    wait_for(lambda: process_gone(pid), 20, "the pod's process to die")
    assert time.monotonic() - started >= 1.5  # it was given its grace period
    wait_for(lambda: get(cluster, "pod", "-n", namespace, "stubborn") is None, 20, "the pod object to go")


def test_active_deadline_kills_the_pod(cluster: LocalCluster, namespace: str, node_runner: NodeRunnerProcess) -> None:
    apply(cluster, namespace, pod("slow", "sleep 300", activeDeadlineSeconds=2, terminationGracePeriodSeconds=1))
    obj = finished_pod(cluster, namespace, "slow", timeout=30)
    assert obj["status"]["phase"] == "Failed" and obj["status"]["reason"] == "DeadlineExceeded"


def test_restarted_runner_fails_the_pods_it_lost(
    cluster: LocalCluster, namespace: str, node_runner: NodeRunnerProcess
) -> None:
    apply(cluster, namespace, pod("orphan", "sleep 300"))
    pid = pid_of(running_pod(cluster, namespace, "orphan"))
    node_runner.stop(signal.SIGKILL)  # no clean shutdown: the pod's process outlives the runner
    assert not process_gone(pid)
    node_runner.start()
    obj = finished_pod(cluster, namespace, "orphan", timeout=30)
    assert obj["status"]["phase"] == "Failed" and obj["status"]["reason"] == "NodeRunnerRestarted"
    assert any(c["type"] == "DisruptionTarget" and c["status"] == "True" for c in obj["status"]["conditions"])
    wait_for(lambda: process_gone(pid), 10, "the orphaned process to be killed")
    # and the restarted runner runs new pods
    apply(cluster, namespace, pod("after", "true"))
    assert finished_pod(cluster, namespace, "after")["status"]["phase"] == "Succeeded"


def test_sigterm_stops_the_runner_and_its_pods(
    cluster: LocalCluster, namespace: str, node_runner: NodeRunnerProcess
) -> None:
    apply(cluster, namespace, pod("victim", "sleep 300"))
    pid = pid_of(running_pod(cluster, namespace, "victim"))
    assert node_runner.stop(signal.SIGTERM, timeout=30) == 0
    assert process_gone(pid)
    obj = get(cluster, "pod", "-n", namespace, "victim")
    assert obj["status"]["phase"] == "Failed" and obj["status"]["reason"] == "Terminated"
    node_runner.start()  # leave it running for whatever comes next in this module


def test_job_retries_a_pod_lost_to_a_runner_restart_for_free(
    cluster: LocalCluster, namespace: str, node_runner: NodeRunnerProcess, tmp_path: Path
) -> None:
    """A pod lost to a runner restart carries DisruptionTarget, so a Job whose pod failure policy ignores
    disruptions (as the operator's do) retries it without spending its backoff limit."""
    marker = tmp_path / "first-attempt"
    policy = {"rules": [{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}]}
    script = f"test -e {marker} && exit 0; touch {marker}; sleep 300"
    apply(cluster, namespace, job("survivor", script, backoffLimit=0, podFailurePolicy=policy))
    wait_for(marker.exists, 60, "the first attempt to start")
    node_runner.stop(signal.SIGKILL)
    node_runner.start()
    obj = job_condition(cluster, namespace, "survivor")
    assert obj["status"].get("succeeded") == 1
    assert not obj["status"].get("failed")  # the lost pod did not count
