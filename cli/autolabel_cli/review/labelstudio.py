"""Label Studio as the review screen: ``autolabel review push`` and ``review pull`` (its REST API, urllib).

- :func:`push` creates (or finds by title, ``autolabel: <namespace>/<job>``) a project whose labeling config
  is one ``Choices`` (classification) or ``RectangleLabels`` (detection) over the job's labels, and imports
  one task per proposal: ``data.image`` a presigned GET URL of the image (the browser loads it from the
  store directly), ``data.source`` the image's URI, ``data.hard``, and the proposal as a prediction
  (``model_version`` the run's name, ``score`` its confidence; detection: a ``rectanglelabels`` item per
  box in percent of the image with its ``score``, the prediction's ``score`` the lowest). Hard examples
  first. Tasks already in the project (by ``data.source``) are not imported again: pushing twice adds
  nothing.
- :func:`pull` reads the project's submitted (not skipped) annotations; each reviewed task becomes a
  correction (image → chosen label, or image → its rectangles converted to pixels with the result's
  ``original_width``/``original_height``; accepted prediction or changed one alike) and
  :func:`autolabel_cli.review.confirm.confirm` writes the next manifest version with ONLY those images
  labeled (``annotated-by: human``): every unreviewed image is passed as excluded.

The API token (``Authorization: Token …``, Label Studio's legacy token) comes from the caller (the CLI reads
``$LABEL_STUDIO_TOKEN``).
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import quoteattr

from autolabel.manifest import VocBox
from autolabel.storage import Storage, is_s3, split_s3

from .common import Proposal, parse_entries, read_lines, read_proposals
from .confirm import BoxCorrection, ConfirmReport, confirm
from .errors import ReviewError
from .export import job_labels, prediction_result

PRESIGN_SECONDS = 7 * 24 * 3600  # SigV4's longest


def project_title(namespace: str, job: str) -> str:
    return f"autolabel: {namespace}/{job}"


def label_config(labels: list[str], detection: bool = False) -> str:
    """The labeling config: one ``Choices`` (classification) or ``RectangleLabels`` (detection), named
    ``label``, over ``labels``."""
    if detection:
        rects = "".join(f"<Label value={quoteattr(label)}/>" for label in labels)
        return (
            '<View><Image name="image" value="$image"/>'
            f'<RectangleLabels name="label" toName="image">{rects}</RectangleLabels></View>'
        )
    choices = "".join(f"<Choice value={quoteattr(label)}/>" for label in labels)
    return (
        '<View><Image name="image" value="$image"/>'
        f'<Choices name="label" toName="image" choice="single" showInLine="true">{choices}</Choices></View>'
    )


class LabelStudio:
    """A small client of Label Studio's REST API."""

    def __init__(self, url: str, token: str, timeout: float = 60):
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def call(self, method: str, path: str, body: Any = None, **query: Any) -> Any:
        url = f"{self.url}{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Authorization": f"Token {self.token}", "Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")[:500]
            hint = " (is $LABEL_STUDIO_TOKEN a legacy API token of this server?)" if exc.code in (401, 403) else ""
            raise ReviewError(f"Label Studio {method} {path}: HTTP {exc.code}{hint}: {detail}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ReviewError(f"cannot reach Label Studio at {self.url}: {reason}") from None
        return json.loads(raw) if raw else None

    def find_project(self, title: str) -> dict[str, Any] | None:
        page = 1
        while True:
            doc = self.call("GET", "/api/projects", title=title, page=page, page_size=100)
            items = doc.get("results", []) if isinstance(doc, dict) else doc
            for project in items:
                if project.get("title") == title:
                    return dict(project)
            if not isinstance(doc, dict) or not doc.get("next"):
                return None
            page += 1

    def create_project(self, title: str, config: str) -> dict[str, Any]:
        return dict(self.call("POST", "/api/projects", {"title": title, "label_config": config}))

    def export(self, project_id: int) -> list[dict[str, Any]]:
        """Every task of the project with its annotations (Label Studio's JSON export)."""
        path = f"/api/projects/{project_id}/export"
        return list(self.call("GET", path, exportType="JSON", download_all_tasks="true"))

    def import_tasks(self, project_id: int, tasks: list[dict[str, Any]]) -> int:
        if not tasks:
            return 0
        return int(self.call("POST", f"/api/projects/{project_id}/import", tasks).get("task_count", len(tasks)))


def presigner(storage: Storage) -> Callable[[str], str]:
    """``uri → URL`` a browser can GET: a presigned URL for ``s3://`` (the store's endpoint and keys)."""

    def presign(uri: str) -> str:
        if not is_s3(uri):
            return uri
        bucket, key = split_s3(uri)
        params = {"Bucket": bucket, "Key": key}
        return str(storage.client.generate_presigned_url("get_object", Params=params, ExpiresIn=PRESIGN_SECONDS))

    return presign


@dataclass(frozen=True)
class PushReport:
    project_id: int
    project_url: str
    created: bool
    imported: int
    hard: int
    already: int


def push(storage: Storage, ls: LabelStudio, manifest_uri: str, result_uri: str, *, title: str, run: str) -> PushReport:
    entries = parse_entries(read_lines(storage, manifest_uri, "manifest"), manifest_uri)
    proposals = read_proposals(storage, result_uri)
    labels = sorted(job_labels(storage, entries, manifest_uri, proposals))
    detection = bool(proposals) and proposals[0].is_detection
    project = ls.find_project(title)
    created = project is None
    if project is None:
        project = ls.create_project(title, label_config(labels, detection))
    pid = int(project["id"])
    present = {str((t.get("data") or {}).get("source")) for t in ls.export(pid)} if not created else set()
    presign = presigner(storage)
    tasks: list[dict[str, Any]] = []
    for p in sorted(proposals, key=lambda p: not p.hard):  # hard examples first (stable otherwise)
        if p.source in present:
            continue
        prediction: dict[str, Any] = {"model_version": run, "result": prediction_result(storage, p)}
        if p.confidence is not None:
            prediction["score"] = p.confidence
        data = {"image": presign(p.source), "source": p.source, "hard": p.hard}
        tasks.append({"data": data, "predictions": [prediction]})
    imported = ls.import_tasks(pid, tasks)
    hard = sum(1 for t in tasks if t["data"]["hard"])
    return PushReport(pid, f"{ls.url}/projects/{pid}", created, imported, hard, len(proposals) - len(tasks))


def _submitted(task: dict[str, Any]) -> dict[str, Any] | None:
    """The task's latest submitted annotation (skipped ones do not count), or None."""
    submitted = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
    if not submitted:
        return None
    return max(submitted, key=lambda a: (str(a.get("updated_at") or a.get("created_at") or ""), a.get("id", 0)))


def reviewed_labels(tasks: list[dict[str, Any]]) -> dict[str, tuple[str, str | None]]:
    """``{image URI: (chosen label, predicted label or None)}`` of the tasks with a submitted annotation
    (the latest one; skipped ones do not count)."""
    out: dict[str, tuple[str, str | None]] = {}
    for task in tasks:
        source = (task.get("data") or {}).get("source")
        latest = _submitted(task)
        if not source or latest is None:
            continue
        chosen = _choice(latest.get("result") or [])
        if chosen is None:
            continue
        predicted = _choice((latest.get("prediction") or {}).get("result") or [])
        out[str(source)] = (chosen, predicted)
    return out


def reviewed_boxes(tasks: list[dict[str, Any]], sizes: dict[str, tuple[int, int, int]]) -> dict[str, BoxCorrection]:
    """``{image URI: its boxes in pixels}`` of the detection tasks with a submitted annotation (the latest;
    an annotation without rectangles says "no objects"). Percent → pixels with the result's
    ``original_width``/``original_height`` (else ``sizes``), clamped to the image, rounded to 0.01 px; a
    rotated rectangle becomes its bounding box."""
    out: dict[str, BoxCorrection] = {}
    for task in tasks:
        source = (task.get("data") or {}).get("source")
        latest = _submitted(task)
        if not source or latest is None:
            continue
        where = f"Label Studio task {task.get('id')} annotation {latest.get('id')}"
        boxes = []
        for n, item in enumerate(latest.get("result") or [], start=1):
            if item.get("from_name") != "label" or item.get("type") != "rectanglelabels":
                continue
            boxes.append(_pixels(item, sizes.get(str(source)), f"{where} rectangle {n}"))
        out[str(source)] = BoxCorrection(tuple(boxes), where)
    return out


def _pixels(item: dict[str, Any], size: tuple[int, int, int] | None, where: str) -> VocBox:
    value = item.get("value") or {}
    names = value.get("rectanglelabels") or []
    full: Any = (item.get("original_width") or (size[0] if size else None),
                 item.get("original_height") or (size[1] if size else None))  # fmt: skip
    try:
        x, y, w, h = (float(value[k]) for k in ("x", "y", "width", "height"))
        rotation = math.radians(float(value.get("rotation") or 0))
        width, height = float(full[0]), float(full[1])
    except (KeyError, TypeError, ValueError) as exc:
        raise ReviewError(f"{where}: not a rectangle with x, y, width, height and the image size ({exc})") from None
    if len(names) != 1:
        raise ReviewError(f"{where}: expected one label, got {names!r}")
    # Label Studio rotates around the top-left corner (x, y); the box is the rotated rectangle's hull.
    cos, sin = math.cos(rotation), math.sin(rotation)
    xs = [x + dx * cos - dy * sin for dx, dy in ((0, 0), (w, 0), (0, h), (w, h))]
    ys = [y + dx * sin + dy * cos for dx, dy in ((0, 0), (w, 0), (0, h), (w, h))]

    def px(percent: float, full: float) -> float:
        return round(min(max(percent, 0.0), 100.0) * full / 100, 2)

    xmin, xmax, ymin, ymax = px(min(xs), width), px(max(xs), width), px(min(ys), height), px(max(ys), height)
    if xmax <= xmin or ymax <= ymin:
        raise ReviewError(f"{where} ({names[0]}): degenerate box ({xmin:g}, {ymin:g}, {xmax:g}, {ymax:g}) in pixels")
    return VocBox(str(names[0]), xmin, ymin, xmax, ymax)


def _choice(result: list[dict[str, Any]]) -> str | None:
    for item in result:
        if item.get("from_name") == "label" and item.get("type") == "choices":
            choices = (item.get("value") or {}).get("choices") or []
            if choices:
                return str(choices[0])
    return None


def same_boxes(a: tuple[VocBox, ...], b: tuple[VocBox, ...] | None, tolerance: float = 0.5) -> bool:
    """Whether two box lists agree (labels, and coordinates within ``tolerance`` pixels), in any order."""
    if b is None or len(a) != len(b):
        return False
    key = lambda box: (box.name, box.xmin, box.ymin, box.xmax, box.ymax)  # noqa: E731
    return all(
        x.name == y.name and all(abs(u - v) <= tolerance for u, v in zip(key(x)[1:], key(y)[1:], strict=True))
        for x, y in zip(sorted(a, key=key), sorted(b, key=key), strict=True)
    )


@dataclass(frozen=True)
class PullReport:
    project_id: int
    reviewed: int
    accepted: int
    """Reviewed tasks whose label is the proposal's."""
    changed: int
    confirm: ConfirmReport


def pull(
    storage: Storage, ls: LabelStudio, manifest_uri: str, result_uri: str, *, title: str, job_name: str
) -> PullReport:
    project = ls.find_project(title)
    if project is None:
        raise ReviewError(f"Label Studio at {ls.url} has no project {title!r} (run `autolabel review push` first)")
    pid = int(project["id"])
    tasks = ls.export(pid)
    proposed = read_proposals(storage, result_uri)
    entries = parse_entries(read_lines(storage, manifest_uri, "manifest"), manifest_uri)
    corrections: dict[str, str | BoxCorrection]
    if proposed and proposed[0].is_detection:
        by_source = {p.source: p for p in proposed}
        sizes = {p.source: p.size for p in proposed if p.size}
        boxes = reviewed_boxes(tasks, sizes)
        corrections = dict(boxes)
        accepted = sum(1 for s, fix in boxes.items() if _kept(fix.boxes, by_source.get(s)))
    else:
        labels = {p.source: p.label for p in proposed}
        chosen = {source: label for source, (label, _) in reviewed_labels(tasks).items()}
        corrections = dict(chosen)
        accepted = sum(1 for source, label in chosen.items() if labels.get(source) == label)
    unreviewed = {e.source for e in entries if not e.is_labeled and e.source not in corrections}
    report = confirm(
        storage,
        manifest_uri,
        result_uri,
        job_name=job_name,
        include_hard=True,
        labels=None,
        exclude=unreviewed,
        corrections=corrections,
    )
    return PullReport(pid, len(corrections), accepted, len(corrections) - accepted, report)


def _kept(boxes: tuple[VocBox, ...], p: Proposal | None) -> bool:
    return p is not None and same_boxes(boxes, p.boxes)
