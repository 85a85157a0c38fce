"""cli/autolabel_cli/review/confirm.py: new manifest versions from a run's proposals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from autolabel_cli.review.confirm import BoxCorrection, confirm, load_corrections, load_image_list
from autolabel_cli.review.errors import ReviewError
from review_fixtures import BOX_PROPOSALS, BY, DET, labeled_voc, make_dataset, make_detection_dataset

from autolabel.manifest import VocBox, parse_voc, read_manifest
from autolabel.storage import Storage


@pytest.fixture
def ds(tmp_path: Path) -> tuple[Storage, str, str]:
    manifest, results = make_dataset(tmp_path)
    return Storage(), manifest, results


def labels_of(storage: Storage, uri: str) -> dict[str, list[str]]:
    return {Path(e.source).stem: e.labels for e in read_manifest(storage, uri)}


def test_default_confirms_proposals_not_hard_into_a_new_version(ds: tuple[Storage, str, str]) -> None:
    storage, manifest, results = ds
    original = Path(manifest).read_bytes()
    report = confirm(storage, manifest, results, job_name="job")
    assert report.uri == manifest.replace("data.manifest", "data.v1.manifest")
    assert (report.confirmed, report.corrected, report.left) == (4, 0, 1)
    assert Path(manifest).read_bytes() == original
    got = labels_of(storage, report.uri)
    assert got == {"l1": ["cat"], "l2": ["dog"], "u1": ["cat"], "u2": ["dog"], "u3": ["dog"], "u4": [], "u5": ["cat"]}
    entries = {Path(e.source).stem: e for e in read_manifest(storage, report.uri)}
    ann = entries["u1"].annotations[0]
    assert (ann.annotated_by, ann.confidence) == (BY, 0.97)
    assert entries["u1"].raw["annotation"][0]["job-name"] == "job"
    assert entries["u1"].raw["source"] == "images/u1.png"  # as written in the original
    new_lines = Path(report.uri).read_text().splitlines()
    old_lines = original.decode().splitlines()
    assert new_lines[:2] == old_lines[:2]  # labeled lines byte for byte
    assert new_lines[5] == old_lines[5]  # u4 (hard) stays unlabeled, untouched


def test_second_confirm_writes_nothing(ds: tuple[Storage, str, str]) -> None:
    storage, manifest, results = ds
    first = confirm(storage, manifest, results, job_name="job")
    content = Path(first.uri).read_bytes()
    second = confirm(storage, manifest, results, job_name="job")
    assert second.uri == first.uri
    assert sorted(p.name for p in Path(manifest).parent.glob("*.manifest")) == ["data.manifest", "data.v1.manifest"]
    assert Path(first.uri).read_bytes() == content
    again = confirm(storage, first.uri, results, job_name="job")  # from the version itself: no duplicated lines
    assert again.uri == first.uri
    assert len(Path(first.uri).read_text().splitlines()) == 7


def test_next_version_number_and_narrowing(ds: tuple[Storage, str, str]) -> None:
    storage, manifest, results = ds
    narrow = confirm(storage, manifest, results, job_name="job", min_confidence=0.9, labels={"cat"})
    assert narrow.uri.endswith("data.v1.manifest")
    assert (narrow.confirmed, narrow.left) == (2, 3)
    assert labels_of(storage, narrow.uri)["u2"] == []
    wide = confirm(storage, manifest, results, job_name="job", include_hard=True)
    assert wide.uri.endswith("data.v2.manifest")
    assert (wide.confirmed, wide.left) == (5, 0)
    Path(manifest).with_name("data.v9.manifest").write_text(Path(narrow.uri).read_text())
    assert confirm(storage, manifest, results, job_name="job").uri.endswith("data.v10.manifest")


def test_exclude_and_corrections(ds: tuple[Storage, str, str], tmp_path: Path) -> None:
    storage, manifest, results = ds
    exclude = load_image_list("# reviewed\nimages/u1.png\n\n" + str(tmp_path / "images/u2.png") + "\n", "x.txt")
    corrections = load_corrections("image,label\nimages/u3.png,cat\nimages/u4.png, dog\n", "fix.csv")
    report = confirm(storage, manifest, results, job_name="j", exclude=exclude, corrections=corrections)
    assert (report.confirmed, report.corrected, report.left) == (1, 2, 2)
    got = labels_of(storage, report.uri)
    assert (got["u1"], got["u2"], got["u3"], got["u4"], got["u5"]) == ([], [], ["cat"], ["dog"], ["cat"])
    fixed = {Path(e.source).stem: e for e in read_manifest(storage, report.uri)}["u3"]
    assert fixed.annotations[0].annotated_by == "human"
    assert fixed.raw["annotation"][0]["proposed"] == {"name": "dog", "confidence": 0.62}


def test_corrections_json_and_errors_name_the_line() -> None:
    assert load_corrections('{"a.png": "cat"}', "f.json") == {"a.png": "cat"}
    with pytest.raises(ReviewError, match=r"f\.json line 2"):
        load_corrections('{"a.png": "cat",\n oops}', "f.json")
    with pytest.raises(ReviewError, match=r"f\.csv line 3: expected `image,label`"):
        load_corrections("a.png,cat\n\nb.png\n", "f.csv")
    with pytest.raises(ReviewError, match=r"f\.csv line 2: image a\.png corrected to 'dog'.*line 1"):
        load_corrections("a.png,cat\na.png,dog\n", "f.csv")
    with pytest.raises(ReviewError, match=r"f\.json: image 'a\.png'"):
        load_corrections('{"a.png": 3}', "f.json")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"corrections": {"images/l1.png": "dog"}}, r"'images/l1\.png' is already labeled"),
        ({"corrections": {"images/zz.png": "dog"}}, r"'images/zz\.png' is not in"),
        ({"corrections": {"images/u1.png": "bird"}}, r"label 'bird' is not a label"),
        ({"labels": {"bird"}}, r"label 'bird' is not a label"),
        ({"exclude": {"images/zz.png"}}, r"excluded image 'images/zz\.png' is not in"),
        ({"min_confidence": 1.5}, r"min_confidence 1\.5"),
    ],
)
def test_bad_input_writes_nothing(ds: tuple[Storage, str, str], kwargs: dict, message: str) -> None:
    storage, manifest, results = ds
    with pytest.raises(ReviewError, match=message):
        confirm(storage, manifest, results, job_name="j", **kwargs)
    assert [p.name for p in Path(manifest).parent.glob("*.manifest")] == ["data.manifest"]


def test_results_of_another_dataset_and_malformed_results(ds: tuple[Storage, str, str]) -> None:
    storage, manifest, results = ds
    lines = Path(results).read_text().splitlines()
    line = json.loads(lines[0])
    line["source"] = "/elsewhere/x.png"
    Path(results).write_text(json.dumps(line) + "\n")
    with pytest.raises(ReviewError, match=r"result\.manifest line 1: image /elsewhere/x\.png is not in"):
        confirm(storage, manifest, results, job_name="j")
    Path(results).write_text(lines[0] + "\n{not json\n")
    with pytest.raises(ReviewError, match=r"result\.manifest line 2: invalid JSON"):
        confirm(storage, manifest, results, job_name="j")
    with pytest.raises(ReviewError, match="no such file"):
        confirm(storage, manifest + ".missing", results, job_name="j")
    assert [p.name for p in Path(manifest).parent.glob("*.manifest")] == ["data.manifest"]


def test_nothing_accepted_writes_no_version(ds: tuple[Storage, str, str]) -> None:
    storage, manifest, results = ds
    report = confirm(storage, manifest, results, job_name="j", min_confidence=0.999)
    assert (report.uri, report.confirmed, report.left) == (manifest, 0, 5)
    assert [p.name for p in Path(manifest).parent.glob("*.manifest")] == ["data.manifest"]


# ------------------------------------------------------------------------------------------ detection


@pytest.fixture
def det(tmp_path: Path) -> tuple[Storage, str, str]:
    manifest, results = make_detection_dataset(tmp_path)
    return Storage(), manifest, results


def boxes_of(storage: Storage, uri: str) -> dict[str, list[tuple[object, ...]]]:
    """image stem -> its boxes (name, xmin, ymin, xmax, ymax, confidence), from each labeled line's VOC file."""
    out: dict[str, list[tuple[object, ...]]] = {}
    for e in read_manifest(storage, uri):
        for ann in e.annotations:
            assert ann.annotation_loc is not None
            boxes = parse_voc(storage.read_bytes(ann.annotation_loc), ann.annotation_loc)
            out[Path(e.source).stem] = [tuple(b)[:6] for b in boxes]
    return out


def proposed(name: str) -> list[tuple[object, ...]]:
    return [(label, float(x0), float(y0), float(x1), float(y1), conf) for label, x0, y0, x1, y1, conf in
            BOX_PROPOSALS[name][0]]  # fmt: skip


def test_detection_confirm_writes_voc_files_beside_the_new_version(det: tuple[Storage, str, str]) -> None:
    storage, manifest, results = det
    original = Path(manifest).read_bytes()
    report = confirm(storage, manifest, results, job_name="job")
    assert report.uri == manifest.replace("data.manifest", "data.v1.manifest")
    assert (report.confirmed, report.corrected, report.left) == (3, 0, 2)  # d3, d5 hard
    assert Path(manifest).read_bytes() == original
    folder = Path(manifest).parent / "data.v1.annotations"
    assert sorted(p.name for p in folder.iterdir()) == ["d1.xml", "d2.xml", "d4.xml"]
    got = boxes_of(storage, report.uri)
    assert got["l1"] == [("cat", 1.0, 1.0, 10.0, 7.0, None)]  # labeled before: its own file, untouched
    for name in ("d1", "d2", "d4"):
        assert got[name] == proposed(name)
    new_lines = Path(report.uri).read_text().splitlines()
    old_lines = original.decode().splitlines()
    assert new_lines[:2] == old_lines[:2] and new_lines[4] == old_lines[4] and new_lines[6] == old_lines[6]
    line = json.loads(new_lines[2])
    assert line["source"] == "images/d1.png"
    loc = "data.v1.annotations/d1.xml"
    assert line["annotation"] == [
        {"type": DET, "annotation-loc": loc, "annotation-format": "PASCAL VOC", "annotated-by": BY, "job-name": "job"}
    ]
    voc = (folder / "d1.xml").read_text()
    assert "<width>40</width><height>30</height>" in voc and f"<annotated-by>{BY}</annotated-by>" in voc


def test_detection_confirm_is_idempotent_and_never_overwrites(det: tuple[Storage, str, str]) -> None:
    storage, manifest, results = det
    first = confirm(storage, manifest, results, job_name="job")
    snapshot = {p: p.read_bytes() for p in Path(manifest).parent.rglob("*") if p.is_file()}
    second = confirm(storage, manifest, results, job_name="job")
    assert (second.uri, second.written) == (first.uri, False)
    again = confirm(storage, first.uri, results, job_name="job")  # from the version itself
    assert (again.uri, again.written) == (first.uri, False)
    assert {p: p.read_bytes() for p in Path(manifest).parent.rglob("*") if p.is_file()} == snapshot
    # Different boxes for an image: a new version with its own folder; v1's files stay as they were.
    fix = {"images/d3.png": BoxCorrection((VocBox("cat", 1, 1, 9, 9),), "fix.jsonl line 1")}
    fixed = confirm(storage, manifest, results, job_name="job", corrections=fix)
    assert fixed.uri.endswith("data.v2.manifest") and (fixed.confirmed, fixed.corrected) == (3, 1)
    assert sorted(p.name for p in (Path(manifest).parent / "data.v2.annotations").iterdir()) == [
        "d1.xml", "d2.xml", "d3.xml", "d4.xml"]  # fmt: skip
    assert all(p.read_bytes() == data for p, data in snapshot.items())
    # A stray file where a VOC file would go, with other content: refused, nothing written.
    stray = Path(manifest).parent / "data.v3.annotations" / "d1.xml"
    stray.parent.mkdir()
    stray.write_text("<annotation/>")
    with pytest.raises(ReviewError, match=r"data\.v3\.annotations/d1\.xml exists with other content"):
        confirm(storage, manifest, results, job_name="job", include_hard=True)
    assert not (Path(manifest).parent / "data.v3.manifest").exists()
    assert sorted(p.name for p in stray.parent.iterdir()) == ["d1.xml"]


def test_detection_filters_are_per_image(det: tuple[Storage, str, str]) -> None:
    storage, manifest, results = det
    sure = confirm(storage, manifest, results, job_name="j", min_confidence=0.9)
    assert sorted(boxes_of(storage, sure.uri)) == ["d1", "d4", "l1", "l2"]  # every box >= 0.9
    dogs = confirm(storage, manifest, results, job_name="j", labels={"dog"}, include_hard=True)
    assert sorted(boxes_of(storage, dogs.uri)) == ["d2", "d4", "l1", "l2"]  # only dog boxes (d5: none)
    every = confirm(storage, manifest, results, job_name="j", include_hard=True)
    got = boxes_of(storage, every.uri)
    assert got["d5"] == [] and got["d3"] == proposed("d3") and every.left == 0  # "no objects" is a label too


def test_detection_corrections_file_replaces_the_boxes(det: tuple[Storage, str, str], tmp_path: Path) -> None:
    storage, manifest, results = det
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "d4.xml").write_bytes(labeled_voc("d4.png", (30, 30), [("cat", 3, 4, 20, 21)]))
    text = (
        "# fixes of the hard ones\n"
        '{"source": "images/d3.png", "boxes": [["dog", 1, 2, 30, 40], {"label": "cat", "xmin": 40, "ymin": 1,'
        ' "xmax": 60.5, "ymax": 20}]}\n'
        f'{{"source": "{tmp_path}/images/d5.png", "boxes": []}}\n'
        '{"source": "images/d4.png", "voc": "mine/d4.xml"}\n'
    )
    (tmp_path / "fixes.jsonl").write_text(text)
    fixes = load_corrections(text, str(tmp_path / "fixes.jsonl"))
    assert set(fixes) == {"images/d3.png", f"{tmp_path}/images/d5.png", "images/d4.png"}
    report = confirm(storage, manifest, results, job_name="j", corrections=fixes)
    assert (report.confirmed, report.corrected, report.left) == (2, 3, 0)
    got = boxes_of(storage, report.uri)
    assert got["d3"] == [("dog", 1.0, 2.0, 30.0, 40.0, None), ("cat", 40.0, 1.0, 60.5, 20.0, None)]
    assert got["d5"] == [] and got["d4"] == [("cat", 3.0, 4.0, 20.0, 21.0, None)]
    lines = {json.loads(x)["source"]: json.loads(x) for x in Path(report.uri).read_text().splitlines()}
    ann = lines["images/d3.png"]["annotation"][0]
    assert (ann["annotated-by"], ann["job-name"]) == ("human", "j")
    assert "/annotations/d3-" in ann["proposed"]["annotation-loc"] and ann["proposed"]["boxes"] == 2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"source": "images/zz.png", "boxes": []}\n', r"fix\.jsonl line 1: image 'images/zz\.png' is not in"),
        ('\n{"source": "images/l1.png", "boxes": []}\n', r"fix\.jsonl line 2: image 'images/l1\.png' is already"),
        ('{"source": "images/d1.png", "boxes": [["bird", 1, 1, 5, 5]]}\n',
         r"fix\.jsonl line 1: image 'images/d1\.png': label 'bird' is not a label"),
        ('{"source": "images/d1.png", "boxes": [["cat", 1, 1, 5, 5], ["cat", 5, 1, 5, 9]]}\n',
         r"fix\.jsonl line 1: image 'images/d1\.png': box 2 \(cat\): degenerate box \(5, 1, 5, 9\)"),
        ('{"source": "images/d1.png", "boxes": [["cat", 1, 1, 41, 5]]}\n',
         r"fix\.jsonl line 1: box cat \(1, 1, 41, 5\) reaches outside the image .*d1\.png \(40x30\)"),
        ('{"source": "images/d1.png", "boxes": [["cat", 1, 1, 5]]}\n',
         r"line 1: image 'images/d1\.png': box 1: expected"),
        ('{"source": "images/d1.png", "boxes": []}\n{"source": "images/d1.png", "boxes": []}\n',
         r"fix\.jsonl line 2: image 'images/d1\.png' corrected already on line 1"),
        ('{"source": "images/d1.png", "voc": "nope.xml"}\n', r"fix\.jsonl line 1: VOC file .*nope\.xml: cannot read"),
        ("images/d1.png,cat\n", r"correction of image 'images/d1\.png': the results are object detection"),
    ],
)  # fmt: skip
def test_detection_bad_corrections_write_nothing(det: tuple[Storage, str, str], text: str, message: str) -> None:
    storage, manifest, results = det
    before = sorted(p for p in Path(manifest).parent.rglob("*"))
    with pytest.raises(ReviewError, match=message):
        confirm(storage, manifest, results, job_name="j", corrections=load_corrections(text, "fix.jsonl"))
    assert sorted(p for p in Path(manifest).parent.rglob("*")) == before


def test_box_corrections_for_a_classification_run_are_refused(ds: tuple[Storage, str, str]) -> None:
    storage, manifest, results = ds
    fixes = load_corrections('{"source": "images/u1.png", "boxes": [["cat", 1, 1, 5, 5]]}\n', "f.jsonl")
    with pytest.raises(ReviewError, match=r"f\.jsonl line 1: image 'images/u1\.png': the results are image classif"):
        confirm(storage, manifest, results, job_name="j", corrections=fixes)
