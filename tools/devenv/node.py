"""The local node runner: a kubelet without images for the local control plane.

It watches the pods bound to one Node (``spec.nodeName``) and runs each pod's containers as local
processes: ``command`` + ``args`` resolved on ``PATH`` (this virtual environment's ``bin`` first), with
``$(VAR)`` expansion and environment variables resolved the way the kubelet resolves them (``value``,
``valueFrom`` Secret/ConfigMap keys, the downward API, ``envFrom``). It reports pod status like a kubelet
(``Running`` with container states, then ``Succeeded``/``Failed`` with exit codes), so the real Job
controller completes Jobs, counts failures and applies pod failure policies. It also keeps the Node
``Ready`` (condition heartbeat and a Lease in ``kube-node-lease``).

What it cannot do, by design: pull or unpack images (the ``image`` field is ignored), mount volumes
other than ``emptyDir`` (each pod gets a private working directory and ``TMPDIR`` instead), probes,
resource isolation, ``kubectl logs``/``exec`` (the logs are files, printed when a container starts).

Usage: ``python -m devenv.node --kubeconfig K --node-name local-node [--state-dir D]``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as dt
import json
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import ChainMap
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger("devenv.node")

LOCAL_IP = "127.0.0.1"
DEFAULT_GRACE_SECONDS = 30
SHUTDOWN_GRACE_SECONDS = 5
HEARTBEAT_SECONDS = 10
LEASE_DURATION_SECONDS = 40
MAX_BACKOFF_SECONDS = 10.0
TERMINATION_MESSAGE_MAX_BYTES = 2048
TERMINATION_MESSAGE_MAX_LINES = 80

Pod = dict[str, Any]
Container = dict[str, Any]


# --------------------------------------------------------------------------------------------------
# Pure helpers: environment, $(VAR) expansion, downward API, quantities, status documents.
# --------------------------------------------------------------------------------------------------


class PodConfigError(Exception):
    """A container cannot be configured (the kubelet's ``CreateContainerConfigError``): missing Secret,
    ConfigMap or key, bad field path. The message names the container and the variable at fault."""


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion (as in k8s.io/kubernetes ``third_party/forked/golang/expansion``).

    ``$(NAME)`` becomes the value of NAME when it is defined and stays literally ``$(NAME)`` when not;
    ``$$`` is an escaped ``$``; a ``$`` before anything else, or an unclosed ``$(``, stays as written.
    """
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch != "$" or i + 1 >= n:
            out.append(ch)
            i += 1
            continue
        nxt = text[i + 1]
        if nxt == "$":
            out.append("$")
            i += 2
        elif nxt == "(":
            close = text.find(")", i + 2)
            if close < 0:
                out.append("$(")
                i += 2
            else:
                name = text[i + 2 : close]
                out.append(env.get(name, f"$({name})"))
                i = close + 1
        else:
            out.append("$" + nxt)
            i += 2
    return "".join(out)


class ConfigSources(Protocol):
    """Where ``valueFrom``/``envFrom`` look things up; ``None`` means the object does not exist."""

    def secret(self, namespace: str, name: str) -> Mapping[str, str] | None: ...

    def config_map(self, namespace: str, name: str) -> Mapping[str, str] | None: ...


_SUBSCRIPT = re.compile(r"^metadata\.(labels|annotations)\[['\"]?(.+?)['\"]?\]$")


def field_ref_value(pod: Pod, field_path: str) -> str:
    """The value of a downward-API ``fieldRef`` (the paths the kubelet supports for env vars)."""
    meta = pod.get("metadata", {})
    spec = pod.get("spec", {})
    simple: dict[str, Callable[[], str]] = {
        "metadata.name": lambda: meta.get("name", ""),
        "metadata.namespace": lambda: meta.get("namespace", ""),
        "metadata.uid": lambda: meta.get("uid", ""),
        "spec.nodeName": lambda: spec.get("nodeName", ""),
        "spec.serviceAccountName": lambda: spec.get("serviceAccountName", ""),
        "status.hostIP": lambda: LOCAL_IP,
        "status.hostIPs": lambda: LOCAL_IP,
        "status.podIP": lambda: LOCAL_IP,
        "status.podIPs": lambda: LOCAL_IP,
    }
    if field_path in simple:
        return simple[field_path]()
    match = _SUBSCRIPT.match(field_path)
    if match:
        return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
    if field_path in ("metadata.labels", "metadata.annotations"):
        items = meta.get(field_path.split(".")[1]) or {}
        return "\n".join(f"{k}={json.dumps(v)}" for k, v in sorted(items.items()))
    raise PodConfigError(f"unsupported fieldRef fieldPath {field_path!r}")


_QUANTITY = re.compile(r"^([+-]?[0-9.]+)([eE][+-]?[0-9]+|[a-zA-Z]*)$")
_SUFFIXES = {
    "": Fraction(1),
    "m": Fraction(1, 1000),
    "u": Fraction(1, 10**6),
    "n": Fraction(1, 10**9),
    "k": Fraction(10**3),
    "M": Fraction(10**6),
    "G": Fraction(10**9),
    "T": Fraction(10**12),
    "P": Fraction(10**15),
    "E": Fraction(10**18),
    "Ki": Fraction(2**10),
    "Mi": Fraction(2**20),
    "Gi": Fraction(2**30),
    "Ti": Fraction(2**40),
    "Pi": Fraction(2**50),
    "Ei": Fraction(2**60),
}


def parse_quantity(quantity: str | int | float) -> Fraction:
    """A Kubernetes resource quantity (``500m``, ``2Gi``, ``1e3``) as an exact fraction."""
    text = str(quantity).strip()
    match = _QUANTITY.match(text)
    if not match:
        raise ValueError(f"not a Kubernetes quantity: {quantity!r}")
    number, suffix = match.groups()
    if suffix[:1] in ("e", "E"):
        return Fraction(number) * Fraction(10) ** int(suffix[1:])
    if suffix not in _SUFFIXES:
        raise ValueError(f"not a Kubernetes quantity: {quantity!r} (unknown suffix {suffix!r})")
    return Fraction(number) * _SUFFIXES[suffix]


def resource_field_value(container: Container, ref: Mapping[str, Any], allocatable: Mapping[str, str]) -> str:
    """A ``resourceFieldRef`` value: the container's limit (node allocatable when unset) or request,
    divided by ``divisor`` and rounded up, as the kubelet does."""
    resource = ref.get("resource", "")
    kind, _, name = resource.partition(".")
    if kind not in ("limits", "requests") or not name:
        raise PodConfigError(f"unsupported resourceFieldRef resource {resource!r}")
    resources = container.get("resources") or {}
    value = (resources.get(kind) or {}).get(name)
    if value is None and kind == "requests":
        value = (resources.get("limits") or {}).get(name)
    if value is None:
        value = allocatable.get(name, "0")
    divisor = parse_quantity(ref.get("divisor") or "1")
    if divisor <= 0:
        raise PodConfigError(f"resourceFieldRef {resource!r}: divisor must be positive")
    return str(math.ceil(parse_quantity(value) / divisor))


def _valid_env_name(name: str) -> bool:
    return bool(name) and "=" not in name and "\0" not in name


def container_env(
    pod: Pod,
    container: Container,
    sources: ConfigSources,
    service_env: Mapping[str, str] | None = None,
    allocatable: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The variables Kubernetes gives a container, resolved like the kubelet's ``makeEnvironmentVariables``
    (pkg/kubelet/kubelet_pods.go, v1.36): every ``envFrom`` source in order, then ``env`` in order, each
    ``value`` ``$(VAR)``-expanded against the variables defined before it and the service variables;
    then the service variables the container does not define. What an image would add (PATH, HOME, ...)
    is not part of it and cannot be referenced. A missing Secret/ConfigMap/key fails
    (``PodConfigError``) unless marked ``optional``.
    """
    namespace = pod.get("metadata", {}).get("namespace", "default")
    cname = container.get("name", "?")
    services: Mapping[str, str] = service_env or {}
    env: dict[str, str] = {}

    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        if "configMapRef" in source:
            ref, kind, data = source["configMapRef"], "ConfigMap", sources.config_map
        elif "secretRef" in source:
            ref, kind, data = source["secretRef"], "Secret", sources.secret
        else:
            raise PodConfigError(f"container {cname!r}: envFrom entry without configMapRef or secretRef")
        values = data(namespace, ref.get("name", ""))
        if values is None:
            if ref.get("optional"):
                continue
            raise PodConfigError(f"container {cname!r}: envFrom {kind} {namespace}/{ref.get('name')} not found")
        for key, value in values.items():
            if _valid_env_name(prefix + key):
                env[prefix + key] = value

    for var in container.get("env") or []:
        name = var.get("name", "")
        if "valueFrom" not in var or var.get("value"):
            env[name] = expand(var.get("value", "") or "", ChainMap(env, dict(services)))
            continue
        value_from = var["valueFrom"]
        where = f"container {cname!r} env {name!r}"
        if "secretKeyRef" in value_from or "configMapKeyRef" in value_from:
            is_secret = "secretKeyRef" in value_from
            ref = value_from["secretKeyRef" if is_secret else "configMapKeyRef"]
            kind = "Secret" if is_secret else "ConfigMap"
            obj_name, key = ref.get("name", ""), ref.get("key", "")
            values = (sources.secret if is_secret else sources.config_map)(namespace, obj_name)
            if values is None:
                if ref.get("optional"):
                    continue
                raise PodConfigError(f"{where}: {kind} {namespace}/{obj_name} not found")
            if key not in values:
                if ref.get("optional"):
                    continue
                raise PodConfigError(f"{where}: couldn't find key {key!r} in {kind} {namespace}/{obj_name}")
            env[name] = values[key]
        elif "fieldRef" in value_from:
            try:
                env[name] = field_ref_value(pod, value_from["fieldRef"].get("fieldPath", ""))
            except PodConfigError as exc:
                raise PodConfigError(f"{where}: {exc}") from None
        elif "resourceFieldRef" in value_from:
            try:
                env[name] = resource_field_value(container, value_from["resourceFieldRef"], allocatable or {})
            except (PodConfigError, ValueError) as exc:
                raise PodConfigError(f"{where}: {exc}") from None
        else:
            raise PodConfigError(f"{where}: unsupported valueFrom {sorted(value_from)}")
    return {**services, **env}


def command_line(container: Container, env: Mapping[str, str]) -> list[str]:
    """``command`` + ``args`` with ``$(VAR)`` expanded. Without images there is no entrypoint to fall
    back on, so a container without ``command`` cannot run here."""
    command = [expand(part, env) for part in container.get("command") or []]
    args = [expand(part, env) for part in container.get("args") or []]
    if not command:
        raise FileNotFoundError(
            f"container {container.get('name')!r} has no command: the local node runner runs commands, "
            f"not images (image {container.get('image')!r} is ignored)"
        )
    return command + args


def resolve_executable(name: str, path: str) -> str:
    """The executable for ``name``: a path as given, a bare name looked up on ``path``."""
    if "/" in name:
        if os.access(name, os.X_OK) and not os.path.isdir(name):
            return name
        raise FileNotFoundError(f'exec: "{name}": no such executable file')
    found = shutil.which(name, path=path)
    if not found:
        raise FileNotFoundError(f'exec: "{name}": executable file not found in $PATH ({path})')
    return found


def exit_code_of(returncode: int) -> int:
    """A process return code as a container exit code (killed by signal N -> 128 + N)."""
    return 128 - returncode if returncode < 0 else returncode


def rfc3339(when: float | None = None) -> str:
    stamp = dt.datetime.fromtimestamp(time.time() if when is None else when, tz=dt.UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%SZ")


def micro_time(when: float | None = None) -> str:
    stamp = dt.datetime.fromtimestamp(time.time() if when is None else when, tz=dt.UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class ContainerResult:
    """How a container process ended."""

    exit_code: int
    started_at: float
    finished_at: float
    reason: str | None = None  # default: Completed for 0, Error otherwise
    message: str | None = None

    def terminated(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "exitCode": self.exit_code,
            "reason": self.reason or ("Completed" if self.exit_code == 0 else "Error"),
            "startedAt": rfc3339(self.started_at),
            "finishedAt": rfc3339(self.finished_at),
        }
        if self.message:
            state["message"] = self.message
        return state


@dataclass
class ContainerState:
    """What the runner knows about one container of a pod (the source of its containerStatus)."""

    spec: Container
    init: bool = False
    restart_count: int = 0
    started_at: float | None = None  # set while running
    pid: int | None = None
    result: ContainerResult | None = None  # set once it ended (and is not restarting)
    last_result: ContainerResult | None = None
    waiting_reason: str | None = None
    waiting_message: str | None = None

    @property
    def name(self) -> str:
        return str(self.spec.get("name", ""))

    @property
    def running(self) -> bool:
        return self.started_at is not None and self.result is None

    @property
    def sidecar(self) -> bool:
        """A native sidecar: an init container with ``restartPolicy: Always`` that runs beside the main
        containers (started in its init position, restarted whenever it exits, stopped at the end)."""
        return self.init and self.spec.get("restartPolicy") == "Always"

    def status(self) -> dict[str, Any]:
        state: dict[str, Any]
        if self.result is not None:
            state = {"terminated": self.result.terminated()}
        elif self.started_at is not None:
            state = {"running": {"startedAt": rfc3339(self.started_at)}}
        else:
            waiting: dict[str, Any] = {"reason": self.waiting_reason or "ContainerCreating"}
            if self.waiting_message:
                waiting["message"] = self.waiting_message
            state = {"waiting": waiting}
        status: dict[str, Any] = {
            "name": self.name,
            "image": self.spec.get("image") or "local",
            "imageID": "",
            "ready": self.running and (self.sidecar or not self.init),
            "started": self.running,
            "restartCount": self.restart_count,
            "state": state,
        }
        if self.pid is not None:
            status["containerID"] = f"local://{self.pid}"
        if self.last_result is not None:
            status["lastState"] = {"terminated": self.last_result.terminated()}
        return status


def pod_phase(restart_policy: str, containers: Iterable[ContainerState]) -> str:
    """The pod phase from its main containers, as the kubelet computes it (``getPhase``)."""
    states = list(containers)
    if any(c.running for c in states):
        return "Running"
    if not states or any(c.result is None for c in states):
        return "Pending" if not any(c.restart_count or c.last_result for c in states) else "Running"
    if all(c.result is not None and c.result.exit_code == 0 for c in states):
        return "Succeeded"
    if restart_policy == "Never":
        return "Failed"
    return "Running"


def condition(ctype: str, status: bool, since: str, reason: str | None = None) -> dict[str, Any]:
    cond: dict[str, Any] = {
        "type": ctype,
        "status": "True" if status else "False",
        "lastTransitionTime": since,
    }
    if reason:
        cond["reason"] = reason
    return cond


def unsupported_volumes(pod: Pod) -> list[str]:
    """The mounted volumes that a runner without images and mounts cannot provide. ``emptyDir`` is fine
    (the process gets a private working directory and ``TMPDIR``), and so is the API server's
    service-account token volume (nothing here reads it)."""
    spec = pod.get("spec", {})
    containers = (spec.get("initContainers") or []) + (spec.get("containers") or [])
    mounted = {m.get("name") for c in containers for m in c.get("volumeMounts") or []}
    problems = []
    for volume in spec.get("volumes") or []:
        name = volume.get("name")
        kind = next((k for k in volume if k != "name"), "unknown")
        if name not in mounted or kind == "emptyDir":
            continue
        if kind == "projected" and str(name).startswith("kube-api-access-"):
            continue
        problems.append(f"volume {name!r} ({kind})")
    return problems


GPU_RESOURCE = "nvidia.com/gpu"


def gpu_request(container: Container) -> int:
    """How many ``nvidia.com/gpu`` a container asks for (extended resources: limits, else requests)."""
    resources = container.get("resources") or {}
    amount = (resources.get("limits") or {}).get(GPU_RESOURCE, (resources.get("requests") or {}).get(GPU_RESOURCE))
    return int(parse_quantity(amount)) if amount is not None else 0


def assign_gpus(pod: Pod, devices: list[str]) -> dict[str, list[str]]:
    """Which of the pod's ``devices`` each container sees, like the kubelet's device manager: main
    containers get disjoint sets, init containers run before them and reuse the first devices."""
    spec = pod.get("spec", {})
    assigned: dict[str, list[str]] = {}
    offset = 0
    for container in spec.get("containers") or []:
        want = gpu_request(container)
        assigned[container.get("name", "")] = devices[offset : offset + want]
        offset += want
    for container in spec.get("initContainers") or []:
        assigned[container.get("name", "")] = devices[: gpu_request(container)]
    return assigned


def pod_gpu_need(pod: Pod) -> int:
    spec = pod.get("spec", {})
    main = sum(gpu_request(c) for c in spec.get("containers") or [])
    init = max((gpu_request(c) for c in spec.get("initContainers") or []), default=0)
    return max(main, init)


def detect_gpus(environ: Mapping[str, str] | None = None) -> list[str]:
    """This machine's GPUs, as CUDA device ids: the runner's own ``CUDA_VISIBLE_DEVICES`` when set,
    else what ``nvidia-smi -L`` lists, else none."""
    environ = os.environ if environ is None else environ
    if "CUDA_VISIBLE_DEVICES" in environ:
        return [d.strip() for d in environ["CUDA_VISIBLE_DEVICES"].split(",") if d.strip() and d.strip() != "-1"]
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if listing.returncode != 0:
        return []
    return [str(i) for i, line in enumerate(ln for ln in listing.stdout.splitlines() if ln.startswith("GPU "))]


class GpuPool:
    """The machine's real GPUs, handed to pods that request ``nvidia.com/gpu``. The Node may advertise
    more than there are (the local cluster advertises 2 everywhere): a pod that gets fewer than it asked
    for runs with what is free, possibly none (CPU), and its log says so."""

    def __init__(self, devices: list[str]):
        self.devices = list(devices)
        self._free = list(devices)
        self._lock = threading.Lock()

    def take(self, count: int) -> list[str]:
        with self._lock:
            taken, self._free = self._free[:count], self._free[count:]
            return taken

    def give_back(self, devices: list[str]) -> None:
        with self._lock:
            self._free.extend(d for d in devices if d not in self._free)
            self._free.sort(key=self.devices.index)


def termination_message(log_path: Path) -> str | None:
    """The tail of a log, for ``terminationMessagePolicy: FallbackToLogsOnError``."""
    try:
        with open(log_path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - TERMINATION_MESSAGE_MAX_BYTES))
            data = fh.read()
    except OSError:
        return None
    lines = data.decode("utf-8", "replace").splitlines()[-TERMINATION_MESSAGE_MAX_LINES:]
    text = "\n".join(lines).strip()
    return text or None


# --------------------------------------------------------------------------------------------------
# The runtime: one thread per pod, a watch loop, the node heartbeat.
# --------------------------------------------------------------------------------------------------


class ApiSources:
    """``ConfigSources`` read from the API server (Secret values base64-decoded)."""

    def __init__(self, core: Any):
        self.core = core

    def _get(self, fn: Callable[..., Any], namespace: str, name: str) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            resp = fn(name, namespace, _preload_content=False, _request_timeout=30)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise PodConfigError(f"cannot read {namespace}/{name}: {exc.status} {exc.reason}") from exc
        return dict(json.loads(resp.data))

    def secret(self, namespace: str, name: str) -> Mapping[str, str] | None:
        obj = self._get(self.core.read_namespaced_secret, namespace, name)
        if obj is None:
            return None
        data = obj.get("data") or {}
        return {k: base64.b64decode(v).decode("utf-8", "surrogateescape") for k, v in data.items()}

    def config_map(self, namespace: str, name: str) -> Mapping[str, str] | None:
        obj = self._get(self.core.read_namespaced_config_map, namespace, name)
        return None if obj is None else dict(obj.get("data") or {})


class Interrupt:
    DELETED = "deleted"  # deletionTimestamp set: graceful kill, report, delete with grace 0
    GONE = "gone"  # the pod object no longer exists: kill now
    DEADLINE = "deadline"  # activeDeadlineSeconds exceeded
    SHUTDOWN = "shutdown"  # the node runner stops


def _proc_start_ticks(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class PodWorker:
    """Runs one pod from start to its terminal phase, then deletes it when asked (like a pod worker in
    the kubelet). All API writes about the pod happen on this thread."""

    def __init__(self, runner: NodeRunner, pod: Pod):
        meta = pod["metadata"]
        self.namespace: str = meta["namespace"]
        self.name: str = meta["name"]
        self.uid: str = meta["uid"]
        self.thread = threading.Thread(target=self.run, name=f"pod-{self.namespace}/{self.name}", daemon=True)
        self.runner = runner
        self._pod = pod
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._gone = False
        self._shutdown = False
        self.dir = runner.state_dir / "pods" / f"{self.namespace}_{self.name}_{self.uid}"
        spec = pod.get("spec", {})
        self.restart_policy: str = spec.get("restartPolicy", "Always")
        self.init_states = [ContainerState(c, init=True) for c in spec.get("initContainers") or []]
        self.main_states = [ContainerState(c) for c in spec.get("containers") or []]
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.start_time: float | None = None
        self.transitions: dict[str, tuple[bool, str]] = {}
        self.deleted = False  # deleted with grace 0 by this worker
        self.gpus: list[str] = []
        self.gpu_assignment: dict[str, list[str]] = {}

    def start(self) -> None:
        self.thread.start()

    def join(self, timeout: float | None = None) -> None:
        if self.thread.ident is not None:  # started (a worker registered during shutdown may not be)
            self.thread.join(timeout)

    # -- called from the watch thread ----------------------------------------------------------------
    def update(self, pod: Pod) -> None:
        with self._lock:
            self._pod = pod
        self._wake.set()

    def mark_gone(self) -> None:
        self._gone = True
        self._wake.set()

    def shutdown(self) -> None:
        self._shutdown = True
        self._wake.set()

    @property
    def pod(self) -> Pod:
        with self._lock:
            return self._pod

    # -- the pod's life -----------------------------------------------------------------------------
    def interrupt(self) -> str | None:
        if self._gone:
            return Interrupt.GONE
        if self._shutdown:
            return Interrupt.SHUTDOWN
        if self.pod["metadata"].get("deletionTimestamp"):
            return Interrupt.DELETED
        deadline = self.pod.get("spec", {}).get("activeDeadlineSeconds")
        if deadline is not None and self.start_time is not None and time.time() - self.start_time >= deadline:
            return Interrupt.DEADLINE
        return None

    def run(self) -> None:
        try:
            self._run()
        except Exception:
            log.exception("pod %s/%s: the node runner failed while running it", self.namespace, self.name)
            self._kill_all(0)
            self._report_terminal(reason="NodeRunnerError", message="the local node runner failed; see its log")
        finally:
            self.runner.gpus.give_back(self.gpus)
            self.runner.worker_done(self)

    def _run(self) -> None:
        if self.pod["metadata"].get("deletionTimestamp"):
            self._delete_now()
            return
        for sub in ("work", "tmp", "logs"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        previous_start = self.pod.get("status", {}).get("startTime")
        self.start_time = _parse_time(previous_start) if previous_start else time.time()
        log.info("pod %s/%s: starting; logs in %s", self.namespace, self.name, self.dir / "logs")
        problems = unsupported_volumes(self.pod)
        if problems:
            message = f"the local node runner cannot mount {', '.join(problems)}: only emptyDir volumes work here"
            log.warning("pod %s/%s: %s", self.namespace, self.name, message)
            self._report_terminal(reason="UnsupportedVolume", message=message)
            return self._end_after_report()
        need = pod_gpu_need(self.pod)
        if need:
            self.gpus = self.runner.gpus.take(need)
            log.info("pod %s/%s: asks for %d GPU(s); gets %s", self.namespace, self.name, need, self.gpus or "none")
        self.gpu_assignment = assign_gpus(self.pod, self.gpus)
        self._patch_status()

        sidecars: list[ContainerState] = []
        for state in self.init_states:
            if state.sidecar:  # runs from here on; the next one starts once it is running
                sidecars.append(state)
                cause = self._supervise(sidecars, until=_is_running(state))
                if cause is not None:
                    return self._end(cause)
                continue
            cause = self._supervise([*sidecars, state], until=_has_ended(state))
            if cause is not None or state.result is None or state.result.exit_code != 0:
                return self._end(cause)
        self._patch_status()
        main = self.main_states
        self._end(self._supervise([*sidecars, *main], until=lambda: all(s.result is not None for s in main)))

    def _end(self, cause: str | None) -> None:
        """Stop what still runs and report the end. ``cause`` is what interrupted the pod, None when its
        containers ended by themselves (then only a deletion or shutdown that came since counts)."""
        if cause is None:
            cause = self.interrupt()
            cause = None if cause == Interrupt.DEADLINE else cause
        if cause == Interrupt.GONE:
            self._kill_all(0)
            return
        grace = self._grace_seconds(cause)
        self._kill_all(grace)
        if cause == Interrupt.DEADLINE:
            self._report_terminal(
                reason="DeadlineExceeded",
                message="Pod was active on the node longer than the specified deadline",
            )
        elif cause == Interrupt.SHUTDOWN:
            self._report_terminal(
                reason="Terminated",
                message="Pod was terminated in response to the local node runner shutting down",
                disruption="TerminationByKubelet",
            )
        else:
            self._report_terminal()
        self._end_after_report()

    def _end_after_report(self) -> None:
        """The pod is terminal: clean up; delete it (grace 0) if it is being deleted already. A later
        deletion is done by the runner (:meth:`NodeRunner.handle`), so no thread waits for it."""
        shutil.rmtree(self.dir / "tmp", ignore_errors=True)
        if self.interrupt() == Interrupt.DELETED:
            self._delete_now()

    def _grace_seconds(self, cause: str | None) -> float:
        if cause == Interrupt.SHUTDOWN:
            return SHUTDOWN_GRACE_SECONDS
        meta, spec = self.pod["metadata"], self.pod.get("spec", {})
        if cause == Interrupt.DELETED and meta.get("deletionGracePeriodSeconds") is not None:
            return float(meta["deletionGracePeriodSeconds"])
        grace = spec.get("terminationGracePeriodSeconds")
        return float(DEFAULT_GRACE_SECONDS if grace is None else grace)

    def _supervise(self, states: list[ContainerState], until: Callable[[], bool]) -> str | None:
        """Start the containers and keep them going per the restart policy until ``until()`` holds or
        the pod is interrupted; returns the interrupt, if any."""
        next_start = dict.fromkeys((s.name for s in states), 0.0)
        backoff = dict.fromkeys((s.name for s in states), 1.0)

        def retry_later(state: ContainerState) -> None:
            next_start[state.name] = time.time() + backoff[state.name]
            backoff[state.name] = min(backoff[state.name] * 2, MAX_BACKOFF_SECONDS)

        while True:
            cause = self.interrupt()
            if cause is not None:
                return cause
            changed = False
            for state in states:
                proc = self.procs.get(state.name)
                if state.running and proc is not None:
                    if proc.poll() is None:
                        continue
                    self._container_exited(state, proc)
                elif state.result is None and state.started_at is None and time.time() >= next_start[state.name]:
                    if not self._start_container(state):
                        retry_later(state)
                        changed = True
                        continue
                else:
                    continue
                changed = True
                if state.result is not None and self._should_restart(state):
                    state.last_result, state.result = state.result, None
                    state.started_at, state.pid = None, None
                    state.restart_count += 1
                    state.waiting_reason = "CrashLoopBackOff"
                    state.waiting_message = (
                        f"back-off {backoff[state.name]:.0f}s restarting failed container={state.name}"
                    )
                    retry_later(state)
            if changed:
                self._patch_status()
            if until():
                return None
            self._wake.wait(0.2)
            self._wake.clear()

    def _should_restart(self, state: ContainerState) -> bool:
        assert state.result is not None
        if state.sidecar or (self.restart_policy == "Always" and not state.init):
            return True
        return self.restart_policy in ("Always", "OnFailure") and state.result.exit_code != 0

    def _base_env(self) -> dict[str, str]:
        """What an image and the runtime would provide (Kubernetes' own variables override these)."""
        return {
            "PATH": self.runner.default_path,
            "HOME": str(self.dir / "work"),
            "HOSTNAME": self.pod.get("spec", {}).get("hostname") or self.name,
        }

    def _start_container(self, state: ContainerState) -> bool:
        """Start one container; False when its configuration is not resolvable yet (retried later)."""
        spec = state.spec
        try:
            declared = container_env(
                self.pod, spec, self.runner.sources, self.runner.service_env, self.runner.allocatable
            )
        except PodConfigError as exc:
            state.waiting_reason, state.waiting_message = "CreateContainerConfigError", str(exc)
            log.warning("pod %s/%s: %s", self.namespace, self.name, exc)
            return False
        # the private temp folder always wins, as a mount on /tmp would
        env = {**self._base_env(), **declared, "TMPDIR": str(self.dir / "tmp")}
        # GPUs: only those assigned are visible, as with the NVIDIA device plugin and container runtime
        devices = self.gpu_assignment.get(state.name, [])
        env["CUDA_VISIBLE_DEVICES"] = env["NVIDIA_VISIBLE_DEVICES"] = ",".join(devices)
        log_path = self.dir / "logs" / f"{state.name}.log"
        wanted = gpu_request(spec)
        if wanted > len(devices) and state.restart_count == 0:
            with open(log_path, "ab") as out:
                out.write(
                    f"[local node runner] container {state.name} asks for {wanted} {GPU_RESOURCE}; this machine "
                    f"gives it {len(devices)} ({', '.join(devices) or 'none'}): it runs with what it sees\n".encode()
                )
        started = time.time()
        try:
            argv = command_line(spec, declared)
            argv[0] = resolve_executable(argv[0], env.get("PATH", self.runner.default_path))
            # workingDir names a folder of the image; here it is used only when it exists on this machine
            working_dir = spec.get("workingDir")
            cwd = Path(working_dir) if working_dir and Path(working_dir).is_dir() else self.dir / "work"
            with open(log_path, "ab") as out:
                proc = subprocess.Popen(
                    argv,
                    env=env,
                    cwd=cwd,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        except (FileNotFoundError, PermissionError, OSError) as exc:
            with open(log_path, "ab") as out:
                out.write(f"[local node runner] cannot start container {state.name}: {exc}\n".encode())
            state.result = ContainerResult(128, started, time.time(), reason="StartError", message=str(exc))
            log.warning("pod %s/%s: container %s: %s", self.namespace, self.name, state.name, exc)
            return True
        self.procs[state.name] = proc
        state.started_at, state.pid = started, proc.pid
        state.waiting_reason = state.waiting_message = None
        (self.dir / f"{state.name}.pid").write_text(f"{proc.pid} {_proc_start_ticks(proc.pid)}\n")
        log.info(
            "pod %s/%s: container %s started (pid %d): %s; log %s",
            self.namespace,
            self.name,
            state.name,
            proc.pid,
            " ".join(argv),
            log_path,
        )
        return True

    def _container_exited(self, state: ContainerState, proc: subprocess.Popen[bytes]) -> None:
        code = exit_code_of(proc.returncode if proc.returncode is not None else -signal.SIGKILL)
        _killpg(proc.pid, signal.SIGKILL)  # whatever it left behind goes with the container
        message = None
        if code != 0 and state.spec.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            message = termination_message(self.dir / "logs" / f"{state.name}.log")
        assert state.started_at is not None
        state.result = ContainerResult(code, state.started_at, time.time(), message=message)
        (self.dir / f"{state.name}.pid").unlink(missing_ok=True)
        log.info("pod %s/%s: container %s exited with %d", self.namespace, self.name, state.name, code)

    def _kill_all(self, grace: float) -> None:
        running = [(s, self.procs[s.name]) for s in self.init_states + self.main_states if s.running]
        if not running:
            return
        if grace > 0:
            for _, proc in running:
                _killpg(proc.pid, signal.SIGTERM)
            deadline = time.time() + grace
            while time.time() < deadline and any(p.poll() is None for _, p in running):
                if self._gone:
                    break
                time.sleep(0.1)
        for _, proc in running:
            _killpg(proc.pid, signal.SIGKILL)
        for state, proc in running:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
            self._container_exited(state, proc)

    # -- status -------------------------------------------------------------------------------------
    def _cond(self, ctype: str, status: bool, reason: str | None = None) -> dict[str, Any]:
        previous = self.transitions.get(ctype)
        since = previous[1] if previous and previous[0] == status else rfc3339()
        self.transitions[ctype] = (status, since)
        return condition(ctype, status, since, reason)

    def _status(self, phase: str | None = None) -> dict[str, Any]:
        initialized = all(
            (s.started_at is not None or s.result is not None or s.last_result is not None)
            if s.sidecar
            else (s.result is not None and s.result.exit_code == 0)
            for s in self.init_states
        )
        if phase is None:
            phase = pod_phase(self.restart_policy, self.main_states) if initialized else "Pending"
        terminal = phase in ("Succeeded", "Failed")
        ready = not terminal and bool(self.main_states) and all(s.running for s in self.main_states)
        not_ready = "PodCompleted" if terminal else "ContainersNotReady"
        status: dict[str, Any] = {
            "phase": phase,
            "hostIP": LOCAL_IP,
            "hostIPs": [{"ip": LOCAL_IP}],
            "podIP": LOCAL_IP,
            "podIPs": [{"ip": LOCAL_IP}],
            "startTime": rfc3339(self.start_time),
            "observedGeneration": self.pod["metadata"].get("generation"),
            "conditions": [
                self._cond("PodReadyToStartContainers", not terminal),
                self._cond("Initialized", initialized, None if initialized else "ContainersNotInitialized"),
                self._cond("ContainersReady", ready, None if ready else not_ready),
                self._cond("Ready", ready, None if ready else not_ready),
            ],
            "containerStatuses": [s.status() for s in self.main_states],
        }
        if self.init_states:
            status["initContainerStatuses"] = [s.status() for s in self.init_states]
        return status

    def _patch(self, status: dict[str, Any], attempts: int = 1) -> None:
        """Patch the pod's status. Each patch carries the whole state, so a lost intermediate one is
        repaired by the next; a terminal one is retried (``attempts``) because nothing would follow it."""
        from kubernetes.client.exceptions import ApiException

        delay = 1.0
        for attempt in range(1, attempts + 1):
            try:
                self.runner.core.patch_namespaced_pod_status(
                    self.name, self.namespace, {"status": status}, _request_timeout=30
                )
                return
            except ApiException as exc:
                if exc.status == 404:
                    return  # the pod is gone
                error = f"{exc.status} {exc.reason}: {exc.body}"
                if exc.status == 422:
                    attempts = attempt  # invalid: retrying cannot help
            except Exception as exc:  # connection trouble: the API server may be restarting
                error = repr(exc)
            log.error(
                "pod %s/%s: status update failed (attempt %d/%d): %s",
                self.namespace, self.name, attempt, attempts, error,
            )  # fmt: skip
            if attempt < attempts and not self._gone:
                time.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF_SECONDS)

    def _patch_status(self) -> None:
        self._patch(self._status())

    def _report_terminal(
        self, reason: str | None = None, message: str | None = None, disruption: str | None = None
    ) -> None:
        """Patch the pod's final status. A pod stopped from outside (deletion, deadline, shutdown) is
        Failed unless every container had already completed successfully."""
        for state in self.init_states + self.main_states:
            if state.result is None and state.last_result is not None:
                # it was waiting to be restarted: it ends with its last exit
                state.result, state.last_result = state.last_result, None
            elif state.result is None:
                state.waiting_reason = state.waiting_reason or "PodInitializing"
        regular = [s for s in self.init_states if not s.sidecar] + self.main_states
        succeeded = all(s.result and s.result.exit_code == 0 for s in regular)
        phase = "Succeeded" if succeeded and reason is None else "Failed"
        status = self._status(phase)
        status["reason"], status["message"] = reason, message
        if disruption:
            status["conditions"].append(
                {**self._cond("DisruptionTarget", True, disruption), "message": message or disruption}
            )
        self._patch(status, attempts=2 if self._shutdown else 8)
        log.info("pod %s/%s: %s%s", self.namespace, self.name, phase, f" ({reason})" if reason else "")

    def _delete_now(self) -> None:
        from kubernetes.client.exceptions import ApiException

        self.deleted = True
        for attempt in range(1, 6):
            try:
                self.runner.core.delete_namespaced_pod(
                    self.name,
                    self.namespace,
                    grace_period_seconds=0,
                    body={"gracePeriodSeconds": 0, "preconditions": {"uid": self.uid}},
                    _request_timeout=30,
                )
                break
            except ApiException as exc:
                if exc.status in (404, 409):  # gone, or another pod of that name by now
                    break
                log.error("pod %s/%s: delete failed: %s %s", self.namespace, self.name, exc.status, exc.reason)
            except Exception as exc:
                log.error("pod %s/%s: delete failed (attempt %d): %r", self.namespace, self.name, attempt, exc)
            time.sleep(attempt)
        shutil.rmtree(self.dir / "work", ignore_errors=True)
        shutil.rmtree(self.dir / "tmp", ignore_errors=True)
        log.info("pod %s/%s: deleted", self.namespace, self.name)


def _is_running(state: ContainerState) -> Callable[[], bool]:
    return lambda: state.running


def _has_ended(state: ContainerState) -> Callable[[], bool]:
    return lambda: state.result is not None


def _memory_bytes() -> int:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 0


class NodeRunner:
    """Watches the pods bound to ``node_name`` and runs them; keeps the Node Ready."""

    def __init__(self, api_client: Any, node_name: str, state_dir: Path):
        from kubernetes import client

        self.api_client = api_client
        # Any: the calls pass plain dicts and read raw JSON (_preload_content=False)
        self.core: Any = client.CoreV1Api(api_client)
        self.coordination: Any = client.CoordinationV1Api(api_client)
        self.node_name = node_name
        self.state_dir = state_dir.resolve()
        self.sources = ApiSources(self.core)
        self.gpus = GpuPool(detect_gpus())
        venv_bin = str(Path(sys.prefix) / "bin")
        host_path = os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin")
        self.default_path = os.pathsep.join([venv_bin, *[p for p in host_path.split(os.pathsep) if p != venv_bin]])
        self.service_env = self._service_env(api_client.configuration.host)
        self.allocatable: dict[str, str] = {}
        self.workers: dict[str, PodWorker] = {}
        self.finished: dict[str, bool] = {}  # terminal pods still in the API: uid -> deleted (grace 0) yet
        self._lock = threading.Lock()
        self.stopping = threading.Event()
        self.resource_version: str | None = None

    @staticmethod
    def _service_env(host: str) -> dict[str, str]:
        """``KUBERNETES_SERVICE_HOST``/``PORT`` as every pod gets them (pointing at the local API server)."""
        match = re.match(r"^https?://([^:/]+)(?::(\d+))?", host or "")
        if not match:
            return {}
        port = match.group(2) or ("443" if host.startswith("https") else "80")
        return {"KUBERNETES_SERVICE_HOST": match.group(1), "KUBERNETES_SERVICE_PORT": port}

    # -- node ---------------------------------------------------------------------------------------
    def ensure_node(self) -> dict[str, Any]:
        """Read the Node (creating it, Ready and with this machine's capacity, when it is missing)."""
        from kubernetes.client.exceptions import ApiException

        try:
            node = json.loads(self.core.read_node(self.node_name, _preload_content=False, _request_timeout=30).data)
        except ApiException as exc:
            if exc.status != 404:
                raise
            log.info("node %s does not exist; creating it", self.node_name)
            labels = {
                "kubernetes.io/hostname": self.node_name,
                "kubernetes.io/os": "linux",
                "autolabel.dev/local-node": "true",
            }
            self.core.create_node({"metadata": {"name": self.node_name, "labels": labels}})
            capacity = {
                "cpu": str(os.cpu_count() or 1),
                "memory": f"{_memory_bytes() // 2**20}Mi",
                "pods": "110",
            }
            if self.gpus.devices:
                capacity[GPU_RESOURCE] = str(len(self.gpus.devices))
            now = rfc3339()
            ready = {
                "type": "Ready",
                "status": "True",
                "reason": "KubeletReady",
                "message": "local node runner is posting ready status",
                "lastHeartbeatTime": now,
                "lastTransitionTime": now,
            }
            self.core.patch_node_status(
                self.node_name,
                {
                    "status": {
                        "capacity": capacity,
                        "allocatable": capacity,
                        "conditions": [ready],
                        "addresses": [
                            {"type": "InternalIP", "address": LOCAL_IP},
                            {"type": "Hostname", "address": self.node_name},
                        ],
                    }
                },
            )
            node = json.loads(self.core.read_node(self.node_name, _preload_content=False, _request_timeout=30).data)
        self.allocatable = dict(node.get("status", {}).get("allocatable") or {})
        return dict(node)

    def heartbeat(self) -> None:
        """Renew the Node's Ready condition and its Lease in ``kube-node-lease``."""
        from kubernetes.client.exceptions import ApiException

        node = self.ensure_node()
        ready = next((c for c in node.get("status", {}).get("conditions") or [] if c.get("type") == "Ready"), None)
        cond = {
            "type": "Ready",
            "status": "True",
            "reason": "KubeletReady",
            "message": "local node runner is posting ready status",
            "lastHeartbeatTime": rfc3339(),
        }
        if not ready or ready.get("status") != "True":
            cond["lastTransitionTime"] = rfc3339()
        self.core.patch_node_status(self.node_name, {"status": {"conditions": [cond]}}, _request_timeout=30)
        lease = {
            "metadata": {
                "name": self.node_name,
                "namespace": "kube-node-lease",
                "ownerReferences": [
                    {
                        "apiVersion": "v1",
                        "kind": "Node",
                        "name": self.node_name,
                        "uid": node["metadata"]["uid"],
                    }
                ],
            },
            "spec": {
                "holderIdentity": self.node_name,
                "leaseDurationSeconds": LEASE_DURATION_SECONDS,
                "renewTime": micro_time(),
            },
        }
        try:
            self.coordination.patch_namespaced_lease(
                self.node_name, "kube-node-lease", {"spec": lease["spec"]}, _request_timeout=30
            )
        except ApiException as exc:
            if exc.status != 404:
                raise
            with contextlib.suppress(ApiException):
                self.core.create_namespace({"metadata": {"name": "kube-node-lease"}}, _request_timeout=30)
            self.coordination.create_namespaced_lease("kube-node-lease", lease, _request_timeout=30)

    def _heartbeat_loop(self) -> None:
        while not self.stopping.wait(HEARTBEAT_SECONDS):
            try:
                self.heartbeat()
            except Exception as exc:
                log.warning("node heartbeat failed: %s", exc)

    # -- pods ---------------------------------------------------------------------------------------
    def _list_pods(self) -> list[Pod]:
        resp = self.core.list_pod_for_all_namespaces(
            field_selector=f"spec.nodeName={self.node_name}", _preload_content=False, _request_timeout=60
        )
        body = json.loads(resp.data)
        self.resource_version = body["metadata"].get("resourceVersion")
        return list(body.get("items") or [])

    def adopt_after_restart(self, pods: list[Pod]) -> None:
        """Pods that a previous runner started cannot be resumed (their processes were ours, not theirs):
        kill what is left of them and mark them Failed with reason ``NodeRunnerRestarted``."""
        for pid_file in (self.state_dir / "pods").glob("*/*.pid"):
            with contextlib.suppress(OSError, ValueError):
                pid_text, ticks = pid_file.read_text().split()
                if _proc_start_ticks(int(pid_text)) == ticks:
                    log.info("killing process group %s left by a previous node runner", pid_text)
                    _killpg(int(pid_text), signal.SIGKILL)
                pid_file.unlink()
        for pod in pods:
            phase = pod.get("status", {}).get("phase", "Pending")
            started = pod.get("status", {}).get("startTime")
            if phase in ("Succeeded", "Failed") or not containers_started(pod):
                continue  # finished, or nothing of it ever ran: the watch loop (re)starts it
            meta = pod["metadata"]
            log.info(
                "pod %s/%s was %s under a previous node runner: marking it Failed",
                meta["namespace"],
                meta["name"],
                phase,
            )
            worker = PodWorker(self, pod)
            worker.start_time = _parse_time(started)
            for state in worker.init_states + worker.main_states:
                state.result = _previous_result(pod, state)
            worker._report_terminal(
                reason="NodeRunnerRestarted",
                message="the local node runner restarted; the pod's processes did not survive it",
                disruption="TerminationByKubelet",
            )

    def handle(self, event_type: str, pod: Pod) -> None:
        meta = pod.get("metadata", {})
        uid = meta.get("uid")
        if not uid:
            return
        with self._lock:
            worker = self.workers.get(uid)
            if event_type == "DELETED":
                if worker is not None:
                    worker.mark_gone()
                self.finished.pop(uid, None)
                return
            if worker is not None:
                worker.update(pod)
                return
            if self.stopping.is_set():
                return
            if uid in self.finished or pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
                deleted = self.finished.setdefault(uid, False)
                if meta.get("deletionTimestamp") and not deleted:
                    self._delete_terminal(pod)
                return
            worker = PodWorker(self, pod)
            self.workers[uid] = worker
        worker.start()

    def _delete_terminal(self, pod: Pod) -> None:
        """Delete a terminal pod with grace 0 once it is being deleted, as a kubelet does (the caller holds
        the lock)."""
        self.finished[pod["metadata"]["uid"]] = True
        threading.Thread(target=PodWorker(self, pod)._delete_now, daemon=True).start()

    def worker_done(self, worker: PodWorker) -> None:
        with self._lock:
            self.workers.pop(worker.uid, None)
            if worker._gone:
                return
            self.finished[worker.uid] = worker.deleted
            # a deletion that arrived after the worker last looked
            if not worker.deleted and worker.pod["metadata"].get("deletionTimestamp") and not worker._shutdown:
                self._delete_terminal(worker.pod)

    def _sync(self, pods: list[Pod]) -> None:
        seen = set()
        for pod in pods:
            seen.add(pod["metadata"]["uid"])
            self.handle("MODIFIED", pod)
        with self._lock:
            vanished = [w for uid, w in self.workers.items() if uid not in seen]
            self.finished = {uid: deleted for uid, deleted in self.finished.items() if uid in seen}
        for worker in vanished:
            worker.mark_gone()

    def _watch_loop(self) -> None:
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException

        need_list = True
        while not self.stopping.is_set():
            try:
                if need_list:
                    self._sync(self._list_pods())
                    need_list = False
                stream = watch.Watch().stream(
                    self.core.list_pod_for_all_namespaces,
                    field_selector=f"spec.nodeName={self.node_name}",
                    resource_version=self.resource_version,
                    allow_watch_bookmarks=True,
                    timeout_seconds=60,
                    deserialize=False,
                    _request_timeout=(10, 90),
                )
                for event in stream:
                    if self.stopping.is_set():
                        break
                    raw = event.get("object") or {}  # deserialize=False: the raw JSON
                    if event["type"] == "ERROR":
                        need_list = True
                        break
                    rv = raw.get("metadata", {}).get("resourceVersion")
                    if rv:
                        self.resource_version = rv
                    if event["type"] != "BOOKMARK":
                        self.handle(event["type"], raw)
            except ApiException as exc:
                if exc.status != 410:
                    log.warning("pod watch failed (%s %s); re-listing", exc.status, exc.reason)
                    self.stopping.wait(1)
                need_list = True
            except Exception as exc:
                if self.stopping.is_set():
                    break
                log.warning("pod watch interrupted (%s); re-listing", exc)
                self.stopping.wait(1)
                need_list = True

    # -- lifecycle ----------------------------------------------------------------------------------
    def run(self) -> None:
        """Run until :meth:`stop` (or SIGTERM/SIGINT when called from the main thread)."""
        (self.state_dir / "pods").mkdir(parents=True, exist_ok=True)
        self.heartbeat()
        self.adopt_after_restart(self._list_pods())
        threads = [
            threading.Thread(target=self._watch_loop, name="watch", daemon=True),
            threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True),
        ]
        for thread in threads:
            thread.start()
        log.info(
            "node runner for %s started (state in %s; GPUs: %s)",
            self.node_name,
            self.state_dir,
            ", ".join(self.gpus.devices) or "none",
        )
        self.stopping.wait()
        self._shutdown_pods()

    def stop(self) -> None:
        self.stopping.set()

    def _shutdown_pods(self) -> None:
        with self._lock:
            workers = list(self.workers.values())
        for worker in workers:
            worker.shutdown()
        for worker in workers:
            worker.join(SHUTDOWN_GRACE_SECONDS + 35)
        log.info("node runner stopped (%d pods shut down)", len(workers))


def containers_started(pod: Pod) -> bool:
    """Whether any container of the pod was ever started (a process existed for it)."""
    status = pod.get("status", {})
    if status.get("phase") == "Running":
        return True
    statuses = (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or [])
    return any(
        "running" in (s.get("state") or {}) or "terminated" in (s.get("state") or {}) or s.get("lastState")
        for s in statuses
    )


def _previous_result(pod: Pod, state: ContainerState) -> ContainerResult | None:
    """For a pod found running after a restart: its containers end now with SIGKILL's exit code."""
    statuses = pod.get("status", {}).get("initContainerStatuses" if state.init else "containerStatuses") or []
    current: dict[str, Any] = next((s for s in statuses if s.get("name") == state.name), {})
    terminated = (current.get("state") or {}).get("terminated")
    if terminated:
        return ContainerResult(
            int(terminated.get("exitCode", 0)),
            _parse_time(terminated.get("startedAt")),
            _parse_time(terminated.get("finishedAt")),
            terminated.get("reason"),
            terminated.get("message"),
        )
    running = (current.get("state") or {}).get("running")
    if running is None:
        return None
    started = _parse_time(running.get("startedAt"))
    return ContainerResult(137, started, time.time(), reason="Error", message="killed: the node runner restarted")


def _parse_time(text: str | None) -> float:
    if not text:
        return time.time()
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devenv.node", description=__doc__.split("\n\n")[0])
    parser.add_argument("--kubeconfig", required=True, help="admin kubeconfig of the cluster")
    parser.add_argument("--node-name", default="local-node", help="the Node whose pods this runs")
    parser.add_argument("--state-dir", default=".dev/node", help="per-pod folders and logs (default .dev/node)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from kubernetes import config

    api_client = config.new_client_from_config(config_file=args.kubeconfig)
    runner = NodeRunner(api_client, args.node_name, Path(args.state_dir))

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("signal %d: shutting down", signum)
        runner.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    runner.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
