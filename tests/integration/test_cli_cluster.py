"""``autolabel status`` / ``results`` (and ``kubectl autolabel`` as a kubectl plugin) against the real local
control plane and MinIO, with the operator running the fake worker (tests/fakeworker.py)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from devenv.cluster import LocalCluster
from devenv.s3 import MinioServer
from PIL import Image
from pycocotools.coco import COCO
from review_fixtures import BOX_PROPOSALS, DET, DET_SIZES, labeled_voc, write_detection_results

from autolabel.manifest import parse_voc
from autolabel.storage import Storage

from .operator_fixtures import BUCKET, REPO, alj, apply, dataset, job_manifest, put, wait_phase

pytestmark = [pytest.mark.needs_cluster, pytest.mark.needs_s3, pytest.mark.usefixtures("autolabel_operator")]

BIN = Path(sys.executable).parent


def cli_env(s3: MinioServer) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return {
        **env,
        "AWS_ENDPOINT_URL": s3.endpoint_url,
        "AWS_ACCESS_KEY_ID": s3.access_key,
        "AWS_SECRET_ACCESS_KEY": s3.secret_key,
        "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        "COLUMNS": "200",
    }


def get_bytes(s3: MinioServer, key: str) -> bytes:
    return bytes(s3.client().get_object(Bucket=BUCKET, Key=key)["Body"].read())


def autolabel(cluster: LocalCluster, s3: MinioServer, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [str(BIN / "autolabel"), "--kubeconfig", str(cluster.kubeconfig), *args]
    return subprocess.run(argv, env=cli_env(s3), capture_output=True, text=True, timeout=60, cwd=REPO)


def png(size: tuple[int, int]) -> bytes:
    data = io.BytesIO()
    Image.new("RGB", size, "white").save(data, format="PNG")
    return data.getvalue()


@dataclass(frozen=True)
class DetectionJob:
    folder: str
    """``s3://<bucket>/det-…``: the dataset's folder."""
    key: str
    """The manifest's key in BUCKET."""
    results: str
    """The run's results prefix (``status.result.uri``)."""


def finished_detection_job(
    cluster: LocalCluster, s3: MinioServer, storage: Storage, namespace: str, name: str
) -> DetectionJob:
    """A Succeeded ObjectDetection AutoLabelJob over a detection dataset (6 labeled images with VOC files, the 5
    unlabeled images of review_fixtures.DET_SIZES). The fake worker runs it (it proposes classes); its results
    are then replaced by a detection run's, written by the worker's own ResultWriter (BOX_PROPOSALS)."""
    folder = f"s3://{BUCKET}/det-{uuid.uuid4().hex[:8]}"

    def key(uri: str) -> str:
        return uri.removeprefix(f"s3://{BUCKET}/")

    lines = []
    for label, labeled in {"l1": [("cat", 1, 1, 10, 7)], "l2": [("dog", 2, 2, 11, 7)]}.items():
        for copy in range(3):
            stem = f"{label}-{copy}"
            put(s3, key(f"{folder}/images/{stem}.png"), png((12, 8)))
            put(s3, key(f"{folder}/voc/{stem}.xml"), labeled_voc(f"{stem}.png", (12, 8), labeled))
            ann = {"type": DET, "annotation-loc": f"voc/{stem}.xml", "annotation-format": "PASCAL VOC"}
            lines.append(json.dumps({"source": f"images/{stem}.png", "annotation": [ann]}))
    images = {}
    for image, size in DET_SIZES.items():
        images[image] = put(s3, key(f"{folder}/images/{image}.png"), png(size))
        lines.append(json.dumps({"source": f"images/{image}.png"}))
    manifest = put(s3, key(f"{folder}/data.manifest"), ("\n".join(lines) + "\n").encode())
    job = job_manifest(name, manifest, {"fakeworker.autolabel.dev/seconds": "0.3"}, task="ObjectDetection")
    apply(cluster, namespace, job)
    wait_phase(cluster, namespace, name, "Succeeded", timeout=90)
    results = alj(cluster, namespace, name)["status"]["result"]["uri"]
    write_detection_results(storage, images, results)
    return DetectionJob(folder, key(manifest), results)


def test_status_and_results_of_a_finished_job(cluster: LocalCluster, s3_server: MinioServer, namespace: str) -> None:
    manifest = dataset(s3_server, {"cat": 5, "dog": 6}, unlabeled=8)
    apply(cluster, namespace, job_manifest("done", manifest, {"fakeworker.autolabel.dev/seconds": "0.5"}))
    wait_phase(cluster, namespace, "done", "Succeeded", timeout=90)

    table = autolabel(cluster, s3_server, "status", "-n", namespace)
    assert table.returncode == 0, table.stderr
    header, row = table.stdout.splitlines()[:2]
    assert header.split() == ["NAME", "PHASE", "PROGRESS", "PROCESSED", "AUTO-LABELED", "HARD", "PRECISION", "AGE"]
    assert row.split()[:2] == ["done", "Succeeded"] and "100%" in row and "8/8" in row

    doc = autolabel(cluster, s3_server, "status", "done", "-n", namespace, "-o", "json")
    assert doc.returncode == 0, doc.stderr
    status = json.loads(doc.stdout)
    assert status["name"] == "done" and status["namespace"] == namespace
    assert status["status"]["phase"] == "Succeeded" and status["status"]["result"]["total"] == 8

    shown = autolabel(cluster, s3_server, "results", "done", "-n", namespace)
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert status["status"]["result"]["uri"] in out
    assert "hard examples" in out and "low confidence" in out and "Hardest examples" in out
    report = json.loads(
        autolabel(cluster, s3_server, "results", "done", "-n", namespace, "-o", "json", "--top", "3").stdout
    )
    assert report["summary"]["total"] == 8 and report["summary"]["hardExamples"] == 8
    assert report["labels"] == {"dog": {"total": 8, "autoLabeled": 0, "hard": 8}}  # the fake worker: most frequent
    assert report["hardReasons"] == [{"reason": 1, "name": "low confidence", "count": 8, "share": 1.0}]
    assert len(report["hardest"]) == 3

    # -A: the namespace column, this namespace's job among the cluster's.
    everywhere = autolabel(cluster, s3_server, "status", "-A")
    assert everywhere.returncode == 0, everywhere.stderr
    assert everywhere.stdout.split()[:2] == ["NAME", "NAMESPACE"]
    assert any(line.split()[:3] == ["done", namespace, "Succeeded"] for line in everywhere.stdout.splitlines())

    # kubectl's plugin mechanism: kubectl finds kubectl-autolabel on PATH (kubectl refuses flags before a
    # plugin's name, so the kubeconfig comes from $KUBECONFIG, which the plugin honours).
    kubectl = REPO / ".cache" / "bin" / "kubectl"
    env = {**cli_env(s3_server), "KUBECONFIG": str(cluster.kubeconfig)}
    argv = [str(kubectl), "autolabel", "status", "-n", namespace]
    plugin = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert plugin.returncode == 0, plugin.stderr
    assert plugin.stdout.splitlines()[1].split()[:2] == ["done", "Succeeded"]


def test_unknown_and_unfinished_jobs_are_errors(cluster: LocalCluster, s3_server: MinioServer, namespace: str) -> None:
    unknown = autolabel(cluster, s3_server, "status", "nope", "-n", namespace)
    assert unknown.returncode == 1
    assert f'AutoLabelJob "nope" not found in namespace "{namespace}"' in unknown.stderr
    unknown = autolabel(cluster, s3_server, "results", "nope", "-n", namespace)
    assert unknown.returncode == 1 and '"nope" not found' in unknown.stderr

    # A slow job holds the dataset; the second waits for it, and has no results yet.
    manifest = dataset(s3_server)
    apply(cluster, namespace, job_manifest("slow", manifest, {"fakeworker.autolabel.dev/seconds": "60"}))
    wait_phase(cluster, namespace, "slow", "Running", timeout=60)
    apply(cluster, namespace, job_manifest("later", manifest))
    wait_phase(cluster, namespace, "later", "Waiting", timeout=60)
    waiting = autolabel(cluster, s3_server, "results", "later", "-n", namespace)
    assert waiting.returncode == 1, waiting.stdout
    assert f'AutoLabelJob "later" in namespace "{namespace}" has not finished (phase Waiting' in waiting.stderr

    listed = autolabel(cluster, s3_server, "status", "-n", namespace)
    rows = {line.split()[0]: line.split()[1] for line in listed.stdout.splitlines()[1:] if line.strip()}
    assert rows == {"later": "Waiting", "slow": "Running"}


def test_confirm_and_export_a_finished_job_and_refuse_bad_input(
    cluster: LocalCluster, s3_server: MinioServer, namespace: str, tmp_path: Path
) -> None:
    manifest = dataset(s3_server, {"cat": 5, "dog": 6}, unlabeled=4)
    key = manifest.removeprefix(f"s3://{BUCKET}/")
    folder = key.rsplit("/", 1)[0]
    png = io.BytesIO()
    Image.new("RGB", (6, 4), "white").save(png, format="PNG")
    for n in range(12, 16):  # the unlabeled images (exports read their sizes)
        put(s3_server, f"{folder}/img/{n:05d}.png", png.getvalue())
    original = get_bytes(s3_server, key)
    apply(cluster, namespace, job_manifest("done", manifest, {"fakeworker.autolabel.dev/seconds": "0.3"}))
    wait_phase(cluster, namespace, "done", "Succeeded", timeout=90)

    # The fake worker flags every proposal hard: by default nothing is confirmed, --include-hard takes them.
    nothing = autolabel(cluster, s3_server, "confirm", "done", "-n", namespace)
    assert nothing.returncode == 0 and "nothing to confirm" in nothing.stdout, nothing.stderr
    fixes = tmp_path / "fixes.csv"
    first = f"{manifest.rsplit('/', 1)[0]}/img/00012.png"
    fixes.write_text(f"{first},cat\n")
    confirm = ["confirm", "done", "-n", namespace, "--include-hard", "--corrections", str(fixes)]
    taken = autolabel(cluster, s3_server, *confirm)
    assert taken.returncode == 0, taken.stderr
    assert "3 confirmed, 1 corrected, 0 left unlabeled" in taken.stdout
    version = taken.stdout.split()[1].rstrip(":")
    assert version.endswith(".v1.manifest")
    lines = [json.loads(x) for x in get_bytes(s3_server, version.removeprefix(f"s3://{BUCKET}/")).splitlines()]
    assert len(lines) == 15 and all(line.get("annotation") for line in lines)  # every image labeled now
    again = autolabel(cluster, s3_server, *confirm)
    assert again.returncode == 0 and f"unchanged: {version}" in again.stdout  # idempotent: no v2
    assert get_bytes(s3_server, key) == original  # the original manifest is never modified

    exported = autolabel(cluster, s3_server, "export", "done", "-n", namespace, "--format", "coco")
    assert exported.returncode == 0 and "coco.json" in exported.stdout, exported.stderr

    bad_format = autolabel(cluster, s3_server, "export", "done", "-n", namespace, "--format", "pascal")
    assert bad_format.returncode == 2 and "--format 'pascal'" in bad_format.stderr
    unknown = autolabel(cluster, s3_server, "confirm", "nope", "-n", namespace)
    assert unknown.returncode != 0 and '"nope"' in unknown.stderr
    fixes.write_text("img/not-there.png,cat\n")
    bad_fix = autolabel(cluster, s3_server, *confirm)
    assert bad_fix.returncode != 0 and "not-there.png" in bad_fix.stderr


def test_detection_job_status_results_confirm_export(
    cluster: LocalCluster, s3_server: MinioServer, storage: Storage, namespace: str, tmp_path: Path
) -> None:
    det = finished_detection_job(cluster, s3_server, storage, namespace, "det")
    original = get_bytes(s3_server, det.key)

    table = autolabel(cluster, s3_server, "status", "-n", namespace)
    assert table.returncode == 0 and table.stdout.splitlines()[1].split()[:2] == ["det", "Succeeded"], table.stdout
    shown = autolabel(cluster, s3_server, "results", "det", "-n", namespace)
    assert shown.returncode == 0, shown.stderr
    assert "Proposed boxes" in shown.stdout and "in 5 image(s): 3 auto-labeled, 2 hard" in shown.stdout
    doc = json.loads(autolabel(cluster, s3_server, "results", "det", "-n", namespace, "-o", "json").stdout)
    assert doc["task"] == "ObjectDetection" and doc["boxes"] == {"cat": 3, "dog": 3}
    assert doc["hardest"][0]["label"] == "(no boxes)" and doc["hardest"][1]["label"] == "2 cat"

    fixes = tmp_path / "fixes.jsonl"
    fixes.write_text('{"source": "images/d3.png", "boxes": [["dog", 4, 4, 60, 44], ["cat", 1, 1, 3, 3]]}\n')
    confirm = ["confirm", "det", "-n", namespace, "--corrections", str(fixes)]
    taken = autolabel(cluster, s3_server, *confirm)
    assert taken.returncode == 0, taken.stderr
    version = f"{det.folder}/data.v1.manifest"
    assert taken.stdout.strip() == f"wrote {version}: 3 confirmed, 1 corrected, 1 left unlabeled"
    lines = [json.loads(x) for x in get_bytes(s3_server, version.removeprefix(f"s3://{BUCKET}/")).splitlines()]
    locs = {x["source"]: x["annotation"][0]["annotation-loc"] for x in lines if x.get("annotation")}
    assert {s: loc for s, loc in locs.items() if s.startswith("images/d")} == {
        f"images/{n}.png": f"data.v1.annotations/{n}.xml" for n in ("d1", "d2", "d3", "d4")}  # fmt: skip
    d3 = parse_voc(get_bytes(s3_server, f"{det.folder}/data.v1.annotations/d3.xml".removeprefix(f"s3://{BUCKET}/")))
    assert [tuple(b)[:5] for b in d3] == [("dog", 4.0, 4.0, 60.0, 44.0), ("cat", 1.0, 1.0, 3.0, 3.0)]
    again = autolabel(cluster, s3_server, *confirm)
    assert again.returncode == 0 and f"unchanged: {version}" in again.stdout, again.stdout
    assert get_bytes(s3_server, det.key) == original

    for bad, at_fault in (
        ('{"source": "images/nope.png", "boxes": []}', "'images/nope.png' is not in"),
        ('{"source": "images/d3.png", "boxes": [["cow", 1, 1, 3, 3]]}', "label 'cow' is not a label"),
        ('{"source": "images/d3.png", "boxes": [["cat", 3, 1, 3, 3]]}', "degenerate box (3, 1, 3, 3)"),
    ):
        fixes.write_text(bad + "\n")
        refused = autolabel(cluster, s3_server, *confirm)
        assert refused.returncode == 1 and f"{fixes} line 1" in refused.stderr and at_fault in refused.stderr
    listed = s3_server.client().list_objects_v2(
        Bucket=BUCKET, Prefix=f"{det.folder}/data".removeprefix(f"s3://{BUCKET}/")
    )
    assert len(listed["Contents"]) == 1 + 1 + 4  # the original, v1 and its 4 VOC files: nothing more

    exported = autolabel(cluster, s3_server, "export", "det", "-n", namespace, "--format", "coco")
    assert exported.returncode == 0, exported.stderr
    (tmp_path / "coco.json").write_bytes(
        get_bytes(s3_server, exported.stdout.split()[-1].removeprefix(f"s3://{BUCKET}/"))
    )
    coco = COCO(str(tmp_path / "coco.json"))
    assert (len(coco.getImgIds()), len(coco.getAnnIds())) == (5, sum(len(b) for b, _ in BOX_PROPOSALS.values()))
    yolo = autolabel(cluster, s3_server, "export", "det", "-n", namespace, "--format", "yolo")
    assert yolo.returncode == 0 and "wrote 7 file(s)" in yolo.stdout, yolo.stdout
