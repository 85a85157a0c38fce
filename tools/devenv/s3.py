"""A real S3-protocol server on loopback: MinIO, built from source by tools/build-bins.sh.

    python -m devenv.s3 up   [--state-dir .s3]
    python -m devenv.s3 down [--state-dir .s3]

Everything in the project reaches it through boto3 with an endpoint URL, exactly as it would reach
AWS S3, OBS or any other S3-compatible store.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import secrets
import sys
from pathlib import Path
from typing import Any

from devenv.procs import LocalService, ProcessGroup, StartError, ensure_binaries, free_port, http_ok


class MinioServer(LocalService):
    def __init__(self, state_dir: str | Path = ".s3"):
        self.state_dir = Path(state_dir).resolve()
        self.procs = ProcessGroup(self.state_dir)
        self.info_file = self.state_dir / "s3.json"
        self.endpoint_url = ""
        self.access_key = ""
        self.secret_key = ""
        self.region = "us-east-1"
        if self.info_file.exists() and self.procs.alive():
            self.__dict__.update(json.loads(self.info_file.read_text()))

    name = "the S3 server"
    start_timeout = 60.0

    def _prepare(self) -> Path:
        return ensure_binaries("minio")

    def _start(self, bins: Path, timeout: float) -> None:
        (self.state_dir / "data").mkdir(parents=True)
        port = free_port()
        self.endpoint_url = f"http://127.0.0.1:{port}"
        self.access_key = "autolabel-" + secrets.token_hex(4)
        self.secret_key = secrets.token_hex(16)
        self._launch(bins, port, timeout)

    def pause(self) -> list[str]:
        """Stops the server process but keeps its data, address and credentials, so that :meth:`resume`
        brings the same store back (a store outage, for tests); returns what was stopped."""
        return self.procs.stop_all()

    def resume(self, timeout: float = 60) -> MinioServer:
        """Starts the server again after :meth:`pause`, on the same data folder, port and credentials, and
        returns once it is live. A failed start is stopped before the error propagates."""
        if self.procs.alive():
            return self
        if not self.endpoint_url or not (self.state_dir / "data").is_dir():
            raise RuntimeError(f"no paused S3 server in {self.state_dir} (start it first)")
        try:
            self._launch(ensure_binaries("minio"), int(self.endpoint_url.rsplit(":", 1)[1]), timeout)
        except BaseException as exc:
            stopped = self.procs.stop_all()
            exc.add_note(f"the S3 server did not resume; stopped: {', '.join(stopped) or 'nothing'}")
            raise
        return self

    def _launch(self, bins: Path, port: int, timeout: float) -> None:
        console = free_port()
        self.procs.start(
            "minio",
            [str(bins / "minio"), "server", "--quiet", "--address", f"127.0.0.1:{port}",
             "--console-address", f"127.0.0.1:{console}", str(self.state_dir / "data")],
            env={
                "MINIO_ROOT_USER": self.access_key,
                "MINIO_ROOT_PASSWORD": self.secret_key,
                "MINIO_BROWSER": "off",
                "MINIO_UPDATE": "off",
                "MINIO_CI_CD": "1",
            },
        )
        self.procs.wait_healthy({"minio": lambda: http_ok(f"{self.endpoint_url}/minio/health/live")}, timeout)
        self.info_file.write_text(json.dumps(self.env_info(), indent=1))

    def env_info(self) -> dict[str, str]:
        return {
            "endpoint_url": self.endpoint_url,
            "access_key": self.access_key,
            "secret_key": self.secret_key,
            "region": self.region,
        }

    def env(self) -> dict[str, str]:
        """The standard AWS variables that point boto3 (and the AWS CLI) at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
        }

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
        )

    def make_bucket(self, name: str) -> None:
        client = self.client()
        with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
            client.create_bucket(Bucket=name)



def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devenv.s3", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["up", "down"])
    parser.add_argument("--state-dir", default=".s3")
    args = parser.parse_args(argv)
    server = MinioServer(args.state_dir)
    if args.command == "up":
        if not server.procs.alive():
            try:
                server.start()
            except StartError as exc:
                print(f"s3 up failed: {exc}", file=sys.stderr)
                return 1
        for key, value in server.env().items():
            print(f"export {key}={value}")
    else:
        stopped = server.stop()
        print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
