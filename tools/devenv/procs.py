"""Small helpers shared by the local services: binaries, free ports, background processes by pid."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Self

REPO_ROOT = Path(__file__).resolve().parents[2]


def bin_dir() -> Path:
    return Path(os.environ.get("AUTOLABEL_BIN_DIR", REPO_ROOT / ".cache" / "bin"))


def ensure_binaries(*groups: str) -> Path:
    """Builds (or finds up to date) the Go-built binaries; fails loudly when that is impossible."""
    result = subprocess.run(
        ["bash", str(REPO_ROOT / "tools" / "build-bins.sh"), *groups],
        env={**os.environ, "BIN_DIR": str(bin_dir())},
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"building {' '.join(groups) or 'the local binaries'} failed "
            f"(tools/build-bins.sh exit {result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
    return bin_dir()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def log_tail(log: Path | None, lines: int = 30) -> str:
    """The last lines of a log file, headed by its path ("" when there is none)."""
    if log is None or not log.exists():
        return ""
    text = log.read_text(errors="replace").splitlines()[-lines:]
    return f"\n--- last lines of {log} ---\n" + "\n".join(text)


def wait_until(check: Callable[[], bool], timeout: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.25)
    raise TimeoutError(f"{what} not ready after {timeout:.0f}s{log_tail(log)}")


def http_ok(url: str, headers: dict[str, str] | None = None, insecure: bool = False) -> bool:
    import http.client
    import ssl

    context = ssl._create_unverified_context() if insecure else None  # only for our own loopback servers
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=2, context=context) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError, http.client.HTTPException):
        return False


class StartError(RuntimeError):
    """A service's process exited, or did not answer its health check in time, while starting."""

    def __init__(self, component: str, message: str):
        super().__init__(message)
        self.component = component


class ProcessGroup:
    """Background processes started by one service, recorded by pid in ``<state>/pids.json``.

    Each process gets its own session, so it outlives the Python process that started it (``make
    cluster-up`` returns while the control plane keeps running) and can be stopped by pid later.
    """

    def __init__(self, state_dir: Path):
        self.state_dir = state_dir
        self.pid_file = state_dir / "pids.json"
        self.log_dir = state_dir / "logs"
        self.children: dict[str, subprocess.Popen[bytes]] = {}  # started by this object (this process)

    def _read(self) -> dict[str, int]:
        if not self.pid_file.exists():
            return {}
        return {k: int(v) for k, v in json.loads(self.pid_file.read_text()).items()}

    def _write(self, pids: dict[str, int]) -> None:
        tmp = self.pid_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(pids, indent=1))
        tmp.replace(self.pid_file)

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Path:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"{name}.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})},
                start_new_session=True,
                cwd=self.state_dir,
            )
        self.children[name] = proc
        self._write({**self._read(), name: proc.pid})
        return log

    def log(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def wait_healthy(self, checks: dict[str, Callable[[], bool]], timeout: float) -> None:
        """Polls each started component's health check until all pass.

        Raises :class:`StartError` naming the component, with the last lines of its log, as soon as one
        of them exits, or when one is still not healthy after ``timeout`` seconds."""
        pending = dict(checks)
        deadline = time.monotonic() + timeout
        while pending:
            for name, check in list(pending.items()):
                proc = self.children.get(name)
                if proc is not None and proc.poll() is not None:
                    raise StartError(
                        name, f"{name} exited with code {proc.returncode} while starting{log_tail(self.log(name))}"
                    )
                if check():
                    del pending[name]
            if not pending:
                return
            if time.monotonic() >= deadline:
                name = next(iter(pending))
                others = f" (nor {', '.join(list(pending)[1:])})" if len(pending) > 1 else ""
                raise StartError(
                    name, f"{name} did not become healthy within {timeout:g}s{others}{log_tail(self.log(name))}"
                )
            time.sleep(0.25)

    def alive(self) -> dict[str, int]:
        return {name: pid for name, pid in self._read().items() if pid_alive(pid)}

    def stop_all(self, timeout: float = 15) -> list[str]:
        """Stops every recorded process (reverse start order): SIGTERM, then SIGKILL."""
        stopped = []
        for name, pid in reversed(list(self._read().items())):
            if stop_pid(pid, timeout):
                stopped.append(f"{name} (pid {pid})")
        for proc in self.children.values():
            proc.poll()  # reaped by stop_pid already; this only tells the Popen object so
        self.children.clear()
        if self.pid_file.exists():
            self.pid_file.unlink()
        return stopped


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours still answers kill(0); reap it if it is ours.
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return _not_zombie(pid)


def _not_zombie(pid: int) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[0] != "Z"
    except (OSError, IndexError):
        return False


def stop_pid(pid: int, timeout: float = 15) -> bool:
    """SIGTERM the process group (falling back to the pid), SIGKILL after ``timeout``; True if it ran."""
    if not pid_alive(pid):
        return False
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                return True
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not pid_alive(pid):
                return True
            time.sleep(0.1)
    return True


class LocalService:
    """Processes started into a state folder (a control plane, an S3 server, Label Studio): ``start`` gets
    what they need, clears the folder and starts them; a failed start stops what it had started before the
    error propagates; ``stop`` ends them all and removes the folder; usable as a context manager."""

    state_dir: Path
    procs: ProcessGroup
    name = "the service"
    """For messages: "<name> is already running", "<name> did not start"."""
    start_timeout = 60.0

    def _prepare(self) -> Path:
        """What the processes need, built or installed (before the old state folder goes)."""
        raise NotImplementedError

    def _start(self, prepared: Path, timeout: float) -> None:
        """Start the processes and return once they answer (``timeout`` seconds per wait)."""
        raise NotImplementedError

    def start(self, timeout: float | None = None) -> Self:
        if self.procs.alive():
            raise RuntimeError(f"{self.name} is already running from {self.state_dir} (stop it first)")
        prepared = self._prepare()
        if self.state_dir.exists():
            shutil.rmtree(self.state_dir)
        try:
            self._start(prepared, self.start_timeout if timeout is None else timeout)
        except BaseException as exc:
            stopped = self.procs.stop_all()
            exc.add_note(
                f"{self.name} did not start; stopped what had started: {', '.join(stopped) or 'nothing'}"
                f" (logs in {self.procs.log_dir})"
            )
            raise
        return self

    def stop(self) -> list[str]:
        """Stop every process started (also after a start that failed half-way); the names stopped."""
        stopped = self.procs.stop_all()
        shutil.rmtree(self.state_dir, ignore_errors=True)
        return stopped

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
