"""What confirm, export and import share: reading manifests and results (classification proposals, or
detection proposals with their boxes read from the run's VOC files), image sizes, VOC XML, file stems."""

from __future__ import annotations

import io
import json
import os
import posixpath
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from autolabel.manifest import (
    CLASSIFICATION_TYPE,
    DETECTION_TYPE,
    ManifestEntry,
    ManifestError,
    VocBox,
    VocError,
    parse_manifest,
    parse_voc,
)
from autolabel.storage import ObjectNotFound, Storage, StorageError, is_s3, local_path

from .errors import ReviewError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def read_lines(storage: Storage, uri: str, what: str) -> list[str]:
    """The text lines of ``uri``; a missing object is a :class:`ReviewError` naming it."""
    try:
        return list(storage.iter_lines(uri))
    except ObjectNotFound as exc:
        raise ReviewError(f"{what} {uri}: no such file or object") from exc


def parse_entries(lines: Iterable[str], uri: str) -> list[ManifestEntry]:
    try:
        return list(parse_manifest(lines, uri))
    except ManifestError as exc:
        raise ReviewError(str(exc)) from exc


def resolve_source(manifest_uri: str, source: str, where: str) -> str:
    """``source`` resolved exactly as :mod:`autolabel.manifest` resolves a line's ``source``."""
    line = json.dumps({"source": source.strip()})
    try:
        return next(iter(parse_manifest([line], manifest_uri))).source
    except ManifestError as exc:
        raise ReviewError(f"{where}: {exc.reason}") from exc


@dataclass(frozen=True)
class Proposal:
    """One result line of a run: the proposed class of an unlabeled image, or its proposed boxes."""

    line_no: int
    source: str  # resolved (the worker writes absolute URIs)
    label: str
    """Classification: the proposed class. Detection: ``""`` (see :attr:`boxes`)."""
    confidence: float | None
    """Classification: the class's confidence. Detection: the lowest box confidence (None without boxes)."""
    annotated_by: str | None
    hard: bool
    boxes: tuple[VocBox, ...] | None = None
    """Detection: the boxes of the run's VOC file (None for a classification proposal)."""
    size: tuple[int, int, int] | None = None
    """Detection: ``(width, height, depth)`` from the VOC file's ``<size>``, when it has one."""
    annotation_loc: str | None = None
    """Detection: the run's VOC file."""

    @property
    def is_detection(self) -> bool:
        return self.boxes is not None

    @property
    def labels(self) -> list[str]:
        """The proposed labels: the class, or the boxes' labels (sorted, without repeats)."""
        if self.boxes is None:
            return [self.label]
        return sorted({box.name for box in self.boxes})


def voc_size(xml_bytes: bytes) -> tuple[int, int, int] | None:
    """``(width, height, depth)`` of a VOC file's ``<size>``; None when absent or not positive numbers."""
    try:
        root = ET.fromstring(xml_bytes)
        width = int(float(root.findtext("size/width") or 0))
        height = int(float(root.findtext("size/height") or 0))
        depth = int(float(root.findtext("size/depth") or 3))
    except (ET.ParseError, ValueError):
        return None
    return (width, height, depth or 3) if width > 0 and height > 0 else None


def read_voc_files(storage: Storage, uris: Sequence[str], where: Sequence[str]) -> list[tuple[list[VocBox], bytes]]:
    """The boxes and bytes of each VOC file (read concurrently); a missing or malformed one is a
    :class:`ReviewError` naming it and ``where`` it was named (e.g. ``result.manifest line 3``)."""
    out: list[tuple[list[VocBox], bytes]] = []
    for (uri, data), named_at in zip(storage.fetch_many(uris, max_workers=8), where, strict=True):
        if isinstance(data, StorageError):
            missing = "no such file or object" if isinstance(data, ObjectNotFound) else str(data)
            raise ReviewError(f"{named_at}: VOC file {uri}: {missing}")
        try:
            out.append((parse_voc(data, uri), data))
        except VocError as exc:
            raise ReviewError(f"{named_at}: {exc}") from exc
    return out


def read_proposals(storage: Storage, result_uri: str) -> list[Proposal]:
    """The proposals of ``result.manifest``, one per image (a repeat is an error): all classification or
    all detection (the boxes read from each line's ``annotation-loc`` VOC file)."""
    entries = parse_entries(read_lines(storage, result_uri, "result manifest"), result_uri)
    proposals: list[Proposal] = []
    detections: list[tuple[int, str]] = []  # (index in proposals, VOC URI)
    seen: dict[str, int] = {}
    for entry in entries:
        where = f"{result_uri} line {entry.line_no}"
        ann = next((a for a in entry.annotations if a.type in (CLASSIFICATION_TYPE, DETECTION_TYPE)), None)
        if ann is None:
            raise ReviewError(f"{where}: no classification or detection annotation")
        if entry.source in seen:
            raise ReviewError(f"{where}: image {entry.source} already proposed on line {seen[entry.source]}")
        seen[entry.source] = entry.line_no
        hard = entry.raw.get("hard", False)
        if not isinstance(hard, bool):
            raise ReviewError(f'{where}: "hard" must be true or false, got {hard!r}')
        if proposals and (ann.type == DETECTION_TYPE) != bool(detections):
            raise ReviewError(f"{where}: a {ann.type} result among results of the other kind (one task per run)")
        if ann.type == DETECTION_TYPE and ann.annotation_loc:
            detections.append((len(proposals), ann.annotation_loc))
            proposals.append(Proposal(entry.line_no, entry.source, "", None, ann.annotated_by, hard, (), None,
                                      ann.annotation_loc))  # fmt: skip
        else:
            proposals.append(
                Proposal(entry.line_no, entry.source, ann.name or "", ann.confidence, ann.annotated_by, hard)
            )
    if detections:
        named_at = [f"{result_uri} line {proposals[i].line_no}" for i, _ in detections]
        for (i, _), (boxes, data) in zip(detections, read_voc_files(storage, [u for _, u in detections], named_at),
                                         strict=True):  # fmt: skip
            confidences = [b.confidence for b in boxes if b.confidence is not None]
            p = proposals[i]
            proposals[i] = Proposal(p.line_no, p.source, "", min(confidences) if confidences else None,
                                    p.annotated_by, p.hard, tuple(boxes), voc_size(data), p.annotation_loc)  # fmt: skip
    return proposals


def is_detection(entries: Iterable[ManifestEntry], proposals: Sequence[Proposal]) -> bool:
    """Whether a run is object detection: its proposals are, or (without any) the dataset's labels are."""
    if proposals:
        return proposals[0].is_detection
    return any(a.type == DETECTION_TYPE for e in entries for a in e.annotations)


def detection_labels(storage: Storage, entries: Sequence[ManifestEntry], manifest_uri: str) -> set[str]:
    """The box labels of the labeled detection images (their VOC files, read concurrently)."""
    located = [(e, a.annotation_loc) for e in entries for a in e.annotations if a.annotation_loc]
    where = [f"{manifest_uri} line {e.line_no}" for e, _ in located]
    labels: set[str] = set()
    for boxes, _ in read_voc_files(storage, [loc for _, loc in located if loc], where):
        labels.update(box.name for box in boxes)
    return labels


def proposal_size(storage: Storage, proposal: Proposal) -> tuple[int, int, int]:
    """The image's size: from the run's VOC file, else from the image's header."""
    return proposal.size or image_size(storage, proposal.source)


def dataset_labels(entries: Iterable[ManifestEntry]) -> set[str]:
    labels: set[str] = set()
    for entry in entries:
        labels.update(entry.labels)
    return labels


def run_name(result_uri: str) -> str:
    """The run's name: the folder of ``result.manifest`` (``<job>-<short uid>``)."""
    path = result_uri.rstrip("/")
    folder = posixpath.dirname(path) if is_s3(path) else os.path.dirname(local_path(path))
    return posixpath.basename(folder.rstrip("/")) or "autolabel"


def image_size(storage: Storage, uri: str) -> tuple[int, int, int]:
    """``(width, height, depth)`` from the image's header (Pillow); an unreadable image is a ReviewError."""
    from PIL import Image, UnidentifiedImageError

    try:
        data = storage.read_bytes(uri)
    except ObjectNotFound as exc:
        raise ReviewError(f"image {uri}: no such file or object") from exc
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            depth = len(img.getbands())
    except (UnidentifiedImageError, OSError) as exc:
        raise ReviewError(f"image {uri}: cannot read it as an image ({exc})") from exc
    return width, height, depth


def basename(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[-1].rsplit(os.sep, 1)[-1]


def unique_stems(uris: Sequence[str]) -> list[str]:
    """A file stem per image (its base name without extension), made unique with ``-2``, ``-3``, …"""
    stems: list[str] = []
    used: set[str] = set()
    for uri in uris:
        stem = os.path.splitext(basename(uri))[0] or "image"
        candidate, n = stem, 1
        while candidate in used:
            n += 1
            candidate = f"{stem}-{n}"
        used.add(candidate)
        stems.append(candidate)
    return stems
