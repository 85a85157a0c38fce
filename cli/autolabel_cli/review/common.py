"""What confirm, export and import share: reading manifests and results, image sizes, VOC XML, file stems."""

from __future__ import annotations

import io
import json
import os
import posixpath
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from autolabel.manifest import CLASSIFICATION_TYPE, ManifestEntry, ManifestError, parse_manifest
from autolabel.storage import ObjectNotFound, Storage, is_s3, local_path

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
    """One result line of a run: the proposed class of an unlabeled image."""

    line_no: int
    source: str  # resolved (the worker writes absolute URIs)
    label: str
    confidence: float | None
    annotated_by: str | None
    hard: bool


def read_proposals(storage: Storage, result_uri: str) -> list[Proposal]:
    """The classification proposals of ``result.manifest``; one per image (a repeat is an error)."""
    entries = parse_entries(read_lines(storage, result_uri, "result manifest"), result_uri)
    proposals: list[Proposal] = []
    seen: dict[str, int] = {}
    for entry in entries:
        where = f"{result_uri} line {entry.line_no}"
        ann = next((a for a in entry.annotations if a.type == CLASSIFICATION_TYPE and a.name), None)
        if ann is None or ann.name is None:
            raise ReviewError(f"{where}: no classification annotation (only classification results are supported)")
        if entry.source in seen:
            raise ReviewError(f"{where}: image {entry.source} already proposed on line {seen[entry.source]}")
        seen[entry.source] = entry.line_no
        hard = entry.raw.get("hard", False)
        if not isinstance(hard, bool):
            raise ReviewError(f'{where}: "hard" must be true or false, got {hard!r}')
        proposals.append(Proposal(entry.line_no, entry.source, ann.name, ann.confidence, ann.annotated_by, hard))
    return proposals


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

