"""The digit-boxes sample: a synthetic object-detection dataset written from packaged images."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from autolabel_worker.detection_data import (
    DetectionDataset,
    ensure_detection_dataset,
    load_backgrounds,
    load_digit_bank,
    render_scene,
    write_detection_dataset,
)
from PIL import Image

from autolabel.manifest import DETECTION_TYPE, parse_voc, read_manifest
from autolabel.storage import Storage

SMALL = {"labeled_per_class": 4, "unlabeled": 20, "size": 96}


def digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_same_seed_same_bytes_other_seed_other_images(tmp_path: Path) -> None:
    write_detection_dataset(tmp_path / "a", seed=3, **SMALL)
    write_detection_dataset(tmp_path / "b", seed=3, **SMALL)
    write_detection_dataset(tmp_path / "c", seed=4, **SMALL)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert (tmp_path / "a" / "images" / "00000.png").read_bytes() != (
        tmp_path / "c" / "images" / "00000.png"
    ).read_bytes()


def test_manifest_voc_files_and_ground_truth_agree(tmp_path: Path) -> None:
    ds = write_detection_dataset(tmp_path, seed=1, classes=("3", "5", "7", "8"), **SMALL)
    assert ds.classes == ("3", "5", "7", "8")
    entries = list(read_manifest(Storage(), str(ds.manifest)))
    assert len(entries) == ds.labeled + ds.unlabeled
    assert ds.unlabeled == SMALL["unlabeled"]
    truth = json.loads(ds.ground_truth.read_text())
    sources = [json.loads(line)["source"] for line in ds.manifest.read_text().splitlines()]
    assert sorted(truth) == sorted(sources)  # every manifest line has its ground truth

    per_class: Counter[str] = Counter()
    labeled = 0
    for entry, source in zip(entries, sources, strict=True):
        image = Image.open(entry.source)
        assert image.size == (96, 96) and image.mode == "RGB"
        expected = truth[source]
        assert expected, "every image has at least one object"
        for name, x0, y0, x1, y1 in expected:
            assert name in ds.classes
            assert 0 <= x0 < x1 <= 96 and 0 <= y0 < y1 <= 96
        if not entry.is_labeled:
            continue
        labeled += 1
        (ann,) = entry.annotations
        assert ann.type == DETECTION_TYPE and ann.annotation_format == "PASCAL VOC"
        assert ann.annotation_loc == str(tmp_path / "annotations" / (Path(source).stem + ".xml"))
        boxes = parse_voc(Path(ann.annotation_loc).read_bytes(), ann.annotation_loc)
        assert [[b.name, b.xmin, b.ymin, b.xmax, b.ymax] for b in boxes] == expected
        per_class.update({b.name for b in boxes})
    assert labeled == ds.labeled
    assert all(per_class[name] >= SMALL["labeled_per_class"] for name in ds.classes), per_class
    # only the labeled images have a VOC file
    assert len(list((tmp_path / "annotations").glob("*.xml"))) == ds.labeled


def test_few_labeled_images_cover_every_class(tmp_path: Path) -> None:
    ds = write_detection_dataset(tmp_path, seed=0, labeled_per_class=6, unlabeled=40, size=96)
    assert ds.labeled <= 6 * len(ds.classes)
    # with up to four objects of three classes an image often shows all three: far fewer than 18
    assert ds.labeled <= 10


def test_objects_do_not_overlap_and_boxes_are_tight() -> None:
    rng = np.random.default_rng(5)
    backgrounds = load_backgrounds(("camera", "coffee"))
    bank = load_digit_bank(("0", "1"))
    for _ in range(30):
        pixels, boxes = render_scene(rng, backgrounds, bank, ("0", "1"), size=100, max_objects=4)
        assert pixels.shape == (100, 100, 3) and pixels.dtype == np.uint8
        assert 1 <= len(boxes) <= 4
        for i, (_, *a) in enumerate(boxes):
            assert 14 * 0.3 <= a[2] - a[0] <= 44 and 14 * 0.3 <= a[3] - a[1] <= 44
            for _, *b in boxes[i + 1 :]:
                iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
                ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
                inter = iw * ih
                union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
                assert inter / union < 0.05


def test_bad_classes_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"digits '0'\.\.'9'"):
        write_detection_dataset(tmp_path, classes=("cat",), **SMALL)
    with pytest.raises(ValueError, match="repeated"):
        write_detection_dataset(tmp_path, classes=("1", "1"), **SMALL)


def test_ensure_writes_once(tmp_path: Path) -> None:
    ds = ensure_detection_dataset(tmp_path)
    assert isinstance(ds, DetectionDataset)
    assert ds.unlabeled == 300 and ds.classes == ("0", "1", "2")
    before = ds.manifest.stat().st_mtime_ns
    again = ensure_detection_dataset(tmp_path)
    assert again == ds
    assert ds.manifest.stat().st_mtime_ns == before


def test_cli_sample_annotation_writes_digit_boxes(tmp_path: Path) -> None:
    from autolabel_cli.main import JobFileError, ensure_sample_dataset, load_job_file, localize

    job_text = (
        "apiVersion: autolabel.dev/v1alpha1\nkind: AutoLabelJob\n"
        "metadata:\n  name: boxes\n  annotations:\n    autolabel.dev/sample-dataset: digit-boxes\n"
        "spec:\n  task: ObjectDetection\n  mode: ActiveLearning\n"
        "  dataset: {manifest: data/boxes.manifest}\n"
    )
    path = tmp_path / "job.yaml"
    path.write_text(job_text)
    job = localize(load_job_file(str(path)), str(path), None)
    ensure_sample_dataset(job)
    manifest = tmp_path / "data" / "boxes.manifest"
    assert len(manifest.read_text().splitlines()) > 300

    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(job_text.replace("data/boxes.manifest", "other/digits.manifest"))
    with pytest.raises(JobFileError, match=r"digit-boxes sample is written as boxes\.manifest"):
        ensure_sample_dataset(localize(load_job_file(str(wrong)), str(wrong), None))
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text(job_text.replace(": digit-boxes", ": cifar").replace("data/", "other/"))
    with pytest.raises(JobFileError, match=r'unknown sample dataset "cifar" \(known: digits, digit-boxes\)'):
        ensure_sample_dataset(localize(load_job_file(str(unknown)), str(unknown), None))
