"""Review functions (import, confirm, export) against the real S3 server (MinIO)."""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from autolabel_cli.review.confirm import confirm, load_corrections
from autolabel_cli.review.dataset_import import import_dataset
from autolabel_cli.review.errors import ReviewError
from autolabel_cli.review.export import export
from PIL import Image
from pycocotools.coco import COCO
from review_fixtures import (
    BOX_PROPOSALS,
    BY,
    CLS,
    DET,
    DET_RUN,
    DET_SIZES,
    labeled_voc,
    write_detection_results,
    write_image,
)

from autolabel.manifest import parse_voc, read_manifest, summarize
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


def test_detection_confirm_and_export_on_s3(storage: Storage, s3_server: Any, tmp_path: Path) -> None:
    """A detection run's results written on the store by the worker's ResultWriter: confirm writes the new
    version and its VOC files there, idempotently; every export reads the boxes from the run's VOC files."""
    bucket = f"review-{uuid.uuid4().hex[:10]}"
    s3_server.make_bucket(bucket)
    ds = f"s3://{bucket}/ds"
    png = io.BytesIO()
    lines = []
    for name, boxes in {"l1": [("cat", 1, 1, 10, 7)], "l2": [("dog", 2, 2, 11, 7)]}.items():
        Image.new("RGB", (12, 8)).save(png := io.BytesIO(), format="PNG")
        storage.write_bytes(f"{ds}/images/{name}.png", png.getvalue())
        storage.write_bytes(f"{ds}/voc/{name}.xml", labeled_voc(f"{name}.png", (12, 8), boxes))
        ann = {"type": DET, "annotation-loc": f"voc/{name}.xml", "annotation-format": "PASCAL VOC"}
        lines.append({"source": f"images/{name}.png", "annotation": [ann]})
    for name, size in DET_SIZES.items():
        Image.new("RGB", size).save(png := io.BytesIO(), format="PNG")
        storage.write_bytes(f"{ds}/images/{name}.png", png.getvalue())
        lines.append({"source": f"images/{name}.png"})
    manifest = f"{ds}/data.manifest"
    storage.write_bytes(manifest, "".join(json.dumps(line) + "\n" for line in lines).encode())
    results = write_detection_results(storage, {n: f"{ds}/images/{n}.png" for n in DET_SIZES}, f"{ds}/out/{DET_RUN}")
    assert results == f"{ds}/out/{DET_RUN}/result.manifest"
    original = storage.read_bytes(manifest)

    report = confirm(storage, manifest, results, job_name="det")
    assert (report.uri, report.confirmed, report.corrected, report.left) == (f"{ds}/data.v1.manifest", 3, 0, 2)
    vocs = sorted(storage.list(f"{ds}/data.v1.annotations/"))
    assert vocs == [f"{ds}/data.v1.annotations/{n}.xml" for n in ("d1", "d2", "d4")]
    confirmed = {e.source.rsplit("/", 1)[-1]: e for e in read_manifest(storage, report.uri) if e.is_labeled}
    for name in ("d1", "d2", "d4"):
        (written,) = confirmed[f"{name}.png"].annotations
        loc = written.annotation_loc
        assert loc == f"{ds}/data.v1.annotations/{name}.xml"  # relative in the line, resolved here
        got = parse_voc(storage.read_bytes(loc), loc)
        assert [tuple(b)[:6] for b in got] == [tuple(float(v) if isinstance(v, int) else v for v in b)
                                                for b in BOX_PROPOSALS[name][0]]  # fmt: skip
    snapshot = {uri: storage.read_bytes(uri) for uri in storage.list(f"{ds}/data")}
    again = confirm(storage, manifest, results, job_name="det")
    assert (again.uri, again.written) == (report.uri, False)
    assert {uri: storage.read_bytes(uri) for uri in storage.list(f"{ds}/data")} == snapshot  # nothing new

    fixes = load_corrections('{"source": "images/d3.png", "boxes": [["dog", 4, 4, 60, 44]]}\n', "fix.jsonl")
    fixed = confirm(storage, manifest, results, job_name="det", corrections=fixes)
    assert (fixed.uri, fixed.confirmed, fixed.corrected) == (f"{ds}/data.v2.manifest", 3, 1)
    d3 = parse_voc(storage.read_bytes(f"{ds}/data.v2.annotations/d3.xml"))
    assert [tuple(b)[:6] for b in d3] == [("dog", 4.0, 4.0, 60.0, 44.0, None)]
    for bad, message in (
        ('{"source": "images/nope.png", "boxes": []}\n', r"bad\.jsonl line 1: image 'images/nope\.png' is not in"),
        ('{"source": "images/d3.png", "boxes": [["cow", 4, 4, 9, 9]]}\n', r"bad\.jsonl line 1: .*label 'cow'"),
        ('{"source": "images/d3.png", "boxes": [["dog", 4, 4, 4, 9]]}\n', r"bad\.jsonl line 1: .*degenerate box"),
    ):
        with pytest.raises(ReviewError, match=message):
            confirm(storage, manifest, results, job_name="det", corrections=load_corrections(bad, "bad.jsonl"))
    assert {uri for uri in storage.list(f"{ds}/data")} == set(snapshot) | {fixed.uri} | {
        f"{ds}/data.v2.annotations/{n}.xml" for n in ("d1", "d2", "d3", "d4")}  # fmt: skip
    assert storage.read_bytes(manifest) == original

    (coco_uri,) = export(storage, manifest, results, "coco", f"s3://{bucket}/export/coco")
    (tmp_path / "coco.json").write_bytes(storage.read_bytes(coco_uri))
    coco = COCO(str(tmp_path / "coco.json"))
    assert (len(coco.getImgIds()), len(coco.getAnnIds()), len(coco.getCatIds())) == (5, 6, 2)
    assert sorted(a["score"] for a in coco.loadAnns(coco.getAnnIds())) == [0.42, 0.88, 0.91, 0.95, 0.97, 0.99]
    assert [(i["width"], i["height"]) for i in coco.loadImgs(coco.getImgIds())] == list(DET_SIZES.values())
    voc = export(storage, manifest, results, "voc", f"s3://{bucket}/export/voc")
    assert len(voc) == 5 and all(len(parse_voc(storage.read_bytes(u))) == len(BOX_PROPOSALS[u[-6:-4]][0]) for u in voc)
    yolo = export(storage, manifest, results, "yolo", f"s3://{bucket}/export/yolo")
    assert sorted(uri.rsplit("/", 1)[-1] for uri in yolo) == sorted(["classes.txt", "images.txt"] + [
        f"{n}.txt" for n in DET_SIZES])  # fmt: skip
    (ls_uri,) = export(storage, manifest, results, "labelstudio", f"s3://{bucket}/export/ls")
    tasks = json.loads(storage.read_bytes(ls_uri))
    assert sum(len(t["predictions"][0]["result"]) for t in tasks) == 6
