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
from review_fixtures import PROPOSALS, make_dataset

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
        assert box == (label, 0, 0, width, height, conf)


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
