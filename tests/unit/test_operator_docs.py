"""docs/operator.md documents every field of the resource, every setting and every metric."""

from __future__ import annotations

import re
from pathlib import Path

from autolabel_operator import metrics
from autolabel_operator.main import _FLAGS
from pydantic import BaseModel

from autolabel.api import AutoLabelJobSpec, AutoLabelJobStatus

DOC = (Path(__file__).resolve().parents[2] / "docs" / "operator.md").read_text()


def _leaf_paths(model: type[BaseModel], prefix: str = "") -> list[str]:
    paths = []
    for name, field in model.model_fields.items():
        wire = field.alias or name
        nested = [a for a in getattr(field.annotation, "__args__", (field.annotation,)) if isinstance(a, type)]
        sub = next((a for a in nested if issubclass(a, BaseModel)), None)
        if sub is not None and prefix == "":
            paths += _leaf_paths(sub, f"{wire}.")
        else:
            paths.append(prefix + wire)
    return paths


def test_every_spec_and_status_field_is_documented() -> None:
    for path in _leaf_paths(AutoLabelJobSpec):
        first = path.split(".")[0]
        assert f"`{path}" in DOC or f"`{first}." in DOC, path
    for field in AutoLabelJobStatus.model_fields.values():
        assert f"| `{field.alias}` |" in DOC, field.alias


def test_every_setting_and_metric_is_documented() -> None:
    for variable in _FLAGS.values():
        assert f"`{variable}`" in DOC, variable
    for collector in (
        metrics.PRECONDITION_FAILURES,
        metrics.RECONCILE_ERRORS,
        metrics.JOB_DURATION,
        metrics.IMAGES_LABELED,
        metrics.AUTO_LABELED,
        metrics.HARD_EXAMPLES,
    ):
        name = collector._name
        documented = name + ("_total" if re.search(r"Counter", type(collector).__name__) else "")
        assert f"`{documented}`" in DOC, documented
    assert "`autolabel_jobs`" in DOC
