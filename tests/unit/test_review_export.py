"""cli/autolabel_cli/review/export.py: a run's proposals as COCO, VOC, YOLO and Label Studio files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from autolabel_cli.review.errors import ReviewError
from autolabel_cli.review.export import FORMATS, export
from PIL import Image
from pycocotools.coco import COCO
from review_fixtures import BOX_PROPOSALS, DET_RUN, DET_SIZES, PROPOSALS, make_dataset, make_detection_dataset

from autolabel.manifest import parse_voc
from autolabel.storage import Storage


@pytest.fixture
def ds(tmp_path: Path) -> tuple[Storage, str, str, Path]:
    manifest, results = make_dataset(tmp_path / "ds")
    return Storage(), manifest, results, tmp_path / "export"


def test_coco_loads_with_pycocotools(ds: tuple[Storage, str, str, Path]) -> None:
    storage, manifest, results, out = ds
    written = export(storage, manifest, results, "coco", str(out))
    assert written == [str(out / "coco.json")]
    coco = COCO(written[0])
    assert len(coco.getImgIds()) == len(PROPOSALS)
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["cat", "dog"]
    assert len(coco.getAnnIds()) == len(PROPOSALS)
    for img in coco.loadImgs(coco.getImgIds()):
        name = Path(img["file_name"]).stem
        label, conf, hard = PROPOSALS[name]
        assert (img["width"], img["height"]) == Image.open(img["file_name"]).size
        (ann,) = coco.loadAnns(coco.getAnnIds(imgIds=[img["id"]]))
        assert coco.loadCats([ann["category_id"]])[0]["name"] == label
        assert (ann["score"], ann["hard"]) == (conf, hard)
        assert ann["bbox"] == [0, 0, img["width"], img["height"]]
    assert len(coco.getAnnIds(catIds=coco.getCatIds(catNms=["cat"]))) == 3


def test_voc_round_trips_through_parse_voc(ds: tuple[Storage, str, str, Path]) -> None:
    storage, manifest, results, out = ds
    written = export(storage, manifest, results, "voc", str(out))
    assert sorted(Path(w).name for w in written) == sorted(f"{name}.xml" for name in PROPOSALS)
    for uri in written:
        label, conf, _ = PROPOSALS[Path(uri).stem]
        (box,) = parse_voc(Path(uri).read_bytes(), uri)
        width, height = Image.open(Path(manifest).parent / "images" / f"{Path(uri).stem}.png").size
        assert tuple(box)[:6] == (label, 0, 0, width, height, conf)


def test_yolo_files_match_the_image_list(ds: tuple[Storage, str, str, Path]) -> None:
    storage, manifest, results, out = ds
    written = export(storage, manifest, results, "yolo", str(out))
    classes = (out / "classes.txt").read_text().splitlines()
    assert classes == ["cat", "dog"]
    images = (out / "images.txt").read_text().splitlines()
    assert [Path(i).stem for i in images] == list(PROPOSALS)
    label_files = sorted((out / "labels").iterdir())
    assert sorted(p.stem for p in label_files) == sorted(Path(i).stem for i in images)
    assert len(written) == 2 + len(images)
    for image in images:
        cls, cx, cy, w, h, conf = (out / "labels" / f"{Path(image).stem}.txt").read_text().split()
        label, confidence, _ = PROPOSALS[Path(image).stem]
        assert (classes[int(cls)], float(cx), float(cy), float(w), float(h)) == (label, 0.5, 0.5, 1.0, 1.0)
        assert float(conf) == pytest.approx(confidence)


def test_labelstudio_tasks(ds: tuple[Storage, str, str, Path]) -> None:
    storage, manifest, results, out = ds
    (uri,) = export(storage, manifest, results, "labelstudio", str(out))
    tasks = json.loads(Path(uri).read_text())
    assert len(tasks) == len(PROPOSALS)
    for task in tasks:
        label, conf, _ = PROPOSALS[Path(task["data"]["image"]).stem]
        (prediction,) = task["predictions"]
        assert (prediction["model_version"], prediction["score"]) == ("job-abc123", conf)
        (result,) = prediction["result"]
        assert result["type"] == "choices" and result["value"] == {"choices": [label]}
        assert (result["from_name"], result["to_name"]) == ("label", "image")


def test_same_base_names_get_distinct_files(ds: tuple[Storage, str, str, Path]) -> None:
    storage, manifest, results, out = ds
    root = Path(manifest).parent
    (root / "images" / "b").mkdir()
    (root / "images" / "u1.png").rename(root / "images" / "b" / "u1.png")
    (root / "images" / "u2.png").rename(root / "images" / "b" / "u2.png")
    text = Path(manifest).read_text().replace("images/u2.png", "images/b/u1.png")
    Path(manifest).write_text(text.replace("images/u1.png", "images/b/u2.png"))
    shutil.copy(root / "images" / "b" / "u1.png", root / "images" / "u1.png")
    Path(manifest).write_text(Path(manifest).read_text() + '{"source": "images/u1.png"}\n')
    res = Path(results).read_text().replace(str(root / "images" / "u2.png"), str(root / "images" / "b" / "u1.png"))
    res += res.splitlines()[0].replace(str(root / "images" / "u1.png"), str(root / "images" / "b" / "u2.png")) + "\n"
    Path(results).write_text(res)
    written = export(storage, manifest, results, "yolo", str(out))
    assert len(written) == 2 + 6
    assert {Path(w).stem for w in written} >= {"u1", "u1-2"}


def test_bad_input_writes_nothing(ds: tuple[Storage, str, str, Path]) -> None:
    storage, manifest, results, out = ds
    with pytest.raises(ReviewError, match="unknown export format 'csv'"):
        export(storage, manifest, results, "csv", str(out))
    (Path(manifest).parent / "images" / "u3.png").write_bytes(b"not an image")
    for fmt in ("coco", "voc"):
        with pytest.raises(ReviewError, match=r"u3\.png: cannot read it as an image"):
            export(storage, manifest, results, fmt, str(out))
    (Path(manifest).parent / "images" / "u3.png").unlink()
    with pytest.raises(ReviewError, match=r"u3\.png: no such file"):
        export(storage, manifest, results, "coco", str(out))
    assert not out.exists()
    assert set(FORMATS) == {"coco", "voc", "yolo", "labelstudio"}


# ------------------------------------------------------------------------------------------ detection


@pytest.fixture
def det(tmp_path: Path) -> tuple[Storage, str, str, Path]:
    manifest, results = make_detection_dataset(tmp_path / "ds")
    return Storage(), manifest, results, tmp_path / "export"


def test_detection_coco_has_a_box_per_proposed_box(det: tuple[Storage, str, str, Path]) -> None:
    storage, manifest, results, out = det
    (uri,) = export(storage, manifest, results, "coco", str(out))
    coco = COCO(uri)
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["cat", "dog"]
    assert len(coco.getImgIds()) == len(BOX_PROPOSALS)
    assert len(coco.getAnnIds()) == sum(len(boxes) for boxes, _ in BOX_PROPOSALS.values()) == 6
    assert len(coco.getAnnIds(catIds=coco.getCatIds(catNms=["cat"]))) == 3
    for img in coco.loadImgs(coco.getImgIds()):
        name = Path(img["file_name"]).stem
        assert (img["width"], img["height"]) == DET_SIZES[name] == Image.open(img["file_name"]).size
        boxes, hard = BOX_PROPOSALS[name]
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[img["id"]]))
        got = [(coco.loadCats([a["category_id"]])[0]["name"], *a["bbox"], a["score"], a["hard"]) for a in anns]
        assert got == [(label, x0, y0, x1 - x0, y1 - y0, conf, hard) for label, x0, y0, x1, y1, conf in boxes]
        assert all(a["area"] == a["bbox"][2] * a["bbox"][3] for a in anns)
    assert len({a["id"] for a in coco.loadAnns(coco.getAnnIds())}) == 6


def test_detection_voc_round_trips(det: tuple[Storage, str, str, Path]) -> None:
    storage, manifest, results, out = det
    written = export(storage, manifest, results, "voc", str(out))
    assert sorted(Path(w).name for w in written) == sorted(f"{name}.xml" for name in BOX_PROPOSALS)
    for uri in written:
        boxes, _ = BOX_PROPOSALS[Path(uri).stem]
        assert [tuple(b)[:6] for b in parse_voc(Path(uri).read_bytes(), uri)] == [tuple(map(_num, b)) for b in boxes]


def _num(v: object) -> object:
    return float(v) if isinstance(v, int) else v


def test_detection_yolo_lines_per_box(det: tuple[Storage, str, str, Path]) -> None:
    storage, manifest, results, out = det
    export(storage, manifest, results, "yolo", str(out))
    classes = (out / "classes.txt").read_text().splitlines()
    images = (out / "images.txt").read_text().splitlines()
    assert classes == ["cat", "dog"] and [Path(i).stem for i in images] == list(BOX_PROPOSALS)
    for image in images:
        name = Path(image).stem
        width, height = DET_SIZES[name]
        rows = [line.split() for line in (out / "labels" / f"{name}.txt").read_text().splitlines()]
        boxes, _ = BOX_PROPOSALS[name]
        assert len(rows) == len(boxes)  # d5: no boxes, an empty file
        for row, (label, x0, y0, x1, y1, conf) in zip(rows, boxes, strict=True):
            assert classes[int(row[0])] == label
            expected = ((x0 + x1) / 2 / width, (y0 + y1) / 2 / height, (x1 - x0) / width, (y1 - y0) / height, conf)
            assert [float(v) for v in row[1:]] == pytest.approx(expected, abs=1e-5)


def test_detection_labelstudio_rectangles_in_percent(det: tuple[Storage, str, str, Path]) -> None:
    storage, manifest, results, out = det
    (uri,) = export(storage, manifest, results, "labelstudio", str(out))
    tasks = json.loads(Path(uri).read_text())
    assert len(tasks) == len(BOX_PROPOSALS)
    for task in tasks:
        name = Path(task["data"]["image"]).stem
        boxes, hard = BOX_PROPOSALS[name]
        width, height = DET_SIZES[name]
        (prediction,) = task["predictions"]
        assert prediction["model_version"] == DET_RUN and task["data"]["hard"] is hard
        assert prediction["score"] == (min(b[5] for b in boxes) if boxes else None)
        assert len(prediction["result"]) == len(boxes)
        for item, (label, x0, y0, x1, y1, conf) in zip(prediction["result"], boxes, strict=True):
            assert (item["type"], item["from_name"], item["to_name"]) == ("rectanglelabels", "label", "image")
            assert (item["original_width"], item["original_height"], item["score"]) == (width, height, conf)
            value = item["value"]
            assert value["rectanglelabels"] == [label]
            got = (value["x"], value["y"], value["width"], value["height"])
            assert got == pytest.approx((100 * x0 / width, 100 * y0 / height, 100 * (x1 - x0) / width,
                                         100 * (y1 - y0) / height))  # fmt: skip


def test_detection_bad_voc_file_is_named(det: tuple[Storage, str, str, Path]) -> None:
    storage, manifest, results, out = det
    loc = json.loads(Path(results).read_text().splitlines()[1])["annotation"][0]["annotation-loc"]
    Path(loc).write_text("<annotation><object><name>cat</name></object></annotation>")
    voc_file = r"/annotations/d2-[0-9a-f]+\.xml"
    with pytest.raises(ReviewError, match=rf"result\.manifest line 2: .*{voc_file}: object 1 \(\"cat\"\): no <bndbox>"):
        export(storage, manifest, results, "coco", str(out))
    Path(loc).unlink()
    with pytest.raises(ReviewError, match=rf"result\.manifest line 2: VOC file .*{voc_file}: no such file"):
        export(storage, manifest, results, "voc", str(out))
    assert not out.exists()
