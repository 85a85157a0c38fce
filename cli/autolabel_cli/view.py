"""Rendering AutoLabelJobs for ``autolabel status``: the rich table and the documents for ``-o json|yaml``."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from typing import Any

import yaml
from rich.console import Group
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

FINISHED = ("Succeeded", "Failed")
PHASE_STYLES = {
    "Succeeded": "green",
    "Failed": "bold red",
    "Running": "cyan",
    "Waiting": "yellow",
    "Queued": "yellow",
    "Suspended": "magenta",
    "Pending": "dim",
}
NONE = "-"


def status_of(job: dict[str, Any]) -> dict[str, Any]:
    return dict(job.get("status") or {})


def phase_of(job: dict[str, Any]) -> str:
    return str(status_of(job).get("phase") or "Pending")


def is_finished(job: dict[str, Any]) -> bool:
    return phase_of(job) in FINISHED


def percent_of(job: dict[str, Any]) -> int | None:
    progress = status_of(job).get("progress") or {}
    percent = progress.get("percent")
    if isinstance(percent, int | float) and not isinstance(percent, bool):
        return max(0, min(100, int(percent)))
    if phase_of(job) == "Succeeded":
        return 100
    return None


def human_age(created: str | None, now: dt.datetime) -> str:
    """kubectl's short ages: 42s, 5m3s, 5m, 3h12m, 3h, 4d5h, 4d, 2y."""
    if not created:
        return NONE
    try:
        then = dt.datetime.fromisoformat(created.replace("Z", "+00:00"))
    except ValueError:
        return NONE
    seconds = max(0, int((now - then).total_seconds()))
    minutes, hours, days = seconds // 60, seconds // 3600, seconds // 86400
    if seconds < 120:
        return f"{seconds}s"
    if minutes < 10:
        return f"{minutes}m{seconds % 60}s" if seconds % 60 else f"{minutes}m"
    if hours < 3:
        return f"{minutes}m"
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if days < 8:
        return f"{days}d{hours % 24}h" if hours % 24 else f"{days}d"
    if days < 365 * 2:
        return f"{days}d"
    return f"{days // 365}y"


def _count(value: Any) -> str:
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else NONE


def _progress_cell(job: dict[str, Any]) -> Any:
    percent = percent_of(job)
    if percent is None:
        return Text(NONE)
    bar = ProgressBar(total=100, completed=percent, width=12, complete_style=PHASE_STYLES.get(phase_of(job), "cyan"))
    table = Table.grid(padding=(0, 1))
    table.add_row(bar, Text(f"{percent:>3}%"))
    return table


def status_table(jobs: Sequence[dict[str, Any]], all_namespaces: bool, now: dt.datetime | None = None) -> Table:
    """One row per job: name, (namespace), phase, progress bar and percent, processed/total, results, age."""
    now = now or dt.datetime.now(dt.UTC)
    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("NAME", no_wrap=True)
    if all_namespaces:
        table.add_column("NAMESPACE", no_wrap=True)
    for header in ("PHASE", "PROGRESS", "PROCESSED"):
        table.add_column(header, no_wrap=True)
    for header in ("AUTO-LABELED", "HARD", "PRECISION"):
        table.add_column(header, justify="right", no_wrap=True)
    table.add_column("AGE", justify="right", no_wrap=True)
    for job in jobs:
        status = status_of(job)
        progress = status.get("progress") or {}
        result = status.get("result") or {}
        processed, total = progress.get("processed"), progress.get("total")
        processed_text = f"{_count(processed)}/{_count(total)}" if processed is not None or total is not None else NONE
        precision = result.get("estimatedPrecision")
        precision_text = f"{precision:.3f}" if isinstance(precision, int | float) else NONE
        meta = job.get("metadata") or {}
        row: list[Any] = [meta.get("name", NONE)]
        if all_namespaces:
            row.append(meta.get("namespace", NONE))
        phase = phase_of(job)
        row += [
            Text(phase, style=PHASE_STYLES.get(phase, "")),
            _progress_cell(job),
            processed_text,
            _count(result.get("autoLabeled")),
            _count(result.get("hardExamples")),
            precision_text,
            human_age(meta.get("creationTimestamp"), now),
        ]
        table.add_row(*row)
    return table


def status_view(
    jobs: Sequence[dict[str, Any]], all_namespaces: bool, where: str, now: dt.datetime | None = None
) -> Any:
    """The table, or a line saying there are no jobs ``where`` (e.g. 'in namespace "x"')."""
    if not jobs:
        return Text(f"No AutoLabelJobs {where}.")
    messages = [
        Text(f"{job['metadata']['name']}: {status_of(job)['message']}", style="dim")
        for job in jobs
        if phase_of(job) == "Failed" and status_of(job).get("message")
    ]
    return (
        Group(status_table(jobs, all_namespaces, now), *messages)
        if messages
        else status_table(jobs, all_namespaces, now)
    )


def status_document(job: dict[str, Any]) -> dict[str, Any]:
    meta = job.get("metadata") or {}
    return {"name": meta.get("name"), "namespace": meta.get("namespace"), "status": status_of(job)}


def dump(doc: Any, fmt: str) -> str:
    """``doc`` as JSON (indented, ending in a newline) or YAML."""
    if fmt == "json":
        return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
