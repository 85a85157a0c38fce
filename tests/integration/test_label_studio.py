"""``autolabel review push/pull`` against a real Label Studio server (tools/devenv/labelstudio.py), the real
local control plane and MinIO, with the operator running the fake worker (every proposal ``dog``, hard,
confidence 0.5). The reviewer is played through Label Studio's own REST API."""

from __future__ import annotations

import io
import json
import subprocess
import urllib.request
from typing import Any

import pytest
from autolabel_cli.review.labelstudio import label_config
from devenv.cluster import LocalCluster
from devenv.labelstudio import LabelStudioServer
from devenv.s3 import MinioServer
from PIL import Image

from .operator_fixtures import BUCKET, REPO, apply, dataset, job_manifest, put, wait_phase
from .test_cli_cluster import BIN, cli_env, get_bytes

pytestmark = [
    pytest.mark.needs_cluster,
    pytest.mark.needs_s3,
    pytest.mark.needs_label_studio,
    pytest.mark.usefixtures("autolabel_operator"),
]


def ls_api(server: LabelStudioServer, method: str, path: str, body: Any = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    headers = {**server.headers(), "Content-Type": "application/json"}
    request = urllib.request.Request(server.url + path, data=data, method=method, headers=headers)
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"null")


def review(
    cluster: LocalCluster, s3: MinioServer, server: LabelStudioServer, *args: str, token: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**cli_env(s3), "LABEL_STUDIO_TOKEN": server.token if token is None else token}
    argv = [str(BIN / "autolabel"), "--kubeconfig", str(cluster.kubeconfig), *args]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, cwd=REPO)


def choice(label: str) -> list[dict[str, Any]]:
    return [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [label]}}]


def test_review_in_label_studio(
    cluster: LocalCluster, s3_server: MinioServer, label_studio: LabelStudioServer, namespace: str
) -> None:
    manifest = dataset(s3_server, {"cat": 5, "dog": 6}, unlabeled=6)
    key = manifest.removeprefix(f"s3://{BUCKET}/")
    folder = manifest.rsplit("/", 1)[0]
    png = io.BytesIO()
    Image.new("RGB", (6, 4), "white").save(png, format="PNG")
    unlabeled = [f"{folder}/img/{n:05d}.png" for n in range(12, 18)]
    for uri in unlabeled:  # Label Studio's tasks point at them
        put(s3_server, uri.removeprefix(f"s3://{BUCKET}/"), png.getvalue())
    original = get_bytes(s3_server, key)
    apply(cluster, namespace, job_manifest("done", manifest, {"fakeworker.autolabel.dev/seconds": "0.3"}))
    wait_phase(cluster, namespace, "done", "Succeeded", timeout=90)
    where = ["-n", namespace, "--label-studio", label_studio.url]

    no_token = review(cluster, s3_server, label_studio, "review", "push", "done", *where, token="")
    assert no_token.returncode == 2 and "LABEL_STUDIO_TOKEN" in no_token.stderr

    pushed = review(cluster, s3_server, label_studio, "review", "push", "done", *where)
    assert pushed.returncode == 0, pushed.stderr
    assert "created project" in pushed.stdout and "imported 6 task(s) (6 hard, first); 0 already there" in pushed.stdout
    projects = ls_api(label_studio, "GET", f"/api/projects?title=autolabel: {namespace}/done".replace(" ", "%20"))
    [project] = [p for p in projects["results"] if p["title"] == f"autolabel: {namespace}/done"]
    pid = project["id"]
    assert '<Choice value="cat"/><Choice value="dog"/>' in project["label_config"]
    export_url = f"/api/projects/{pid}/export?exportType=JSON&download_all_tasks=true"
    tasks = ls_api(label_studio, "GET", export_url)
    assert sorted(t["data"]["source"] for t in tasks) == unlabeled
    assert all(t["data"]["hard"] is True for t in tasks)
    with urllib.request.urlopen(tasks[0]["data"]["image"], timeout=10) as image:  # a presigned GET URL
        assert image.read() == png.getvalue()
    [prediction] = ls_api(label_studio, "GET", f"/api/predictions?task={tasks[0]['id']}")
    assert prediction["model_version"].startswith("done-") and prediction["score"] == 0.5
    assert prediction["result"] == choice("dog")

    # The reviewer: accepts the proposal of one task, changes another's, skips a third, leaves the rest.
    by_source = {t["data"]["source"]: t["id"] for t in tasks}
    accepted, changed, skipped = unlabeled[1], unlabeled[3], unlabeled[4]
    ls_api(label_studio, "POST", f"/api/tasks/{by_source[accepted]}/annotations", {"result": choice("dog")})
    ls_api(label_studio, "POST", f"/api/tasks/{by_source[changed]}/annotations", {"result": choice("cat")})
    ls_api(label_studio, "POST", f"/api/tasks/{by_source[skipped]}/annotations", {"result": [], "was_cancelled": True})

    pulled = review(cluster, s3_server, label_studio, "review", "pull", "done", *where)
    assert pulled.returncode == 0, pulled.stderr
    assert "2 reviewed (1 accepted, 1 changed), 4 left unlabeled" in pulled.stdout, pulled.stdout
    version = pulled.stdout.split()[1].rstrip(":")
    assert version == f"{folder}/data.v1.manifest"
    new_lines = get_bytes(s3_server, version.removeprefix(f"s3://{BUCKET}/")).decode().splitlines()
    old_lines = original.decode().splitlines()
    assert len(new_lines) == len(old_lines) == 17
    for old, new in zip(old_lines, new_lines, strict=True):
        source = f"{folder}/{json.loads(old)['source']}" if "://" not in old else json.loads(old)["source"]
        if source in (accepted, changed):
            [ann] = json.loads(new)["annotation"]
            assert ann["name"] == ("dog" if source == accepted else "cat")
            assert ann["annotated-by"] == "human" and ann["job-name"] == "done"
            assert ann["proposed"] == {"name": "dog", "confidence": 0.5}
        else:
            assert new == old  # labeled lines and unreviewed images byte for byte
    assert get_bytes(s3_server, key) == original  # the original manifest is untouched

    again = review(cluster, s3_server, label_studio, "review", "pull", "done", *where)
    assert again.returncode == 0 and f"unchanged: {version}" in again.stdout, again.stdout

    repushed = review(cluster, s3_server, label_studio, "review", "push", "done", *where)
    assert repushed.returncode == 0, repushed.stderr
    assert f"found project {pid}" in repushed.stdout and "imported 0 task(s)" in repushed.stdout
    assert "6 already there" in repushed.stdout
    assert len(ls_api(label_studio, "GET", export_url)) == 6  # no duplicate tasks

    # `autolabel export --format labelstudio` imports into the real server as it is.
    exported = review(cluster, s3_server, label_studio, "export", "done", "-n", namespace, "--format", "labelstudio")
    assert exported.returncode == 0, exported.stderr
    doc = json.loads(get_bytes(s3_server, exported.stdout.split()[-1].removeprefix(f"s3://{BUCKET}/")))
    config = label_config(["cat", "dog"])
    other = ls_api(label_studio, "POST", "/api/projects", {"title": "export", "label_config": config})
    imported = ls_api(label_studio, "POST", f"/api/projects/{other['id']}/import", doc)
    assert imported["task_count"] == 6 and imported["prediction_count"] == 6

    gone = review(cluster, s3_server, label_studio, "review", "pull", "done", "-n", namespace, "--label-studio",
                  label_studio.url, token="not-a-token")  # fmt: skip
    assert gone.returncode == 1 and "HTTP 401" in gone.stderr, gone.stderr
