"""Generates the AutoLabelJob CustomResourceDefinition from the pydantic models in :mod:`autolabel.api`.

``python -m autolabel.crd > crds/autolabeljobs.autolabel.dev.yaml`` (``make crds``). A test fails when
the committed file differs from what this module generates.

Pydantic emits JSON Schema (draft 2020-12); Kubernetes wants a *structural* OpenAPI v3 schema: no
``$ref``, no ``anyOf`` for optionals, ``exclusiveMinimum`` as a boolean, every node typed. The
conversion below does exactly that, then adds what JSON Schema cannot say: CEL rules, list-map
semantics for conditions and printer columns.
"""

from __future__ import annotations

import sys
from typing import Any

import yaml
from pydantic import BaseModel

from autolabel import api

_KEPT_KEYWORDS = {
    "type", "description", "default", "enum", "format", "pattern", "minLength", "maxLength",
    "minimum", "maximum", "minItems", "maxItems", "items", "properties", "required",
}


def _to_structural(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Turn one pydantic JSON-schema node into a structural OpenAPI v3 node."""
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _to_structural(merged, defs)
    if "anyOf" in node:  # Optional[X] is anyOf [X, null]: the field is simply not required.
        choices = [c for c in node["anyOf"] if c.get("type") != "null"]
        if len(choices) != 1:
            raise ValueError(f"cannot express a union in a structural schema: {node}")
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        return _to_structural({**choices[0], **rest}, defs)
    out: dict[str, Any] = {}
    if "const" in node:
        out["enum"] = [node["const"]]
        out["type"] = node.get("type", "string")
    if "exclusiveMinimum" in node:
        out["minimum"] = node["exclusiveMinimum"]
        out["exclusiveMinimum"] = True
    for key, value in node.items():
        if key not in _KEPT_KEYWORDS or (key == "default" and value is None):
            continue
        if key == "properties":
            value = {name: _to_structural(sub, defs) for name, sub in value.items()}
        elif key == "items":
            value = _to_structural(value, defs)
        out[key] = value
    if "type" not in out:
        raise ValueError(f"schema node without a type: {node}")
    return out


def _model_schema(model: type[BaseModel]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    schema = _to_structural(raw, raw.get("$defs", {}))
    _default_empty_objects(model, schema)
    return schema


def _default_empty_objects(model: type[BaseModel], schema: dict[str, Any]) -> None:
    """Fields built by ``default_factory=SomeModel`` default to ``{}`` so the API server fills their
    own defaults in (structural defaulting applies nested defaults only to objects that exist)."""
    for name, field in model.model_fields.items():
        wire_name = field.alias or name
        sub = schema.get("properties", {}).get(wire_name)
        factory = field.default_factory
        if sub is None:
            continue
        if isinstance(factory, type) and issubclass(factory, BaseModel):
            sub["default"] = {}
            _default_empty_objects(factory, sub)
        else:
            nested = _nested_model(field.annotation)
            if nested is not None:
                _default_empty_objects(nested, sub)


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    candidates = getattr(annotation, "__args__", None) or (annotation,)
    for candidate in candidates:
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _rule(rule: str, message: str, field_path: str | None = None) -> dict[str, str]:
    out = {"rule": rule, "message": message}
    if field_path:
        out["fieldPath"] = field_path
    return out


def spec_schema() -> dict[str, Any]:
    schema = _model_schema(api.AutoLabelJobSpec)
    props = schema["properties"]
    for immutable in ("task", "mode", "dataset"):
        props[immutable]["x-kubernetes-validations"] = [
            _rule("self == oldSelf", f"spec.{immutable} is immutable: create a new AutoLabelJob instead")
        ]
    schema["x-kubernetes-validations"] = [
        _rule(
            "self.mode != 'ActiveLearning' || self.resources.computeNodes == 1",
            "spec.resources.computeNodes must be 1 when mode is ActiveLearning",
            ".resources.computeNodes",
        ),
        _rule(
            f"self.mode != 'PreLabeling' || (self.resources.computeNodes >= 1 && "
            f"self.resources.computeNodes <= {api.MAX_PRELABELING_NODES})",
            f"spec.resources.computeNodes must be between 1 and {api.MAX_PRELABELING_NODES} "
            "when mode is PreLabeling",
            ".resources.computeNodes",
        ),
        _rule(
            "self.mode != 'PreLabeling' || has(self.preLabeling)",
            "spec.preLabeling.model is required when mode is PreLabeling",
            ".preLabeling",
        ),
        _rule(
            "self.mode == 'PreLabeling' || !has(self.preLabeling)",
            "spec.preLabeling is only allowed when mode is PreLabeling",
            ".preLabeling",
        ),
        _rule(
            "self.task == 'ObjectDetection' || !has(self.activeLearning) || "
            "!has(self.activeLearning.pretrainedWeights)",
            api.PRETRAINED_ONLY_DETECTION,
            ".activeLearning.pretrainedWeights",
        ),
        _rule(
            "self.task == 'ImageClassification' || !has(self.activeLearning) || "
            "!has(self.activeLearning.mirrorImages) || self.activeLearning.mirrorImages == 'Auto'",
            api.MIRROR_ONLY_CLASSIFICATION,
            ".activeLearning.mirrorImages",
        ),
        _rule(
            "self.task == 'ImageClassification' || !has(self.activeLearning) || "
            "!has(self.activeLearning.minConfidence)",
            api.MIN_CONFIDENCE_ONLY_CLASSIFICATION,
            ".activeLearning.minConfidence",
        ),
        _rule(
            "self.task == 'ImageClassification' || !has(self.activeLearning) || "
            "!has(self.activeLearning.secondOpinion) || self.activeLearning.secondOpinion == 'Auto'",
            api.SECOND_OPINION_ONLY_CLASSIFICATION,
            ".activeLearning.secondOpinion",
        ),
    ]
    return schema


def status_schema() -> dict[str, Any]:
    schema = _model_schema(api.AutoLabelJobStatus)
    conditions = schema["properties"]["conditions"]
    conditions["x-kubernetes-list-type"] = "map"
    conditions["x-kubernetes-list-map-keys"] = ["type"]
    conditions.pop("default", None)
    return schema


PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Task", "type": "string", "jsonPath": ".spec.task"},
    {"name": "Mode", "type": "string", "jsonPath": ".spec.mode"},
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Progress", "type": "integer", "jsonPath": ".status.progress.percent",
     "description": "Percent of the current stage's work done"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    {"name": "Dataset", "type": "string", "jsonPath": ".spec.dataset.manifest", "priority": 1},
    {"name": "Stage", "type": "string", "jsonPath": ".status.progress.stage", "priority": 1},
    {"name": "Auto-Labeled", "type": "integer", "jsonPath": ".status.result.autoLabeled", "priority": 1},
    {"name": "Hard", "type": "integer", "jsonPath": ".status.result.hardExamples", "priority": 1},
    {"name": "Precision", "type": "number", "jsonPath": ".status.result.estimatedPrecision", "priority": 1},
    {"name": "Job", "type": "string", "jsonPath": ".status.jobName", "priority": 1},
    {"name": "Message", "type": "string", "jsonPath": ".status.message", "priority": 1},
]


def build_crd() -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{api.PLURAL}.{api.GROUP}"},
        "spec": {
            "group": api.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": api.KIND,
                "listKind": f"{api.KIND}List",
                "plural": api.PLURAL,
                "singular": api.SINGULAR,
                "shortNames": api.SHORT_NAMES,
                "categories": ["autolabel"],
            },
            "versions": [
                {
                    "name": api.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "An auto-labeling run over one image dataset.",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema(),
                                "status": status_schema(),
                            },
                        }
                    },
                }
            ],
        },
    }


def render() -> str:
    header = "# Generated by `make crds` (python -m autolabel.crd) from autolabel/api.py. Do not edit.\n"
    return header + yaml.safe_dump(build_crd(), sort_keys=False, width=110)


def main() -> None:
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
