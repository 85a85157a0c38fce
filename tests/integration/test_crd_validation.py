"""The real API server enforces the CRD's schema and CEL rules, naming the field at fault."""

from __future__ import annotations

import json

import pytest
import yaml
from devenv.cluster import LocalCluster

pytestmark = pytest.mark.needs_cluster


def _job(name: str, **spec_overrides) -> str:
    spec = {"task": "ImageClassification", "mode": "ActiveLearning",
            "dataset": {"manifest": "s3://datasets/digits/digits.manifest"}}
    spec.update(spec_overrides)
    return yaml.safe_dump({"apiVersion": "autolabel.dev/v1alpha1", "kind": "AutoLabelJob",
                           "metadata": {"name": name}, "spec": spec})


def _apply(cluster: LocalCluster, namespace: str, manifest: str):
    return cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest, check=False)


def test_crd_is_established_with_short_name_and_printer_columns(cluster: LocalCluster, namespace: str) -> None:
    version = json.loads(cluster.kubectl("version", "-o", "json").stdout)["serverVersion"]
    assert (int(version["major"]), int(version["minor"].rstrip("+"))) >= (1, 34)
    assert _apply(cluster, namespace, _job("digits")).returncode == 0
    table = cluster.kubectl("get", "alj", "-n", namespace).stdout
    assert table.split()[:6] == ["NAME", "TASK", "MODE", "PHASE", "PROGRESS", "AGE"]
    assert "ImageClassification" in table and "ActiveLearning" in table
    wide = cluster.kubectl("get", "alj", "-n", namespace, "-o", "wide").stdout
    assert "DATASET" in wide and "AUTO-LABELED" in wide and "PRECISION" in wide


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"mode": "PreLabeling", "preLabeling": {"model": {"uri": "s3://models/model.pt"}},
          "resources": {"computeNodes": 6}}, "spec.resources.computeNodes", "less than or equal to 5"),
        ({"resources": {"computeNodes": 2}}, "spec.resources.computeNodes",
         "must be 1 when mode is ActiveLearning"),
        ({"mode": "PreLabeling"}, "spec.preLabeling", "spec.preLabeling.model is required when mode is PreLabeling"),
        ({"preLabeling": {"model": {"uri": "s3://models/model.pt"}}}, "spec.preLabeling",
         "only allowed when mode is PreLabeling"),
        ({"activeLearning": {"targetPrecision": 0}}, "spec.activeLearning.targetPrecision", "greater than 0"),
        ({"activeLearning": {"targetPrecision": 1.5}}, "spec.activeLearning.targetPrecision",
         "less than or equal to 1"),
        ({"dataset": {"manifest": "/data/digits.manifest"}}, "spec.dataset.manifest", "should match"),
        ({"task": "Segmentation"}, "spec.task", "Unsupported value"),
        ({"task": "ObjectDetection", "activeLearning": {"mirrorImages": "Never"}},
         "spec.activeLearning.mirrorImages", "only used when task is ImageClassification"),
        ({"task": "ObjectDetection", "activeLearning": {"minConfidence": 0.8}},
         "spec.activeLearning.minConfidence", "only used when task is ImageClassification"),
        ({"task": "ObjectDetection", "activeLearning": {"secondOpinion": "Never"}},
         "spec.activeLearning.secondOpinion", "only used when task is ImageClassification"),
        ({"activeLearning": {"minConfidence": -0.1}}, "spec.activeLearning.minConfidence",
         "greater than or equal to 0"),
        ({"output": "/etc/"}, "spec.output", "should match"),
        ({"mode": "PreLabeling", "preLabeling": {"model": {"uri": "/etc/passwd"}}}, "spec.preLabeling.model.uri",
         "should match"),
    ],
)
def test_bad_specs_are_rejected_by_the_api_server(
    cluster: LocalCluster, namespace: str, overrides: dict, field: str, message: str
) -> None:
    result = _apply(cluster, namespace, _job("bad", **overrides))
    assert result.returncode != 0, "the API server accepted a bad spec"
    assert field in result.stderr and message in result.stderr, result.stderr


@pytest.mark.parametrize("field", ["task", "mode", "dataset"])
def test_immutable_fields_cannot_change(cluster: LocalCluster, namespace: str, field: str) -> None:
    assert _apply(cluster, namespace, _job("fixed")).returncode == 0
    all_changes: dict[str, dict[str, object]] = {
        "task": {"task": "ObjectDetection"},
        "mode": {"mode": "PreLabeling", "preLabeling": {"model": {"uri": "s3://models/model.pt"}}},
        "dataset": {"dataset": {"manifest": "s3://datasets/other/other.manifest"}},
    }
    changes = all_changes[field]
    result = _apply(cluster, namespace, _job("fixed", **changes))
    assert result.returncode != 0
    assert f"spec.{field} is immutable" in result.stderr, result.stderr


def test_valid_specs_are_accepted_with_defaults_filled_in(cluster: LocalCluster, namespace: str) -> None:
    assert _apply(cluster, namespace, _job("al")).returncode == 0
    prelabel = _job("pl", mode="PreLabeling", preLabeling={"model": {"uri": "s3://models/model.pt", "version": "3"}},
                    resources={"computeNodes": 5, "flavor": "gpu-1"})
    assert _apply(cluster, namespace, prelabel).returncode == 0
    stored = json.loads(cluster.kubectl("get", "alj", "al", "-n", namespace, "-o", "json").stdout)["spec"]
    assert stored["activeLearning"] == {
        "algorithm": "Fast", "targetPrecision": 0.95, "seed": 0, "mirrorImages": "Auto", "secondOpinion": "Auto"
    }
    assert stored["resources"] == {"computeNodes": 1}
    assert stored["suspend"] is False
    assert stored["activeDeadlineSeconds"] == 86400
    assert stored["images"] == {"alpha": "Convert", "maxUnreadableFraction": 0.05}
    stored_pl = json.loads(cluster.kubectl("get", "alj", "pl", "-n", namespace, "-o", "json").stdout)["spec"]
    assert stored_pl["resources"]["computeNodes"] == 5


def test_status_subresource_keeps_declared_fields(cluster: LocalCluster, namespace: str) -> None:
    assert _apply(cluster, namespace, _job("st")).returncode == 0
    status = {"status": {"phase": "Running", "progress": {"stage": "inference", "processed": 5, "total": 10,
              "percent": 50}, "conditions": [{"type": "LockAcquired", "status": "True", "reason": "Acquired",
              "message": "holder", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}}
    cluster.kubectl("patch", "alj", "st", "-n", namespace, "--subresource=status", "--type=merge",
                    "-p", json.dumps(status))
    stored = json.loads(cluster.kubectl("get", "alj", "st", "-n", namespace, "-o", "json").stdout)["status"]
    assert stored["progress"]["percent"] == 50
    assert stored["conditions"][0]["reason"] == "Acquired"
