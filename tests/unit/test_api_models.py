"""The API models and the CRD generated from them."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from autolabel import api, crd

CRD_FILE = Path(__file__).resolve().parents[2] / "crds" / "autolabeljobs.autolabel.dev.yaml"


def test_committed_crd_is_generated_from_the_models() -> None:
    assert CRD_FILE.read_text() == crd.render(), "crds/ is stale: run `make crds` and commit the result"


def _walk(node: dict, path: str = ""):
    yield path, node
    for name, sub in node.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{name}")
    if "items" in node:
        yield from _walk(node["items"], f"{path}[]")


def test_crd_schema_is_structural() -> None:
    schema = crd.build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema):
        assert "type" in node, f"{path} has no type"
        assert not {"$ref", "anyOf", "allOf", "oneOf", "title"} & node.keys(), f"{path} is not structural"
        if "exclusiveMinimum" in node:
            assert node["exclusiveMinimum"] is True and "minimum" in node, path


def test_crd_declares_every_status_field_of_the_model() -> None:
    status = crd.status_schema()["properties"]
    assert set(status) == {f.alias or n for n, f in api.AutoLabelJobStatus.model_fields.items()}
    conditions = status["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert set(conditions["items"]["required"]) == {"type", "status", "lastTransitionTime", "reason", "message"}


def test_crd_defaults_fill_nested_objects() -> None:
    spec = crd.spec_schema()["properties"]
    assert spec["activeLearning"]["default"] == {}
    assert spec["activeLearning"]["properties"]["targetPrecision"]["default"] == 0.95
    assert spec["resources"]["properties"]["computeNodes"]["default"] == 1
    assert spec["suspend"]["default"] is False


def test_printer_columns() -> None:
    columns = {c["name"]: c for c in crd.PRINTER_COLUMNS}
    assert [n for n, c in columns.items() if "priority" not in c] == ["Task", "Mode", "Phase", "Progress", "Age"]


def _spec(**overrides) -> dict:
    spec = {"task": "ImageClassification", "mode": "ActiveLearning",
            "dataset": {"manifest": "s3://datasets/digits/digits.manifest"}}
    spec.update(overrides)
    return spec


def test_spec_defaults() -> None:
    spec = api.AutoLabelJobSpec.model_validate(_spec())
    assert spec.active_learning is not None
    assert spec.active_learning.algorithm == "Fast"
    assert spec.active_learning.target_precision == 0.95
    assert spec.resources.compute_nodes == 1
    assert spec.to_wire()["activeLearning"]["targetPrecision"] == 0.95


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"resources": {"computeNodes": 2}}, "spec.resources.computeNodes must be 1 when mode is ActiveLearning"),
        ({"mode": "PreLabeling"}, "spec.preLabeling is required when mode is PreLabeling"),
        ({"mode": "PreLabeling", "preLabeling": {"model": {"uri": "s3://m/x.pt"}}, "resources": {"computeNodes": 6}},
         "computeNodes"),
        ({"activeLearning": {"targetPrecision": 0}}, "targetPrecision"),
        ({"activeLearning": {"mirrorImages": "Sometimes"}}, "mirrorImages"),
        ({"task": "Segmentation"}, "task"),
        ({"unknownField": 1}, "unknownField"),
        ({"activeLearning": {"pretrainedWeights": "s3://b/w.pt"}}, "pretrainedWeights is only used when task is"),
        ({"task": "ObjectDetection", "activeLearning": {"mirrorImages": "Always"}},
         "mirrorImages is only used when task is ImageClassification"),
        ({"activeLearning": {"minConfidence": 1.2}}, "minConfidence"),
        ({"task": "ObjectDetection", "activeLearning": {"minConfidence": 0.8}},
         "minConfidence is only used when task is ImageClassification"),
        ({"task": "ObjectDetection", "activeLearning": {"secondOpinion": "Never"}},
         "secondOpinion is only used when task is ImageClassification"),
        ({"activeLearning": {"secondOpinion": "Always"}}, "secondOpinion"),
    ],
)
def test_bad_specs_are_rejected_naming_the_field(overrides: dict, message: str) -> None:
    with pytest.raises(ValidationError) as error:
        api.AutoLabelJobSpec.model_validate(_spec(**overrides))
    assert message in str(error.value)


def test_results_prefix_is_unique_per_job_and_defaults_beside_the_manifest() -> None:
    job = api.AutoLabelJob.model_validate(
        {"metadata": {"name": "digits", "uid": "7f3c2a1b-0000-4000-8000-000000000000"}, "spec": _spec()}
    )
    assert api.results_prefix(job) == "s3://datasets/digits/autolabel/digits-7f3c2a1b/"
    job.spec.output = "s3://out/labels/"
    assert api.results_prefix(job) == "s3://out/labels/digits-7f3c2a1b/"


def test_every_example_job_is_a_valid_autolabeljob() -> None:
    paths = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))
    jobs = [
        (path.name, api.AutoLabelJob.model_validate(document))
        for path in paths
        for document in yaml.safe_load_all(path.read_text())
        if document and document.get("kind") == "AutoLabelJob"
    ]
    tasks = {name: job.spec.task for name, job in jobs}
    assert tasks["digits-al.yaml"] == tasks["digits-local.yaml"] == api.Task.IMAGE_CLASSIFICATION
    assert tasks["digit-boxes-local.yaml"] == tasks["digit-boxes-prelabel.yaml"] == api.Task.OBJECT_DETECTION
