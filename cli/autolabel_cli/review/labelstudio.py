"""Label Studio as the review screen: ``autolabel review push`` and ``review pull`` (its REST API, urllib).

- :func:`push` creates (or finds by title, ``autolabel: <namespace>/<job>``) a project whose labeling config
  is one ``Choices`` over the dataset's labels, and imports one task per proposal: ``data.image`` a
  presigned GET URL of the image (the browser loads it from the store directly), ``data.source`` the image's
  URI, ``data.hard``, and the proposal as a prediction (``model_version`` the run's name, ``score`` its
  confidence). Hard examples first. Tasks already in the project (by ``data.source``) are not imported
  again: pushing twice adds nothing.
- :func:`pull` reads the project's submitted (not skipped) annotations; each reviewed task becomes a
  correction (image → chosen label, accepted prediction or changed label alike) and
  :func:`autolabel_cli.review.confirm.confirm` writes the next manifest version with ONLY those images
  labeled (``annotated-by: human``): every unreviewed image is passed as excluded.

The API token (``Authorization: Token …``, Label Studio's legacy token) comes from the caller (the CLI reads
``$LABEL_STUDIO_TOKEN``).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import quoteattr

from autolabel.storage import Storage, is_s3, split_s3

from .common import dataset_labels, parse_entries, read_lines, read_proposals
from .confirm import ConfirmReport, confirm
from .errors import ReviewError

PRESIGN_SECONDS = 7 * 24 * 3600  # SigV4's longest


def project_title(namespace: str, job: str) -> str:
    return f"autolabel: {namespace}/{job}"


def label_config(labels: list[str]) -> str:
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
    labels = sorted(dataset_labels(entries) | {p.label for p in proposals})
    project = ls.find_project(title)
    created = project is None
    if project is None:
        project = ls.create_project(title, label_config(labels))
    pid = int(project["id"])
    present = {str((t.get("data") or {}).get("source")) for t in ls.export(pid)} if not created else set()
    presign = presigner(storage)
    tasks: list[dict[str, Any]] = []
    for p in sorted(proposals, key=lambda p: not p.hard):  # hard examples first (stable otherwise)
        if p.source in present:
            continue
        result = {"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [p.label]}}
        prediction: dict[str, Any] = {"model_version": run, "result": [result]}
        if p.confidence is not None:
            prediction["score"] = p.confidence
        data = {"image": presign(p.source), "source": p.source, "hard": p.hard}
        tasks.append({"data": data, "predictions": [prediction]})
    imported = ls.import_tasks(pid, tasks)
    hard = sum(1 for t in tasks if t["data"]["hard"])
    return PushReport(pid, f"{ls.url}/projects/{pid}", created, imported, hard, len(proposals) - len(tasks))


def reviewed_labels(tasks: list[dict[str, Any]]) -> dict[str, tuple[str, str | None]]:
    """``{image URI: (chosen label, predicted label or None)}`` of the tasks with a submitted annotation
    (the latest one; skipped ones do not count)."""
    out: dict[str, tuple[str, str | None]] = {}
    for task in tasks:
        source = (task.get("data") or {}).get("source")
        submitted = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
        if not source or not submitted:
            continue
        latest = max(submitted, key=lambda a: (str(a.get("updated_at") or a.get("created_at") or ""), a.get("id", 0)))
        chosen = _choice(latest.get("result") or [])
        if chosen is None:
            continue
        predicted = _choice((latest.get("prediction") or {}).get("result") or [])
        out[str(source)] = (chosen, predicted)
    return out


def _choice(result: list[dict[str, Any]]) -> str | None:
    for item in result:
        if item.get("from_name") == "label" and item.get("type") == "choices":
            choices = (item.get("value") or {}).get("choices") or []
            if choices:
                return str(choices[0])
    return None


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
    reviewed = reviewed_labels(ls.export(pid))
    proposals = {p.source: p.label for p in read_proposals(storage, result_uri)}
    entries = parse_entries(read_lines(storage, manifest_uri, "manifest"), manifest_uri)
    unreviewed = {e.source for e in entries if not e.is_labeled and e.source not in reviewed}
    corrections = {source: label for source, (label, _) in reviewed.items()}
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
    accepted = sum(1 for source, label in corrections.items() if proposals.get(source) == label)
    return PullReport(pid, len(reviewed), accepted, len(reviewed) - accepted, report)
