"""Session fixtures: a real local control plane and a real S3 server, started once per test session.

Both are built from source on first use (tools/build-bins.sh) and cached under .cache/bin. If they cannot
be built or started, the tests that need them fail with the reason; nothing is skipped.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from devenv.cluster import LocalCluster
from devenv.s3 import MinioServer

from autolabel.storage import Storage, StorageConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
CRD_DIR = REPO_ROOT / "crds"


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    local = LocalCluster(tmp_path_factory.mktemp("cluster"))
    local.start()
    try:
        local.kubectl("apply", "-f", str(CRD_DIR))
        local.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/autolabeljobs.autolabel.dev")
        yield local
    finally:
        local.stop()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MinioServer]:
    server = MinioServer(tmp_path_factory.mktemp("s3"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def storage(s3_server: MinioServer) -> Storage:
    """The project's storage layer pointed at the session's MinIO, as a worker pod would be."""
    return Storage(
        StorageConfig(
            endpoint_url=s3_server.endpoint_url,
            access_key=s3_server.access_key,
            secret_key=s3_server.secret_key,
            region=s3_server.region,
        )
    )


@pytest.fixture
def namespace(cluster: LocalCluster) -> Iterator[str]:
    """A fresh namespace for one test; deleted afterwards (without waiting for it to go)."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)

