"""cli/autolabel_cli/review/dataset_import.py: ImageFolder, COCO and VOC into a manifest read back by
autolabel.manifest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from autolabel_cli.review.dataset_import import import_dataset
from autolabel_cli.review.errors import ReviewError
from review_fixtures import write_image

from autolabel.manifest import DETECTION_TYPE, parse_voc, read_manifest, summarize
from autolabel.storage import Storage


def test_imagefolder_round_trip(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for name in ("cat/a.png", "cat/b.jpg", "dog/c.png", "unlabeled/d.png", "unlabeled/e.png"):
        write_image(src / name)
    (src / "README.txt").write_text("not an image")
    storage = Storage()
    uri = import_dataset(storage, str(src), str(tmp_path / "out"))
    assert uri == str(tmp_path / "out" / "dataset.manifest")
    entries = list(read_manifest(storage, uri))
    summary = summarize(entries)
    assert (summary.labeled, summary.unlabeled, dict(summary.label_counts)) == (3, 2, {"cat": 2, "dog": 1})
    for entry in entries:
        original = src / Path(entry.source).relative_to(tmp_path / "out" / "images")
        assert Path(entry.source).read_bytes() == original.read_bytes()
    assert json.loads(Path(uri).read_text().splitlines()[0])["source"] == "images/cat/a.png"


def test_coco_image_level_labels_and_boxes(tmp_path: Path) -> None:
    src = tmp_path / "coco"
    for name in ("one.png", "two.png", "none.png"):
        write_image(src / "images" / name, size=(40, 30))
    doc = {
        "images": [
            {"id": 1, "file_name": "one.png", "width": 40, "height": 30},
            {"id": 2, "file_name": "two.png", "width": 40, "height": 30},
            {"id": 3, "file_name": "none.png", "width": 40, "height": 30},
        ],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5]},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [8, 8, 5, 5]},
            {"id": 3, "image_id": 2, "category_id": 1, "bbox": [1, 2, 10, 20]},
            {"id": 4, "image_id": 2, "category_id": 2, "bbox": [15, 5, 10, 10]},
        ],
    }
    (src / "instances.json").write_text(json.dumps(doc))
    storage = Storage()
    uri = import_dataset(storage, str(src / "instances.json"), str(tmp_path / "out"))
    entries = {Path(e.source).name: e for e in read_manifest(storage, uri)}
    assert entries["one.png"].labels == ["cat"]
    assert not entries["none.png"].is_labeled
    (ann,) = entries["two.png"].annotations
    assert ann.type == DETECTION_TYPE and ann.annotation_loc is not None
    boxes = parse_voc(Path(ann.annotation_loc).read_bytes(), ann.annotation_loc)
    assert [(b.name, b.xmin, b.ymin, b.xmax, b.ymax) for b in boxes] == [("cat", 1, 2, 11, 22), ("dog", 15, 5, 25, 15)]
    assert Path(entries["two.png"].source).is_file()


def test_voc_folder(tmp_path: Path) -> None:
    src = tmp_path / "voc"
    write_image(src / "JPEGImages" / "a.jpg")
    write_image(src / "JPEGImages" / "b.jpg")
    xml = b"<annotation><filename>a.jpg</filename><object><name>cat</name><bndbox><xmin>1</xmin><ymin>1</ymin>"
    xml += b"<xmax>5</xmax><ymax>6</ymax></bndbox></object></annotation>"
    (src / "Annotations").mkdir()
    (src / "Annotations" / "a.xml").write_bytes(xml)
    storage = Storage()
    uri = import_dataset(storage, str(src), str(tmp_path / "out"))
    entries = {Path(e.source).name: e for e in read_manifest(storage, uri)}
    loc = entries["a.jpg"].annotations[0].annotation_loc
    assert loc is not None and parse_voc(Path(loc).read_bytes())[0].name == "cat"
    assert not entries["b.jpg"].is_labeled


def test_bad_input_writes_nothing(tmp_path: Path) -> None:
    storage = Storage()
    out = tmp_path / "out"
    with pytest.raises(ReviewError, match="unknown dataset format 'yaml'"):
        import_dataset(storage, str(tmp_path), str(out), "yaml")
    with pytest.raises(ReviewError, match=r"ImageFolder .*missing: no such folder"):
        import_dataset(storage, str(tmp_path / "missing"), str(out))
    (tmp_path / "bad.json").write_text('{"images": [')
    with pytest.raises(ReviewError, match=r"COCO file .*bad\.json: invalid JSON"):
        import_dataset(storage, str(tmp_path / "bad.json"), str(out))
    with pytest.raises(ReviewError, match=r"COCO file .*nope\.json: no such file"):
        import_dataset(storage, str(tmp_path / "nope.json"), str(out))
    (tmp_path / "coco.json").write_text(json.dumps({"images": [{"id": 1, "file_name": "gone.png"}]}))
    with pytest.raises(ReviewError, match=r"image 1 \(gone\.png\): no such file"):
        import_dataset(storage, str(tmp_path / "coco.json"), str(out))
    write_image(tmp_path / "deep" / "a" / "b" / "c.png")
    with pytest.raises(ReviewError, match=r"c\.png: expected <label>/<image>"):
        import_dataset(storage, str(tmp_path / "deep"), str(out))
    (tmp_path / "voc" / "Annotations").mkdir(parents=True)
    (tmp_path / "voc" / "Annotations" / "x.xml").write_text("<annotation><object>")
    write_image(tmp_path / "voc" / "JPEGImages" / "x.jpg")
    with pytest.raises(ReviewError, match=r"x\.xml: not valid XML"):
        import_dataset(storage, str(tmp_path / "voc"), str(out))
    assert not out.exists()
