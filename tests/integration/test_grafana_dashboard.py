"""Every metric the chart's Grafana dashboard queries is one the operator really exports.

The metric names are parsed out of the dashboard's PromQL (panel targets and template-variable queries)
and compared with the live ``/metrics`` of the operator running against the local control plane: a
counter ``x`` is exported as ``x_total``, a histogram ``x`` as ``x_bucket``/``x_sum``/``x_count``. The other
way round, each ``autolabel_*`` family the operator exports has a panel.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from .operator_fixtures import OperatorProcess, wait_for

pytestmark = [pytest.mark.needs_cluster, pytest.mark.needs_s3]

DASHBOARD = Path(__file__).resolve().parents[2] / "charts" / "autolabel-operator" / "files" / "grafana-dashboard.json"

# PromQL words that look like identifiers but are no metric: operators, modifiers, label-list keywords.
KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left", "group_right"}
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count")}


def promql_metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression (or a Grafana ``label_values(metric, label)``) selects."""
    expr = re.sub(r"\blabel_values\(\s*([^,)]+?)\s*(,[^)]*)?\)", r" \1 ", expr)
    expr = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)  # string literals
    expr = re.sub(r"\{[^}]*\}", " ", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", " ", expr)  # range and subquery durations ($__rate_interval too)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    expr = re.sub(r"\boffset\s+\S+", " ", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.$])[a-zA-Z_:][a-zA-Z0-9_:]*", expr):
        name = match.group(0)
        if name in KEYWORDS or expr[match.end():].lstrip().startswith("("):
            continue  # a function call or an operator
        names.add(name)
    return names


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries: list[str] = []
    stack: list[Any] = list(dashboard["panels"])
    while stack:
        panel = stack.pop()
        stack.extend(panel.get("panels", []))
        queries.extend(t["expr"] for t in panel.get("targets", []) if t.get("expr"))
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            query = variable["query"]
            queries.append(query["query"] if isinstance(query, dict) else query)
    return queries


def exported(text: str) -> tuple[dict[str, str], set[str]]:
    """From /metrics text: {family: type} and every series name that can be queried."""
    families: dict[str, str] = {}
    series: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            suffixes = SUFFIXES.get(kind, ())
            if kind == "counter" and name.endswith("_total"):
                name = name[: -len("_total")]
            families[name] = kind
            series.update(name + s for s in suffixes) if suffixes else series.add(name)
        elif line and not line.startswith("#"):
            series.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return families, series


def family_of(name: str, families: dict[str, str]) -> str:
    for family, kind in families.items():
        if name == family or name in {family + s for s in SUFFIXES.get(kind, ())}:
            return family
    return name


def test_parser_finds_metrics_not_functions_labels_or_variables() -> None:
    expr = ('histogram_quantile(0.9, sum by (le) (rate(a_seconds_bucket{job=~"$job", x="y z"}[$__rate_interval])))'
            " / on (job) group_left b_total offset 5m and c unless 1e3 > bool 2")
    assert promql_metric_names(expr) == {"a_seconds_bucket", "b_total", "c"}
    assert promql_metric_names("label_values(autolabel_jobs, job)") == {"autolabel_jobs"}


def test_dashboard_queries_only_exported_metrics(autolabel_operator: OperatorProcess) -> None:
    def scrape() -> str:
        text = autolabel_operator.metrics()
        return text if "autolabel_jobs" in text else ""

    text = wait_for(scrape, 60, "the operator's /metrics")
    families, series = exported(text)
    queries = dashboard_queries()
    assert queries
    used: set[str] = set()
    for query in queries:
        names = promql_metric_names(query)
        assert names, f"no metric in {query!r}"
        unknown = names - series
        assert not unknown, f"{query!r} queries {sorted(unknown)}, which the operator does not export"
        used |= names

    ours = {f for f in families if f.startswith("autolabel_") and not f.endswith("_created")}
    assert {family_of(n, families) for n in used} == ours, "every autolabel_* family should have a panel"
