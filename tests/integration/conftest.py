"""Fixtures of the integration tests: a real local control plane (``cluster``) and a real S3 server
(``s3_server``), each started once per test session, and what runs on them: a fresh namespace per test,
the local node runner and the operator as subprocesses (one per test module that asks for them).

The control plane, etcd and MinIO are built from source on first use (tools/build-bins.sh) and cached under
.cache/bin. If they cannot be built or started, the tests that need them fail with the reason; nothing is
skipped. A test module that uses ``cluster`` must be marked ``needs_cluster``, one that uses ``s3_server``
``needs_s3`` (tests/conftest.py fails a test that forgets). Every process started here is stopped by the
fixture's finalizer, also when a test fails or when a start fails half-way; the plain helpers (the
``Process`` classes, kubectl and S3 shortcuts) are in ``operator_fixtures.py``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from devenv.cluster import LocalCluster
from devenv.labelstudio import LabelStudioServer
from devenv.s3 import MinioServer

from autolabel.storage import Storage, StorageConfig

from .operator_fixtures import BUCKET, REPO, OperatorProcess, Process, node_runner, running_operator

CRD_DIR = REPO / "crds"


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """The local control plane with the CRD applied (``make cluster-up``'s, in a temporary folder)."""
    local = LocalCluster(tmp_path_factory.mktemp("cluster"))
    local.start()  # if it fails, it stops what it had started and keeps the logs (stop() would remove them)
    try:
        local.kubectl("apply", "-f", str(CRD_DIR))
        local.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/autolabeljobs.autolabel.dev")
        yield local
    finally:
        local.stop()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MinioServer]:
    server = MinioServer(tmp_path_factory.mktemp("s3"))
    server.start()  # the same
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabelStudioServer]:
    """A real Label Studio server (installed on first use into .cache/label-studio-venv), with one user and
    its API token (``label_studio.token``, ``label_studio.headers()``)."""
    server = LabelStudioServer(tmp_path_factory.mktemp("labelstudio"))
    server.start()  # the same
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


@pytest.fixture(scope="session")
def s3_bucket(s3_server: MinioServer) -> str:
    """The bucket the operator tests' datasets go to (``operator_fixtures.BUCKET``)."""
    s3_server.make_bucket(BUCKET)
    return BUCKET


@pytest.fixture(scope="module")
def operator_node_runner(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    """The local node runner (``python -m devenv.node``) running the pods bound to ``local-node``."""
    runner = node_runner(cluster, tmp_path_factory.mktemp("node"))
    try:
        runner.start()
        yield runner
    finally:
        runner.stop()  # SIGTERM: the runner stops its pods' processes


@pytest.fixture(scope="module")
def autolabel_operator(
    cluster: LocalCluster,
    s3_server: MinioServer,
    s3_bucket: str,
    operator_node_runner: Process,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorProcess]:
    """The operator as a subprocess, with the fake worker (tests/fakeworker.py) in its Jobs' pods."""
    with running_operator(cluster, s3_server, tmp_path_factory.mktemp("operator")) as op:
        yield op
