"""cli/autolabel_cli/review/confirm.py: new manifest versions from a run's proposals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from autolabel_cli.review.confirm import confirm, load_corrections, load_image_list
from autolabel_cli.review.errors import ReviewError
from review_fixtures import BY, make_dataset

from autolabel.manifest import read_manifest
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
