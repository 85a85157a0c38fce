"""The chart's Grafana dashboard (charts/autolabel-operator/files/grafana-dashboard.json) is well formed.

That its PromQL queries only metrics the operator exports is checked against a running operator in
tests/integration/test_grafana_dashboard.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DASHBOARD = Path(__file__).resolve().parents[2] / "charts" / "autolabel-operator" / "files" / "grafana-dashboard.json"


def load() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text())
    assert isinstance(data, dict)
    return data


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, also those inside rows."""
    found: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return [p for p in found if p.get("type") != "row"]


def test_dashboard_is_json_with_a_uid_and_title() -> None:
    dashboard = load()
    assert dashboard["uid"] == "autolabel-operator"
    assert dashboard["title"]
    assert panels(dashboard)


def test_every_panel_has_a_datasource_and_a_target() -> None:
    for panel in panels(load()):
        title = panel.get("title")
        assert panel.get("datasource"), f"panel {title!r} has no datasource"
        targets = panel.get("targets") or []
        assert targets, f"panel {title!r} has no target"
        for target in targets:
            assert target.get("expr", "").strip(), f"panel {title!r}: a target without a PromQL expression"
            assert target.get("refId"), f"panel {title!r}: a target without refId"


def test_panel_ids_are_unique_and_datasources_use_the_template_variable() -> None:
    dashboard = load()
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids))
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    for panel in panels(dashboard):
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
