"""Confirming a run's proposals: ModelArts' "OK" on the "To Be Confirmed" page.

:func:`confirm` writes a NEW manifest version next to the original (``<name>.v<N>.manifest``, N one more
than the highest existing version); the original is never modified. In the new version:

- every accepted proposal turns its unlabeled line into a labeled one; the annotation carries the
  provenance: ``annotated-by`` (the proposal's, e.g. ``autolabel/active-learning``), ``job-name`` and
  ``confidence``. Accepted by default: the proposals not flagged hard; ``min_confidence`` and ``labels``
  narrow that, ``include_hard`` widens it;
- ``exclude`` leaves the listed images unlabeled;
- ``corrections`` (image → label) label images by a person's decision (``annotated-by: human``, plus
  ``job-name`` and the proposal it replaced, if any), whatever the proposal or its flags;
- every other line is kept byte for byte (labeled lines untouched; unlabeled ones not confirmed stay so).

Images are matched on their resolved URI, the way :mod:`autolabel.manifest` resolves ``source`` (results
carry absolute URIs where a manifest may use relative paths). When the new content equals the latest
version's (the original counting as version 0), nothing is written and the report names that version:
confirming twice changes nothing.
"""

from __future__ import annotations

import csv
import io
import json
import posixpath
import re
from dataclasses import dataclass
from typing import Any

from autolabel.manifest import CLASSIFICATION_TYPE
from autolabel.storage import Storage, is_s3, local_path

from .common import dataset_labels, parse_entries, read_lines, read_proposals, resolve_source
from .errors import ReviewError

HUMAN = "human"
_VERSION_RE = re.compile(r"^(?P<base>.*)\.v(?P<n>\d+)$")


@dataclass(frozen=True)
class ConfirmReport:
    uri: str
    """The manifest version that holds the result (the one written, or the identical latest one)."""
    confirmed: int
    """Images labeled from accepted proposals."""
    corrected: int
    """Images labeled from corrections."""
    left: int
    """Images still unlabeled in that version."""
    written: bool = True
    """False when nothing new was written: the latest version already holds this content (or there was
    nothing to confirm and no version yet, and ``uri`` is the original manifest)."""


# ------------------------------------------------------------------------------------------ inputs


def _content_lines(text: str) -> list[tuple[int, str]]:
    out = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            out.append((line_no, stripped))
    return out


def load_image_list(text: str, source: str) -> set[str]:
    """``--exclude FILE``: one image per line (as written in the manifest, or its URI); blank lines and
    ``#`` comments are skipped."""
    images: set[str] = set()
    for line_no, line in _content_lines(text.removeprefix("\ufeff")):
        if "\t" in line:
            raise ReviewError(f"{source} line {line_no}: one image per line, got a tab in {line!r}")
        images.add(line)
    return images


def load_corrections(text: str, source: str) -> dict[str, str]:
    """``--corrections FILE``: CSV ``image,label`` (an optional header ``image,label``) or a JSON object
    ``{image: label}``. Errors name the file and the line."""
    text = text.removeprefix("\ufeff")
    if text.lstrip().startswith("{"):
        return _json_corrections(text, source)
    corrections: dict[str, str] = {}
    first_line: dict[str, int] = {}
    for line_no, line in _content_lines(text):
        row = next(csv.reader(io.StringIO(line)))
        fields = [f.strip() for f in row]
        if not first_line and [f.lower() for f in fields] == ["image", "label"]:
            continue  # the header
        if len(fields) != 2 or not all(fields):
            raise ReviewError(f"{source} line {line_no}: expected `image,label`, got {line!r}")
        image, label = fields
        if image in corrections and corrections[image] != label:
            raise ReviewError(
                f"{source} line {line_no}: image {image} corrected to {label!r} here "
                f"but to {corrections[image]!r} on line {first_line[image]}"
            )
        corrections[image] = label
        first_line.setdefault(image, line_no)
    return corrections


def _json_corrections(text: str, source: str) -> dict[str, str]:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ReviewError(f"{source} line {exc.lineno}: invalid JSON: {exc.msg} at column {exc.colno}") from exc
    if not isinstance(obj, dict):
        raise ReviewError(f"{source}: expected a JSON object {{image: label}}")
    corrections: dict[str, str] = {}
    for image, label in obj.items():
        if not isinstance(label, str) or not label.strip() or not image.strip():
            raise ReviewError(f"{source}: image {image!r}: the label must be a non-empty string, got {label!r}")
        corrections[image.strip()] = label.strip()
    return corrections


# ------------------------------------------------------------------------------------------ versions


def _split_manifest_uri(manifest_uri: str) -> tuple[str, str]:
    """``(folder with trailing separator, base name)``: ``s3://b/d/x.v2.manifest`` → ``("s3://b/d/", "x")``."""
    if is_s3(manifest_uri):
        folder, name = manifest_uri.rsplit("/", 1)
        folder += "/"
    else:
        path = local_path(manifest_uri)
        head, name = posixpath.split(path)
        folder = head + "/" if head else ""
    base = name.removesuffix(".manifest")
    match = _VERSION_RE.match(base)
    if match:
        base = match.group("base")
    return folder, base


def _versions(storage: Storage, manifest_uri: str) -> tuple[str, list[tuple[int, str]]]:
    """``(base URI without extension, [(N, URI)] sorted)`` of the existing versions."""
    folder, base = _split_manifest_uri(manifest_uri)
    pattern = re.compile(rf"^{re.escape(base)}\.v(\d+)\.manifest$")
    found = []
    for uri in storage.list(folder + base + ".v"):
        rest = uri[len(folder) :] if uri.startswith(folder) else uri.rsplit("/", 1)[-1]
        match = pattern.match(rest)
        if match:
            found.append((int(match.group(1)), uri))
    return folder + base, sorted(found)


# ------------------------------------------------------------------------------------------ confirm


def _normalise_keys(manifest_uri: str, images: Any, what: str) -> dict[str, str]:
    """``{resolved URI: image as given}``."""
    return {resolve_source(manifest_uri, image, f"{what} image {image!r}"): image for image in images}


def confirm(
    storage: Storage,
    manifest_uri: str,
    result_manifest_uri: str,
    *,
    job_name: str,
    min_confidence: float | None = None,
    include_hard: bool = False,
    labels: set[str] | None = None,
    exclude: frozenset[str] | set[str] = frozenset(),
    corrections: dict[str, str] | None = None,
) -> ConfirmReport:
    """Write the next version of ``manifest_uri`` with the accepted proposals of ``result_manifest_uri``
    labeled (see the module's docstring). Raises :class:`ReviewError` before writing anything."""
    if min_confidence is not None and not 0.0 <= min_confidence <= 1.0:
        raise ReviewError(f"min_confidence {min_confidence} is outside 0..1")
    lines = read_lines(storage, manifest_uri, "manifest")
    entries = parse_entries(lines, manifest_uri)
    proposals = read_proposals(storage, result_manifest_uri)
    known = dataset_labels(entries)
    all_sources = {e.source for e in entries}
    unlabeled = {e.source for e in entries if not e.is_labeled}
    for label in sorted(labels or ()):
        if label not in known:
            raise ReviewError(f"label {label!r} is not a label of {manifest_uri} (labels: {', '.join(sorted(known))})")
    for p in proposals:
        if p.source not in all_sources:
            raise ReviewError(
                f"{result_manifest_uri} line {p.line_no}: image {p.source} is not in {manifest_uri} "
                "(results of another dataset?)"
            )

    excluded = _normalise_keys(manifest_uri, exclude, "excluded")
    for uri, image in excluded.items():
        if uri not in all_sources:
            raise ReviewError(f"excluded image {image!r} is not in {manifest_uri}")
    fixes: dict[str, str] = {}
    for image, label in (corrections or {}).items():
        uri = resolve_source(manifest_uri, image, f"corrected image {image!r}")
        if uri not in unlabeled:
            state = "is already labeled in" if uri in all_sources else "is not in"
            raise ReviewError(f"corrected image {image!r} {state} {manifest_uri}")
        if label not in known:
            raise ReviewError(f"correction of image {image!r}: label {label!r} is not a label of {manifest_uri}")
        if uri in excluded:
            raise ReviewError(f"image {image!r} is both excluded and corrected")
        fixes[uri] = label

    by_source = {p.source: p for p in proposals}
    accepted: dict[str, dict[str, Any]] = {}
    for uri in sorted(unlabeled):
        if uri in excluded:
            continue
        proposal = by_source.get(uri)
        if uri in fixes:
            ann: dict[str, Any] = {"type": CLASSIFICATION_TYPE, "name": fixes[uri], "annotated-by": HUMAN}
            ann["job-name"] = job_name
            if proposal is not None:
                ann["proposed"] = {"name": proposal.label, "confidence": proposal.confidence}
            accepted[uri] = ann
            continue
        if proposal is None or (proposal.hard and not include_hard):
            continue
        if min_confidence is not None and (proposal.confidence is None or proposal.confidence < min_confidence):
            continue
        if labels is not None and proposal.label not in labels:
            continue
        ann = {"type": CLASSIFICATION_TYPE, "name": proposal.label}
        ann["annotated-by"] = proposal.annotated_by or "autolabel"
        ann["job-name"] = job_name
        if proposal.confidence is not None:
            ann["confidence"] = proposal.confidence
        accepted[uri] = ann

    entry_by_line = {e.line_no: e for e in entries}
    out: list[str] = []
    for line_no, text in enumerate(lines, start=1):
        entry = entry_by_line.get(line_no)
        if entry is None or entry.is_labeled or entry.source not in accepted:
            out.append(text)
            continue
        obj = dict(entry.raw)
        obj["annotation"] = [accepted[entry.source]]
        out.append(json.dumps(obj, ensure_ascii=False))
    content = ("\n".join(out) + "\n").encode("utf-8")

    confirmed = sum(1 for uri in accepted if uri not in fixes)
    corrected = len(accepted) - confirmed
    left = len(unlabeled) - len(accepted)
    base, versions = _versions(storage, manifest_uri)
    latest_uri = versions[-1][1] if versions else manifest_uri
    if storage.read_bytes(latest_uri) == content or (not versions and not accepted):
        return ConfirmReport(latest_uri, confirmed, corrected, left, written=False)
    new_uri = f"{base}.v{versions[-1][0] + 1 if versions else 1}.manifest"
    storage.write_bytes(new_uri, content)
    return ConfirmReport(new_uri, confirmed, corrected, left)
