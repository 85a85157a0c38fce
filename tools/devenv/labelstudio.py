"""A real Label Studio server on loopback: the review screen that ``autolabel review push/pull`` talk to.

    python -m devenv.labelstudio up   [--state-dir .labelstudio]
    python -m devenv.labelstudio down [--state-dir .labelstudio]

Label Studio (the ``label-studio`` package from PyPI, :data:`VERSION`) is installed on first use into its
own virtualenv, ``.cache/label-studio-venv`` (a stamp file records the version; a later use with the same
version reuses it), never into the project's ``.venv``: its pins (Django, ...) are its own. The server runs
as a local process, SQLite in the state folder, with one user and a known API token created at start.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import secrets
import shutil
import subprocess
import sys
import venv
from pathlib import Path

from devenv.procs import REPO_ROOT, LocalService, ProcessGroup, StartError, free_port, http_ok

VERSION = "1.23.2"
STAMP = ".autolabel-installed"


def venv_dir() -> Path:
    return Path(os.environ.get("AUTOLABEL_LABEL_STUDIO_VENV", REPO_ROOT / ".cache" / "label-studio-venv"))


def ensure_label_studio(version: str = VERSION) -> Path:
    """The ``label-studio`` executable of :func:`venv_dir`, installed there first unless its stamp says
    ``version`` is. Concurrent callers wait for one install (a lock file beside the virtualenv)."""
    root = venv_dir()
    exe = root / "bin" / "label-studio"
    stamp = root / STAMP
    if stamp.exists() and stamp.read_text().strip() == version and exe.exists():
        return exe
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / (root.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.exists() and stamp.read_text().strip() == version and exe.exists():
            return exe
        if root.exists():
            shutil.rmtree(root)
        venv.EnvBuilder(with_pip=True, clear=True).create(root)
        argv = [str(root / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check", "-q",
                f"label-studio=={version}"]  # fmt: skip
        result = subprocess.run(argv, capture_output=True, text=True)
        if result.returncode != 0 or not exe.exists():
            raise RuntimeError(
                f"installing label-studio=={version} into {root} failed (pip exit {result.returncode}):\n"
                f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            )
        stamp.write_text(version + "\n")
    return exe


class LabelStudioServer(LocalService):
    def __init__(self, state_dir: str | Path = ".labelstudio"):
        self.state_dir = Path(state_dir).resolve()
        self.procs = ProcessGroup(self.state_dir)
        self.info_file = self.state_dir / "labelstudio.json"
        self.url = ""
        self.username = ""
        self.password = ""
        self.token = ""
        if self.info_file.exists() and self.procs.alive():
            self.__dict__.update(json.loads(self.info_file.read_text()))

    name = "Label Studio"
    start_timeout = 240.0

    def _prepare(self) -> Path:
        return ensure_label_studio()

    def _start(self, exe: Path, timeout: float) -> None:
        data = self.state_dir / "data"
        data.mkdir(parents=True)
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.username = "reviewer@autolabel.local"
        self.password = secrets.token_hex(12)
        self.token = secrets.token_hex(20)
        argv = [str(exe), "start", "--no-browser", "--internal-host", "127.0.0.1",
                "--port", str(port), "--data-dir", str(data), "--database", str(data / "label_studio.sqlite3"),
                "--username", self.username, "--password", self.password, "--user-token", self.token,
                "--enable-legacy-api-token"]  # fmt: skip
        self.procs.start(
            "label-studio",
            argv,
            env={
                "LABEL_STUDIO_BASE_DATA_DIR": str(data),
                "DJANGO_DB": "sqlite",
                "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
                "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "false",
                "COLLECT_ANALYTICS": "false",
                "SENTRY_DSN": "",
                "FRONTEND_SENTRY_DSN": "",
            },
        )
        self.procs.wait_healthy({"label-studio": lambda: http_ok(f"{self.url}/health")}, timeout)
        self.info_file.write_text(json.dumps(self.info(), indent=1))

    def info(self) -> dict[str, str]:
        return {"url": self.url, "username": self.username, "password": self.password, "token": self.token}

    def headers(self) -> dict[str, str]:
        """What an API call sends: the legacy token scheme (``Authorization: Token <token>``)."""
        return {"Authorization": f"Token {self.token}"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devenv.labelstudio", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["up", "down"])
    parser.add_argument("--state-dir", default=".labelstudio")
    args = parser.parse_args(argv)
    server = LabelStudioServer(args.state_dir)
    if args.command == "up":
        if not server.procs.alive():
            try:
                server.start()
            except StartError as exc:
                print(f"labelstudio up failed: {exc}", file=sys.stderr)
                return 1
        print(f"export LABEL_STUDIO_URL={server.url}")
        print(f"export LABEL_STUDIO_TOKEN={server.token}")
    else:
        stopped = server.stop()
        print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
