"""Review functions (import, confirm, export) against the real S3 server (MinIO)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from autolabel_cli.review.confirm import confirm
from autolabel_cli.review.dataset_import import import_dataset
from autolabel_cli.review.export import export
from review_fixtures import BY, CLS, write_image

from autolabel.manifest import read_manifest, summarize
from autolabel.storage import Storage

pytestmark = pytest.mark.needs_s3


def test_import_confirm_export_on_s3(storage: Storage, s3_server: Any, tmp_path: Path) -> None:
    bucket = f"review-{uuid.uuid4().hex[:10]}"
    s3_server.make_bucket(bucket)
    src = tmp_path / "src"
    for name in ("cat/a.png", "cat/b.png", "dog/c.png", "unlabeled/u1.png", "unlabeled/u2.png"):
        write_image(src / name)
    manifest = import_dataset(storage, str(src), f"s3://{bucket}/ds")
    assert manifest == f"s3://{bucket}/ds/dataset.manifest"
    entries = list(read_manifest(storage, manifest))
    assert (summarize(entries).labeled, summarize(entries).unlabeled) == (3, 2)
    unlabeled = [e.source for e in entries if not e.is_labeled]
    assert unlabeled == [f"s3://{bucket}/ds/images/unlabeled/u1.png", f"s3://{bucket}/ds/images/unlabeled/u2.png"]
    results = f"s3://{bucket}/ds/out/job-1/result.manifest"
    lines = [
        {"source": unlabeled[0], "annotation": [{"type": CLS, "name": "cat", "annotated-by": BY, "confidence": 0.9}],
         "hard": False, "hard-coefficient": 0.1, "hard-reasons": ""},
        {"source": unlabeled[1], "annotation": [{"type": CLS, "name": "dog", "annotated-by": BY, "confidence": 0.4}],
         "hard": True, "hard-coefficient": 0.6, "hard-reasons": "0"},
    ]  # fmt: skip
    storage.write_bytes(results, "".join(json.dumps(line) + "\n" for line in lines).encode())
    original = storage.read_bytes(manifest)

    report = confirm(storage, manifest, results, job_name="job-1")
    assert report.uri == f"s3://{bucket}/ds/dataset.v1.manifest"
    assert (report.confirmed, report.corrected, report.left) == (1, 0, 1)
    assert confirm(storage, manifest, results, job_name="job-1").uri == report.uri  # nothing new
    fixed = confirm(storage, manifest, results, job_name="job-1", corrections={"images/unlabeled/u2.png": "cat"})
    assert fixed.uri == f"s3://{bucket}/ds/dataset.v2.manifest"
    assert summarize(read_manifest(storage, fixed.uri)).label_counts == {"cat": 4, "dog": 1}
    assert storage.read_bytes(manifest) == original
    assert sorted(storage.list(f"s3://{bucket}/ds/dataset")) == [
        manifest,
        report.uri,
        fixed.uri,
    ]

    written = export(storage, manifest, results, "coco", f"s3://{bucket}/export")
    assert written == [f"s3://{bucket}/export/coco.json"]
    coco = json.loads(storage.read_bytes(written[0]))
    assert [(i["width"], i["height"]) for i in coco["images"]] == [(12, 8), (12, 8)]
    assert [a["score"] for a in coco["annotations"]] == [0.9, 0.4]
    yolo = export(storage, manifest, results, "yolo", f"s3://{bucket}/export/yolo")
    assert sorted(uri.rsplit("/", 1)[-1] for uri in yolo) == ["classes.txt", "images.txt", "u1.txt", "u2.txt"]
