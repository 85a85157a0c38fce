"""The seed's preconditions: messages name the label, line or object at fault."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from autolabel.api import Task
from autolabel.manifest import CLASSIFICATION_TYPE, DETECTION_TYPE, ManifestSummary
from autolabel.preconditions import check_dataset, check_manifest, check_model
from autolabel.storage import Storage, StorageConfig

IC = Task.IMAGE_CLASSIFICATION


def summary(counts: dict[str, int], unlabeled: int = 3, types: set[str] | None = None) -> ManifestSummary:
    return ManifestSummary(
        label_counts=Counter(counts),
        labeled=sum(counts.values()),
        unlabeled=unlabeled,
        annotation_types={CLASSIFICATION_TYPE} if types is None else types,
    )


def reasons(failures: list) -> list[str]:
    return [f.reason for f in failures]


def test_valid_dataset_passes() -> None:
    assert check_dataset(summary({"0": 5, "1": 7}), IC) == []
    assert check_dataset(summary({"0": 5, "1": 7}), "ImageClassification") == []


def test_too_few_images_per_label_names_each_label_and_count() -> None:
    (failure,) = check_dataset(summary({"7": 3, "1": 9, "2": 1}), IC)
    assert failure.reason == "TooFewImagesPerLabel"
    assert failure.message == 'label "2" has 1 image, label "7" has 3 images; each label needs at least 5'


def test_too_few_labels() -> None:
    failures = check_dataset(summary({"cat": 12}), IC)
    assert reasons(failures) == ["TooFewLabels"]
    assert 'only 1 label ("cat" on 12 images)' in failures[0].message
    assert "at least 2" in failures[0].message
    failures = check_dataset(summary({}, unlabeled=10, types=set()), IC)
    assert reasons(failures) == ["TooFewLabels"] and "no labeled images" in failures[0].message


def test_no_unlabeled_images() -> None:
    failures = check_dataset(summary({"a": 5, "b": 5}, unlabeled=0), IC)
    assert reasons(failures) == ["NoUnlabeledImages"]
    assert failures[0].message.startswith("all 10 images are labeled")


def test_several_failures_are_all_reported() -> None:
    failures = check_dataset(summary({"a": 2}, unlabeled=0), IC)
    assert reasons(failures) == ["TooFewLabels", "TooFewImagesPerLabel", "NoUnlabeledImages"]


def test_unsupported_task_and_task_mismatch() -> None:
    (failure,) = check_dataset(summary({"a": 5, "b": 5}), "ImageSegmentation")
    assert failure.reason == "UnsupportedTask" and '"ImageSegmentation"' in failure.message
    failures = check_dataset(summary({"a": 5, "b": 5}, types={DETECTION_TYPE, CLASSIFICATION_TYPE}), IC)
    assert reasons(failures) == ["ManifestInvalid"]
    assert DETECTION_TYPE in failures[0].message


def test_detection_label_rules_wait_for_the_voc_counts() -> None:
    # The manifest alone does not know detection labels (they are in the VOC files).
    assert check_dataset(summary({}, types={DETECTION_TYPE}), Task.OBJECT_DETECTION) == []
    failures = check_dataset(summary({"car": 9, "bus": 2}, types={DETECTION_TYPE}), Task.OBJECT_DETECTION)
    assert reasons(failures) == ["TooFewImagesPerLabel"]


def write_manifest(path: Path, lines: list[str]) -> str:
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_check_manifest_maps_errors_to_reasons(tmp_path: Path) -> None:
    st = Storage()
    good = [json.dumps({"source": f"{i}.png", "annotation": [{"type": CLASSIFICATION_TYPE, "name": str(i % 2)}]})
            for i in range(10)] + [json.dumps({"source": "u.png"})]  # fmt: skip
    summ, failures = check_manifest(st, write_manifest(tmp_path / "good.manifest", good), IC)
    assert failures == [] and summ is not None and summ.unlabeled == 1

    _, failures = check_manifest(st, write_manifest(tmp_path / "bad.manifest", [*good[:4], "{oops"]), IC)
    assert reasons(failures) == ["ManifestInvalid"]
    assert failures[0].message.startswith(f"{tmp_path / 'bad.manifest'} line 5: invalid JSON")

    _, failures = check_manifest(st, str(tmp_path / "absent.manifest"), IC)
    assert reasons(failures) == ["ManifestUnreadable"] and "absent.manifest" in failures[0].message


def test_check_manifest_reports_an_unreachable_store() -> None:
    st = Storage(StorageConfig(endpoint_url="http://127.0.0.1:1", access_key="a", secret_key="b",
                               max_attempts=1, connect_retries=1))  # fmt: skip
    st._sleep = lambda s: None
    _, failures = check_manifest(st, "s3://bucket/set.manifest", IC)
    assert reasons(failures) == ["StorageUnreachable"] and "s3://bucket/set.manifest" in failures[0].message


def write_model(folder: Path, labels: object, as_file: bool = False) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.pt").write_bytes(b"torchscript bytes")
    (folder / "labels.json").write_text(json.dumps(labels) if not isinstance(labels, str) else labels)
    return str(folder / "model.pt") if as_file else str(folder)


def test_check_model_accepts_folder_and_file(tmp_path: Path) -> None:
    st = Storage()
    uri = write_model(tmp_path / "m", {"task": "ImageClassification", "labels": ["a", "b"]})
    assert check_model(st, uri, IC) == []
    assert check_model(st, uri + "/", IC) == []
    file_uri = write_model(tmp_path / "f", {"task": CLASSIFICATION_TYPE, "labels": ["a"]}, as_file=True)
    assert check_model(st, file_uri, IC) == []


def test_check_model_failures(tmp_path: Path) -> None:
    st = Storage()
    (failure,) = check_model(st, str(tmp_path / "missing"), IC)
    assert failure.reason == "ModelNotFound" and "missing" in failure.message

    (tmp_path / "nolabels").mkdir()
    (tmp_path / "nolabels" / "model.pt").write_bytes(b"x")
    (failure,) = check_model(st, str(tmp_path / "nolabels"), IC)
    assert failure.reason == "ModelNotFound" and "labels.json" in failure.message

    uri = write_model(tmp_path / "det", {"task": "ObjectDetection", "labels": ["car"]})
    (failure,) = check_model(st, uri, IC)
    assert failure.reason == "ModelTaskMismatch"
    assert "is for ObjectDetection; the job's task is ImageClassification" in failure.message

    uri = write_model(tmp_path / "broken", "{not json")
    (failure,) = check_model(st, uri, IC)
    assert failure.reason == "ModelInvalid" and "labels.json" in failure.message

    uri = write_model(tmp_path / "nolist", {"task": "ImageClassification", "labels": "a,b"})
    assert reasons(check_model(st, uri, IC)) == ["ModelInvalid"]


def test_a_bad_labels_json_is_named_but_its_content_never_echoed(tmp_path: Path) -> None:
    secret = "root:x:0:0:AKIAEXAMPLESECRET"
    (tmp_path / "model.pt").write_bytes(b"not a model")
    (tmp_path / "labels.json").write_text(json.dumps({"labels": ["a", "b"], "task": secret}))
    failures = check_model(Storage(), str(tmp_path) + "/", "ImageClassification")
    assert [f.reason for f in failures] == ["ModelInvalid"]
    assert "labels.json" in failures[0].message and secret not in failures[0].message


def test_an_empty_manifest_is_invalid_and_says_so(tmp_path: Path) -> None:
    st = Storage()
    for name, data in {"empty": b"", "blank": b"\n  \n\n", "bom-only": b"\xef\xbb\xbf"}.items():
        path = tmp_path / f"{name}.manifest"
        path.write_bytes(data)
        _, failures = check_manifest(st, str(path), IC)
        assert [(f.reason, f.message) for f in failures] == [
            ("ManifestInvalid", f"{path}: empty (not one JSON line in it)")
        ], name
