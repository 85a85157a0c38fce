"""``autolabel results``: a finished job's ``summary.json`` and ``result.manifest``, summarized.

The results prefix is the job's ``status.result.uri``; the store is reached with the endpoint and keys of
this environment (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, as ``.dev/env``
sets them), else the job's ``spec.storage.endpoint``/``region``. The result manifest is streamed: memory
grows with the number of labels and ``--top``, not with the number of lines.

Object detection results (lines pointing at VOC files, ``"task": "ObjectDetection"`` in the summary): the
per-label counts are boxes, from the summary's ``labelCounts`` (the worker counts every proposed box); the
hardest examples' boxes are read from their VOC files (``--top`` files, no more).
"""

from __future__ import annotations

import heapq
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, Group
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from autolabel.contract import RESULT_FILE, RESULT_NOTES, SUMMARY_FILE
from autolabel.manifest import VocError, parse_voc
from autolabel.storage import Storage, StorageConfig, StorageError, join_uri

from .kube import CliError

# Hard-example reason IDs as ModelArts documents them (docs/architecture.md, "Sources").
HARD_REASONS = {
    0: "no target found",
    1: "low confidence",
    2: "clustering disagrees with the prediction",
    3: "far from same-class training data",
    4: "consecutive similar images disagree",
    5: "resolution shifted",
    6: "aspect ratio shifted",
    7: "brightness shifted",
    8: "saturation shifted",
    9: "colourfulness shifted",
    10: "sharpness shifted",
    **{i: "box statistics shifted" for i in range(11, 19)},
    19: "disagrees under blur",
    20: "disagrees under left-right flip",
    21: "disagrees under crop",
    22: "disagrees under up-down flip",
    23: "disagrees under scaling",
    24: "disagrees under translation",
    25: "disagrees under shear",
    26: "disagrees under superpixels",
    27: "disagrees under sharpening",
    28: "disagrees when brightened or darkened",
    29: "disagrees under inversion",
    30: "predicted abnormal",
    31: "a second model (texture statistics) finds the label unlikely",  # this worker's own, beyond ModelArts' 0-30
}


def reason_name(reason: str) -> str:
    return HARD_REASONS.get(int(reason), "unknown reason") if reason.isdigit() else "unknown reason"


def storage_for(job: dict[str, Any]) -> Storage:
    """The store as seen from here: this environment's endpoint and keys, else the job's endpoint."""
    spec_storage = (job.get("spec") or {}).get("storage") or {}
    env = StorageConfig.from_env()
    return Storage(
        StorageConfig(
            endpoint_url=env.endpoint_url or spec_storage.get("endpoint"),
            region=env.region or spec_storage.get("region"),
            access_key=env.access_key,
            secret_key=env.secret_key,
            connect_retries=1,
            max_attempts=2,
        )
    )


@dataclass
class LabelCount:
    total: int = 0
    auto_labeled: int = 0
    hard: int = 0


@dataclass
class Example:
    source: str
    label: str
    confidence: float | None
    coefficient: float
    reasons: list[str]
    annotation_loc: str | None = None


@dataclass
class Report:
    uri: str
    summary: dict[str, Any]
    labels: dict[str, LabelCount] = field(default_factory=dict)
    reasons: Counter[str] = field(default_factory=Counter)
    lines: int = 0
    hard: int = 0
    hardest: list[Example] = field(default_factory=list)
    detection: bool = False
    boxes: dict[str, int] = field(default_factory=dict)
    """Detection: proposed boxes per label (the summary's ``labelCounts``)."""


BOXES = "(boxes)"


def _label_of(line: dict[str, Any]) -> tuple[str, float | None]:
    annotations = line.get("annotation") or []
    first = annotations[0] if annotations and isinstance(annotations[0], dict) else {}
    confidence = first.get("confidence")
    label = first.get("name")
    if label is None and first.get("annotation-loc"):
        label = BOXES
    return str(label if label is not None else "(none)"), float(confidence) if isinstance(
        confidence, int | float
    ) else None


def read_report(storage: Storage, uri: str, top: int) -> Report:
    """Read ``summary.json`` and stream ``result.manifest`` under the results prefix ``uri``."""
    prefix = uri if uri.endswith("/") else uri + "/"
    try:
        summary_uri, manifest_uri = join_uri(prefix, SUMMARY_FILE), join_uri(prefix, RESULT_FILE)
    except ValueError as exc:
        raise CliError(f"cannot read the results at {uri}: {exc}") from exc
    try:
        summary = json.loads(storage.read_bytes(summary_uri))
    except StorageError as exc:
        raise CliError(f"cannot read the results at {summary_uri}: {exc}") from exc
    except ValueError as exc:
        raise CliError(f"cannot read the results at {summary_uri}: not valid JSON ({exc})") from exc
    if not isinstance(summary, dict):
        raise CliError(f"cannot read the results at {summary_uri}: expected a JSON object")
    report = Report(uri=uri, summary=summary)
    heap: list[tuple[float, int, Example]] = []
    number = 0
    try:
        for number, text in enumerate(storage.iter_lines(manifest_uri), start=1):
            if not text.strip():
                continue
            line = json.loads(text)
            if not isinstance(line, dict):
                raise ValueError("a line is not a JSON object")
            label, confidence = _label_of(line)
            counts = report.labels.setdefault(label, LabelCount())
            counts.total += 1
            report.lines += 1
            if not line.get("hard"):
                counts.auto_labeled += 1
                continue
            counts.hard += 1
            report.hard += 1
            reasons = [r for r in str(line.get("hard-reasons") or "").split("-") if r]
            report.reasons.update(set(reasons))
            coefficient = float(line.get("hard-coefficient") or 0.0)
            loc = ((line.get("annotation") or [{}])[0] or {}).get("annotation-loc") if label == BOXES else None
            example = Example(str(line.get("source")), label, confidence, coefficient, reasons, loc)
            item = (coefficient, -number, example)
            if top <= 0:
                continue
            if len(heap) < top:
                heapq.heappush(heap, item)
            else:
                heapq.heappushpop(heap, item)
    except StorageError as exc:
        raise CliError(f"cannot read the results at {manifest_uri}: {exc}") from exc
    except (ValueError, TypeError) as exc:
        raise CliError(f"cannot read the results at {manifest_uri} line {number}: {exc}") from exc
    report.hardest = [item[2] for item in sorted(heap, reverse=True)]
    report.detection = summary.get("task") == "ObjectDetection" or BOXES in report.labels
    if report.detection:
        box_counts = summary.get("labelCounts")
        if isinstance(box_counts, dict):
            report.boxes = {str(k): v for k, v in box_counts.items() if isinstance(v, int) and not isinstance(v, bool)}
        _describe_boxes(storage, manifest_uri, report.hardest)
    return report


def _describe_boxes(storage: Storage, manifest_uri: str, examples: list[Example]) -> None:
    """A detection example's label becomes its boxes (``2 cat, 1 dog``), its confidence the lowest box's;
    an unreadable VOC file leaves it as it is."""
    located = [e for e in examples if e.annotation_loc]
    uris = [join_uri(manifest_uri, str(e.annotation_loc)) for e in located]
    for example, (uri, data) in zip(located, storage.fetch_many(uris, max_workers=8), strict=True):
        if isinstance(data, StorageError):
            continue
        try:
            boxes = parse_voc(data, uri)
        except VocError:
            continue
        names = Counter(box.name for box in boxes)
        example.label = ", ".join(f"{c} {n}" for n, c in sorted(names.items())) or "(no boxes)"
        confidences = [box.confidence for box in boxes if box.confidence is not None]
        example.confidence = min(confidences) if confidences else None


def _number(value: Any) -> Any:
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def _notes(summary: dict[str, Any]) -> list[str]:
    """The worker's first notes (the most important first), as ``status.result.notes`` has them."""
    notes = summary.get("notes")
    return [str(note) for note in notes[:RESULT_NOTES]] if isinstance(notes, list) else []


def _min_confidence(summary: dict[str, Any]) -> float | None:
    """The job's `activeLearning.minConfidence`, as the worker's calibration repeats it (None: unset)."""
    calibration = summary.get("calibration")
    return _number(calibration.get("minConfidence")) if isinstance(calibration, dict) else None


def report_document(job: dict[str, Any], report: Report) -> dict[str, Any]:
    """What ``results -o json|yaml`` prints."""
    summary = report.summary
    return {
        "name": job["metadata"]["name"],
        "namespace": job["metadata"].get("namespace"),
        "uri": report.uri,
        "summary": {
            "total": _number(summary.get("total")),
            "autoLabeled": _number(summary.get("autoLabeled")),
            "hardExamples": _number(summary.get("hardExamples")),
            "estimatedPrecision": _number(summary.get("estimatedPrecision")),
            "targetPrecision": _number(summary.get("targetPrecision")),
            "minConfidence": _min_confidence(summary),
            "targetVerifiable": summary.get("targetVerifiable"),
            "notes": _notes(summary),
        },
        "task": summary.get("task"),
        "labels": {
            label: {"total": c.total, "autoLabeled": c.auto_labeled, "hard": c.hard}
            for label, c in sorted(report.labels.items())
        },
        **({"boxes": dict(sorted(report.boxes.items()))} if report.detection else {}),
        "hardReasons": [
            {
                "reason": int(r) if r.isdigit() else r,
                "name": reason_name(r),
                "count": n,
                "share": round(n / report.hard, 4),
            }
            for r, n in _sorted_reasons(report)
        ],
        "hardest": [
            {
                "source": e.source,
                "label": e.label,
                "confidence": e.confidence,
                "hardCoefficient": e.coefficient,
                "hardReasons": [int(r) if r.isdigit() else r for r in e.reasons],
            }
            for e in report.hardest
        ],
    }


def _sorted_reasons(report: Report) -> list[tuple[str, int]]:
    return sorted(report.reasons.items(), key=lambda kv: (-kv[1], int(kv[0]) if kv[0].isdigit() else 999))


def _fmt(value: Any, digits: int = 3) -> str:
    if isinstance(value, bool) or value is None:
        return "-" if value is None else str(value).lower()
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _boxes_table(report: Report) -> Table:
    """Detection: proposed boxes per label, and the images (with boxes or not) auto-labeled and hard."""
    table = Table(title="Proposed boxes", title_justify="left", box=None, header_style="bold", pad_edge=False)
    table.add_column("LABEL")
    table.add_column("BOXES", justify="right")
    table.add_column("")
    biggest = max(report.boxes.values(), default=0)
    for label, n in sorted(report.boxes.items(), key=lambda kv: (-kv[1], kv[0])):
        table.add_row(label, str(n), ProgressBar(total=biggest or 1, completed=n, width=30))
    if not report.boxes:
        table.add_row("(summary.json has no labelCounts)", "", "")
    images = sum(c.total for c in report.labels.values())
    auto = sum(c.auto_labeled for c in report.labels.values())
    table.caption = f"in {images} image(s): {auto} auto-labeled, {images - auto} hard"
    table.caption_justify = "left"
    return table


def render_report(console: Console, job: dict[str, Any], report: Report) -> None:
    summary = report.summary
    meta = job["metadata"]
    console.print(Text(f"{meta['name']} ({meta.get('namespace', '')}) — results at {report.uri}", style="bold"))
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="dim")
    facts.add_column()
    total, auto, hard = summary.get("total"), summary.get("autoLabeled"), summary.get("hardExamples")
    share = f" ({auto / total:.1%})" if isinstance(auto, int) and isinstance(total, int) and total else ""
    facts.add_row("total", _fmt(total))
    facts.add_row("auto-labeled", _fmt(auto) + share)
    facts.add_row("hard examples", _fmt(hard))
    precision = _fmt(summary.get("estimatedPrecision"))
    if summary.get("targetPrecision") is not None:
        floor = _min_confidence(summary)
        precision += f" (target {_fmt(summary.get('targetPrecision'), 2)}"
        precision += f", none auto-labeled under {_fmt(floor, 2)})" if floor is not None else ")"
    facts.add_row("estimated precision", precision)
    facts.add_row("target verifiable", _fmt(summary.get("targetVerifiable")))
    for note in _notes(summary):
        facts.add_row("note", note)  # e.g. "Precise fell back to the Fast models: ..."
    console.print(facts)

    biggest = max((c.total for c in report.labels.values()), default=0)
    labels = Table(title="Proposed labels", title_justify="left", box=None, header_style="bold", pad_edge=False)
    labels.add_column("LABEL")
    labels.add_column("IMAGES", justify="right")
    labels.add_column("")
    labels.add_column("AUTO-LABELED", justify="right")
    labels.add_column("HARD", justify="right")
    for label, c in sorted(report.labels.items(), key=lambda kv: (-kv[1].total, kv[0])):
        bar = ProgressBar(total=biggest or 1, completed=c.total, width=30)
        labels.add_row(label, str(c.total), bar, str(c.auto_labeled), str(c.hard))
    if not report.labels:
        labels.add_row("(no result lines)", "", "", "", "")
    if report.detection:
        labels = _boxes_table(report)

    reasons = Table(
        title="Hard examples by reason", title_justify="left", box=None, header_style="bold", pad_edge=False
    )
    reasons.add_column("REASON", justify="right")
    reasons.add_column("MEANING")
    reasons.add_column("IMAGES", justify="right")
    reasons.add_column("SHARE", justify="right")
    reasons.add_column("")
    for reason, n in _sorted_reasons(report):
        bar = ProgressBar(total=report.hard, completed=n, width=20, complete_style="yellow")
        reasons.add_row(reason, reason_name(reason), str(n), f"{n / report.hard:.0%}", bar)
    if not report.reasons:
        reasons.add_row("", "(no hard examples)", "", "", "")

    hardest = Table(title="Hardest examples", title_justify="left", box=None, header_style="bold", pad_edge=False)
    hardest.add_column("HARD-COEFFICIENT", justify="right")
    hardest.add_column("LABEL")
    hardest.add_column("CONFIDENCE", justify="right")
    hardest.add_column("REASONS")
    hardest.add_column("SOURCE", overflow="fold")
    for e in report.hardest:
        why = ", ".join(f"{r} {reason_name(r)}" for r in e.reasons) or "-"
        hardest.add_row(f"{e.coefficient:.3f}", e.label, _fmt(e.confidence), why, e.source)
    parts: list[Any] = [Text(""), labels, Text(""), reasons]
    if report.hardest:
        parts += [Text(""), hardest]
    console.print(Group(*parts))
