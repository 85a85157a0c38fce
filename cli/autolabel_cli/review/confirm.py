"""Confirming a run's proposals: ModelArts' "OK" on the "To Be Confirmed" page.

:func:`confirm` writes a NEW manifest version next to the original (``<name>.v<N>.manifest``, N one more
than the highest existing version); the original is never modified. In the new version:

- every accepted proposal turns its unlabeled line into a labeled one; the annotation carries the
  provenance: ``annotated-by`` (the proposal's, e.g. ``autolabel/active-learning``), ``job-name`` and
  ``confidence``. Accepted by default: the proposals not flagged hard; ``min_confidence`` and ``labels``
  narrow that, ``include_hard`` widens it;
- ``exclude`` leaves the listed images unlabeled;
- ``corrections`` (image → label, or image → boxes for detection) label images by a person's decision
  (``annotated-by: human``, plus ``job-name`` and the proposal it replaced, if any), whatever the proposal
  or its flags;
- every other line is kept byte for byte (labeled lines untouched; unlabeled ones not confirmed stay so).

Object detection results (the run's lines point at VOC files): an accepted or corrected image's line
points at a NEW VOC file written beside the new version, ``<name>.v<N>.annotations/<image stem>.xml``
(``annotation-loc`` relative to the manifest's folder), with the boxes, their ``<confidence>`` (accepted
proposals) and ``<annotated-by>``. The filters are per image: ``min_confidence`` asks it of every box (an
image without boxes has no confidence), ``labels`` asks every box to be of those labels (and at least one
box). A correction replaces the proposal's boxes (an empty list: "nothing to label here"). The VOC files
are written before the manifest, never over an existing file of different content.

Images are matched on their resolved URI, the way :mod:`autolabel.manifest` resolves ``source`` (results
carry absolute URIs where a manifest may use relative paths). When the new content equals the latest
version's (the original counting as version 0), nothing is written and the report names that version:
confirming twice changes nothing.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import posixpath
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from autolabel.manifest import CLASSIFICATION_TYPE, DETECTION_TYPE, VOC_FORMAT, VocBox, VocError, parse_voc, voc_xml
from autolabel.storage import Storage, is_s3, local_path

from .common import (
    Proposal,
    basename,
    dataset_labels,
    detection_labels,
    image_size,
    is_detection,
    parse_entries,
    read_lines,
    read_proposals,
    resolve_source,
    unique_stems,
)
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


@dataclass(frozen=True)
class BoxCorrection:
    """A person's boxes for one image of a detection run (they replace the proposal's)."""

    boxes: tuple[VocBox, ...]
    where: str
    """Where they come from, for error messages: ``fixes.jsonl line 3``, ``Label Studio task 12``."""


Corrections = Mapping[str, str | BoxCorrection]
"""image (as in the manifest, or its URI) → label (classification) or boxes (detection)."""


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


def load_corrections(text: str, source: str) -> dict[str, str | BoxCorrection]:
    """``--corrections FILE``: for classification CSV ``image,label`` (an optional header ``image,label``)
    or a JSON object ``{image: label}``; for detection JSON lines ``{"source": image, "boxes": [[label,
    xmin, ymin, xmax, ymax], ...]}`` (pixels; ``{"source": image, "voc": "file.xml"}`` takes the boxes of a
    VOC file, relative to the corrections file's folder). Errors name the file and the line."""
    text = text.removeprefix("\ufeff")
    content = _content_lines(text)
    if content and _is_jsonl_line(content[0][1]):
        return dict(_jsonl_corrections(content, source))
    if text.lstrip().startswith("{"):
        return dict(_json_corrections(text, source))
    corrections: dict[str, str | BoxCorrection] = {}
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


def _is_jsonl_line(line: str) -> bool:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError:
        return False
    return isinstance(obj, dict) and "source" in obj and ("boxes" in obj or "voc" in obj)


def _jsonl_corrections(content: list[tuple[int, str]], source: str) -> dict[str, BoxCorrection]:
    corrections: dict[str, BoxCorrection] = {}
    first_line: dict[str, int] = {}
    for line_no, line in content:
        where = f"{source} line {line_no}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ReviewError(f"{where}: invalid JSON: {exc.msg} at column {exc.colno}") from exc
        if not isinstance(obj, dict) or not isinstance(obj.get("source"), str) or not obj["source"].strip():
            raise ReviewError(f'{where}: expected {{"source": image, "boxes": [[label, xmin, ymin, xmax, ymax], ...]}}')
        image = obj["source"].strip()
        if ("boxes" in obj) == ("voc" in obj):
            raise ReviewError(f'{where}: image {image!r}: give either "boxes" or "voc"')
        if "voc" in obj:
            boxes = _voc_file_boxes(obj["voc"], source, where)
        else:
            if not isinstance(obj["boxes"], list):
                raise ReviewError(f'{where}: image {image!r}: "boxes" must be a list, got {obj["boxes"]!r}')
            boxes = tuple(_box(raw, f"{where}: image {image!r}: box {i}") for i, raw in enumerate(obj["boxes"], 1))
        if image in corrections:
            raise ReviewError(f"{where}: image {image!r} corrected already on line {first_line[image]}")
        corrections[image] = BoxCorrection(boxes, where)
        first_line[image] = line_no
    return corrections


def _voc_file_boxes(name: Any, source: str, where: str) -> tuple[VocBox, ...]:
    if not isinstance(name, str) or not name.strip():
        raise ReviewError(f'{where}: "voc" must name a VOC XML file, got {name!r}')
    path = os.path.join(os.path.dirname(source), name.strip())
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise ReviewError(f"{where}: VOC file {path}: cannot read: {exc.strerror or exc}") from exc
    try:
        return tuple(VocBox(b.name, b.xmin, b.ymin, b.xmax, b.ymax) for b in parse_voc(data, path))
    except VocError as exc:
        raise ReviewError(f"{where}: {exc}") from exc


def _box(raw: Any, where: str) -> VocBox:
    """``[label, xmin, ymin, xmax, ymax]`` (or ``{"label", "xmin", …}``) as a VocBox; a degenerate box,
    a negative coordinate or a missing label is an error naming ``where``."""
    if isinstance(raw, dict):
        raw = [raw.get("label", raw.get("name")), *(raw.get(k) for k in ("xmin", "ymin", "xmax", "ymax"))]
    if not isinstance(raw, list) or len(raw) != 5:
        raise ReviewError(f"{where}: expected [label, xmin, ymin, xmax, ymax], got {raw!r}")
    label, *coords = raw
    if not isinstance(label, str) or not label.strip():
        raise ReviewError(f"{where}: the label must be a non-empty string, got {label!r}")
    if not all(isinstance(c, int | float) and not isinstance(c, bool) and math.isfinite(c) for c in coords):
        raise ReviewError(f"{where} ({label}): coordinates must be numbers, got {coords!r}")
    xmin, ymin, xmax, ymax = (float(c) for c in coords)
    if xmax <= xmin or ymax <= ymin:
        raise ReviewError(f"{where} ({label}): degenerate box ({xmin:g}, {ymin:g}, {xmax:g}, {ymax:g}): "
                          "xmax must exceed xmin and ymax ymin")  # fmt: skip
    if xmin < 0 or ymin < 0:
        raise ReviewError(f"{where} ({label}): negative coordinate in ({xmin:g}, {ymin:g}, {xmax:g}, {ymax:g})")
    return VocBox(label.strip(), xmin, ymin, xmax, ymax)


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


def _where(image: str, fix: str | BoxCorrection) -> str:
    return f"{fix.where}: image {image!r}" if isinstance(fix, BoxCorrection) else f"image {image!r}"


@dataclass(frozen=True)
class _Accepted:
    """One image to label in the new version."""

    annotation: dict[str, Any]
    """Classification: the whole annotation. Detection: without ``annotation-loc`` (it names the version)."""
    corrected: bool
    boxes: tuple[VocBox, ...] | None = None
    size: tuple[int, int, int] | None = None


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
    corrections: Corrections | None = None,
) -> ConfirmReport:
    """Write the next version of ``manifest_uri`` with the accepted proposals of ``result_manifest_uri``
    labeled (see the module's docstring). Raises :class:`ReviewError` before writing anything."""
    if min_confidence is not None and not 0.0 <= min_confidence <= 1.0:
        raise ReviewError(f"min_confidence {min_confidence} is outside 0..1")
    lines = read_lines(storage, manifest_uri, "manifest")
    entries = parse_entries(lines, manifest_uri)
    proposals = read_proposals(storage, result_manifest_uri)
    detection = is_detection(entries, proposals)
    all_sources = {e.source for e in entries}
    unlabeled = {e.source for e in entries if not e.is_labeled}
    for p in proposals:
        if p.source not in all_sources:
            raise ReviewError(
                f"{result_manifest_uri} line {p.line_no}: image {p.source} is not in {manifest_uri} "
                "(results of another dataset?)"
            )
    known_cache: list[set[str]] = []

    def known() -> set[str]:  # detection: read the labeled images' VOC files only when needed
        if not known_cache:
            found = dataset_labels(entries)
            if detection:
                found |= detection_labels(storage, [e for e in entries if e.is_labeled], manifest_uri)
                found |= {label for p in proposals for label in p.labels}
            known_cache.append(found)
        return known_cache[0]

    for label in sorted(labels or ()):
        if label not in known():
            raise ReviewError(
                f"label {label!r} is not a label of {manifest_uri} (labels: {', '.join(sorted(known()))})"
            )

    excluded = _normalise_keys(manifest_uri, exclude, "excluded")
    for uri, image in excluded.items():
        if uri not in all_sources:
            raise ReviewError(f"excluded image {image!r} is not in {manifest_uri}")
    fixes: dict[str, str | BoxCorrection] = {}
    for image, fix in (corrections or {}).items():
        where = _where(image, fix)
        uri = resolve_source(manifest_uri, image, f"corrected {where}")
        if uri not in unlabeled:
            state = "is already labeled in" if uri in all_sources else "is not in"
            raise ReviewError(f"corrected {where} {state} {manifest_uri}")
        if isinstance(fix, BoxCorrection) != detection:
            kind = "object detection (boxes)" if detection else "image classification (a label)"
            raise ReviewError(f"correction of {where}: the results are {kind}; see docs/cli.md for the format")
        for label in [fix] if isinstance(fix, str) else [b.name for b in fix.boxes]:
            if label not in known():
                raise ReviewError(f"correction of {where}: label {label!r} is not a label of {manifest_uri}")
        if uri in excluded:
            raise ReviewError(f"image {image!r} is both excluded and corrected")
        fixes[uri] = fix

    by_source = {p.source: p for p in proposals}
    accepted: dict[str, _Accepted] = {}
    for uri in sorted(unlabeled):
        if uri in excluded:
            continue
        proposal = by_source.get(uri)
        fixed = fixes.get(uri)
        if fixed is not None:
            accepted[uri] = _corrected(storage, uri, fixed, proposal, job_name)
        elif proposal is not None and _selected(proposal, include_hard, min_confidence, labels):
            accepted[uri] = _confirmed(proposal, job_name)

    confirmed = sum(1 for a in accepted.values() if not a.corrected)
    corrected = len(accepted) - confirmed
    left = len(unlabeled) - len(accepted)
    base, versions = _versions(storage, manifest_uri)
    latest_uri = versions[-1][1] if versions else manifest_uri
    if not versions and not accepted:
        return ConfirmReport(latest_uri, confirmed, corrected, left, written=False)
    if versions:
        content, files = _render(storage, entries, lines, accepted, base, versions[-1][0])
        if storage.read_bytes(latest_uri) == content and all(
            storage.exists(uri) and storage.read_bytes(uri) == data for uri, data in files.items()
        ):
            return ConfirmReport(latest_uri, confirmed, corrected, left, written=False)
    new_n = versions[-1][0] + 1 if versions else 1
    content, files = _render(storage, entries, lines, accepted, base, new_n)
    fresh = {}
    for uri, data in files.items():  # never over another file (left by a confirm that did not finish?)
        if storage.exists(uri):
            if storage.read_bytes(uri) != data:
                raise ReviewError(f"{uri} exists with other content; it is not overwritten (remove it to go on)")
        else:
            fresh[uri] = data
    for uri, data in fresh.items():
        storage.write_bytes(uri, data)
    new_uri = f"{base}.v{new_n}.manifest"
    storage.write_bytes(new_uri, content)  # last: a version's manifest means its VOC files are complete
    return ConfirmReport(new_uri, confirmed, corrected, left)


def _selected(p: Proposal, include_hard: bool, min_confidence: float | None, labels: set[str] | None) -> bool:
    if p.hard and not include_hard:
        return False
    if min_confidence is not None and (p.confidence is None or p.confidence < min_confidence):
        return False
    return labels is None or (bool(p.labels) and set(p.labels) <= labels)


def _confirmed(p: Proposal, job_name: str) -> _Accepted:
    by = p.annotated_by or "autolabel"
    if p.boxes is not None:
        ann: dict[str, Any] = {"type": DETECTION_TYPE, "annotation-format": VOC_FORMAT, "annotated-by": by}
        ann["job-name"] = job_name
        return _Accepted(ann, corrected=False, boxes=p.boxes, size=p.size)
    ann = {"type": CLASSIFICATION_TYPE, "name": p.label, "annotated-by": by, "job-name": job_name}
    if p.confidence is not None:
        ann["confidence"] = p.confidence
    return _Accepted(ann, corrected=False)


def _corrected(storage: Storage, uri: str, fix: str | BoxCorrection, p: Proposal | None, job_name: str) -> _Accepted:
    if isinstance(fix, str):
        ann: dict[str, Any] = {"type": CLASSIFICATION_TYPE, "name": fix, "annotated-by": HUMAN, "job-name": job_name}
        if p is not None:
            ann["proposed"] = {"name": p.label, "confidence": p.confidence}
        return _Accepted(ann, corrected=True)
    size = (p.size if p is not None else None) or image_size(storage, uri)
    for box in fix.boxes:
        if box.xmax > size[0] or box.ymax > size[1]:
            raise ReviewError(
                f"{fix.where}: box {box.name} ({box.xmin:g}, {box.ymin:g}, {box.xmax:g}, {box.ymax:g}) "
                f"reaches outside the image {uri} ({size[0]}x{size[1]})"
            )
    ann = {"type": DETECTION_TYPE, "annotation-format": VOC_FORMAT, "annotated-by": HUMAN, "job-name": job_name}
    if p is not None and p.annotation_loc:
        ann["proposed"] = {"annotation-loc": p.annotation_loc, "boxes": len(p.boxes or ())}
    return _Accepted(ann, corrected=True, boxes=fix.boxes, size=size)


def _render(
    storage: Storage,
    entries: Sequence[Any],
    lines: list[str],
    accepted: dict[str, _Accepted],
    base: str,
    n: int,
) -> tuple[bytes, dict[str, bytes]]:
    """The content of version ``n`` and its VOC files ``{URI: bytes}``."""
    entry_by_line = {e.line_no: e for e in entries}
    in_order = [e.source for e in entries if e.source in accepted and not e.is_labeled]
    detected = [uri for uri in in_order if accepted[uri].boxes is not None]
    folder_name = f"{basename(base)}.v{n}.annotations"
    locs = {uri: f"{folder_name}/{stem}.xml" for uri, stem in zip(detected, unique_stems(detected), strict=True)}
    files: dict[str, bytes] = {}
    out: list[str] = []
    for line_no, text in enumerate(lines, start=1):
        entry = entry_by_line.get(line_no)
        if entry is None or entry.is_labeled or entry.source not in accepted:
            out.append(text)
            continue
        item = accepted[entry.source]
        ann = dict(item.annotation)
        if item.boxes is not None:
            rel = locs[entry.source]
            by = str(ann.get("annotated-by") or "")
            assert item.size is not None
            files[f"{base[: len(base) - len(basename(base))]}{rel}"] = voc_xml(
                basename(entry.source), item.size, item.boxes, by or None
            )
            ann = {"type": ann.pop("type"), "annotation-loc": rel, **ann}
        obj = dict(entry.raw)
        obj["annotation"] = [ann]
        out.append(json.dumps(obj, ensure_ascii=False))
    return ("\n".join(out) + "\n").encode("utf-8"), files
