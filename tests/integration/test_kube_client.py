"""The operator's API client against the real API server: the calls whose semantics the fakes only imitate."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest
from autolabel_operator.errors import Conflict
from autolabel_operator.kube import Kube
from devenv.cluster import LocalCluster
from kubernetes_asyncio import config

pytestmark = pytest.mark.needs_cluster


def secret(name: str, key_id: str) -> dict:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
            "stringData": {"AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": "s"}}  # fmt: skip


def test_ensure_replaces_a_stale_secret_and_leases_are_compare_and_swap(cluster: LocalCluster, namespace: str) -> None:
    async def scenario() -> None:
        api = await config.new_client_from_config(config_file=str(cluster.kubeconfig))
        kube = Kube(api)
        try:
            await kube.ensure("secrets", namespace, secret("job-s3", "old"))
            await kube.ensure("secrets", namespace, secret("job-s3", "rotated"))  # a Job created again
            assert (await kube.read_secret(namespace, "job-s3") or {})["AWS_ACCESS_KEY_ID"] == "rotated"
            lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "l"},
                     "spec": {"holderIdentity": "a"}}  # fmt: skip
            created = await kube.create_lease(namespace, lease)
            with pytest.raises(Conflict):
                await kube.create_lease(namespace, lease)
            stale = json.loads(json.dumps(created))
            created["spec"]["holderIdentity"] = "b"
            await kube.replace_lease(namespace, "l", created)
            stale["spec"]["holderIdentity"] = "c"
            with pytest.raises(Conflict):  # written with an old resourceVersion: lost the race
                await kube.replace_lease(namespace, "l", stale)
            assert ((await kube.get_lease(namespace, "l")) or {})["spec"]["holderIdentity"] == "b"
        finally:
            await api.close()

    asyncio.run(scenario())
    raw = json.loads(cluster.kubectl("get", "secret", "job-s3", "-n", namespace, "-o", "json").stdout)
    assert base64.b64decode(raw["data"]["AWS_ACCESS_KEY_ID"]).decode() == "rotated"
