"""Reader for ModelArts-style JSON Lines dataset manifests, and a PASCAL VOC box parser.

One JSON object per line::

    {"source": "s3://b/img/1.png", "usage": "TRAIN",
     "annotation": [{"type": "modelarts/image_classification", "name": "3"}]}
    {"source": "img/2.png"}                                   # unlabeled; relative to the manifest
    {"source": "s3://b/img/7.jpg", "annotation": [{"type": "modelarts/object_detection",
     "annotation-loc": "s3://b/xml/7.xml", "annotation-format": "PASCAL VOC"}]}

A line without ``annotation`` (or with an empty list) is an unlabeled image. ``obs://bucket/key``
(Huawei OBS, as ModelArts writes them) is read as ``s3://bucket/key``: OBS is S3-compatible, so point
the job's storage endpoint at OBS and ModelArts manifests work unchanged. Every malformed line raises
:class:`ManifestError` naming the manifest, the line number and the reason; blank lines are skipped.
Reading is streamed: :func:`read_manifest` holds one line at a time.
"""

from __future__ import annotations

import json
import logging
import math
import os
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from autolabel.storage import S3_SCHEME, Storage, join_uri, uri_scheme

CLASSIFICATION_TYPE = "modelarts/image_classification"
DETECTION_TYPE = "modelarts/object_detection"
KNOWN_TYPES = (CLASSIFICATION_TYPE, DETECTION_TYPE)
VOC_FORMAT = "PASCAL VOC"
OBS_SCHEME = "obs://"

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Annotation:
    type: str
    name: str | None = None
    annotation_loc: str | None = None
    annotation_format: str | None = None
    annotated_by: str | None = None
    confidence: float | None = None


@dataclass(frozen=True, slots=True)
class ManifestEntry:
    line_no: int
    source: str
    """The image, resolved against the manifest's folder (an s3:// URI or a local path)."""
    annotations: tuple[Annotation, ...]
    usage: str | None
    raw: dict[str, Any] = field(compare=False, repr=False)

    @property
    def is_labeled(self) -> bool:
        return bool(self.annotations)

    @property
    def labels(self) -> list[str]:
        """Class names of the classification annotations, in order, without repeats."""
        names: list[str] = []
        for ann in self.annotations:
            if ann.type == CLASSIFICATION_TYPE and ann.name is not None and ann.name not in names:
                names.append(ann.name)
        return names


class ManifestError(ValueError):
    """A manifest line is malformed. ``str()`` is ``"<manifest uri> line <n>: <reason>"``."""

    def __init__(self, uri: str, line_no: int, reason: str):
        super().__init__(f"{uri} line {line_no}: {reason}")
        self.uri = uri
        self.line_no = line_no
        self.reason = reason


def _optional_str(obj: dict[str, Any], key: str, where: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f'{where}"{key}" must be a string, got {type(value).__name__}')
    return value


class _Resolver:
    """``join_uri`` against one manifest, with a fast path for plain relative paths (most lines)."""

    def __init__(self, manifest_uri: str):
        self.manifest_uri = manifest_uri
        folder = join_uri(manifest_uri, "x")[:-1]
        self.folder = folder if folder.endswith(("/", os.sep)) else None

    def __call__(self, relative: str) -> str:
        if relative.startswith(OBS_SCHEME):  # ModelArts manifests name OBS objects; OBS speaks S3
            return S3_SCHEME + relative[len(OBS_SCHEME) :]
        if (
            self.folder is not None
            and not relative.startswith((".", "/"))
            and "://" not in relative
            and "/." not in relative
            and "//" not in relative
        ):
            return self.folder + relative
        return join_uri(self.manifest_uri, relative)


def _parse_annotation(obj: Any, index: int, resolve: _Resolver) -> Annotation:
    where = f"annotation[{index}]: "
    if not isinstance(obj, dict):
        raise ValueError(f"{where}must be a JSON object, got {type(obj).__name__}")
    ann_type = obj.get("type")
    if not isinstance(ann_type, str) or not ann_type:
        raise ValueError(f'{where}missing "type" (one of {", ".join(KNOWN_TYPES)})')
    if ann_type not in KNOWN_TYPES:
        raise ValueError(f'{where}unknown annotation type "{ann_type}" (expected one of {", ".join(KNOWN_TYPES)})')
    name = obj.get("name")
    if name is not None and not isinstance(name, str):
        if isinstance(name, int | float) and not isinstance(name, bool):
            name = str(name)  # {"name": 3} is a common slip; the label is "3"
        else:
            raise ValueError(f'{where}"name" must be a string, got {type(name).__name__}')
    if name is not None:
        name = name.strip()
    confidence = obj.get("confidence")
    if confidence is not None:
        if isinstance(confidence, bool) or not isinstance(confidence, int | float) or math.isnan(confidence):
            raise ValueError(f'{where}"confidence" must be a number between 0 and 1')
        if not 0.0 <= confidence <= 1.0:
            raise ValueError(f'{where}"confidence" {confidence} is outside 0..1')
        confidence = float(confidence)
    loc = _optional_str(obj, "annotation-loc", where)
    fmt = _optional_str(obj, "annotation-format", where)
    if ann_type == CLASSIFICATION_TYPE:
        if not name:
            raise ValueError(f'{where}classification annotation without a "name" (the class label)')
    else:
        if not loc:
            raise ValueError(f'{where}detection annotation without "annotation-loc" (the PASCAL VOC XML file)')
        if fmt is not None and fmt.strip().upper() != VOC_FORMAT:
            raise ValueError(f'{where}unsupported "annotation-format" "{fmt}" (only "{VOC_FORMAT}")')
        loc = resolve(loc)
    return Annotation(
        type=ann_type,
        name=name or None,
        annotation_loc=loc,
        annotation_format=fmt,
        annotated_by=_optional_str(obj, "annotated-by", where),
        confidence=confidence,
    )


def _check_location(uri: str, manifest_uri: str, what: str) -> None:
    """Sources are s3:// URIs or local paths; an s3:// manifest may only name objects in a store."""
    if uri.startswith(S3_SCHEME):
        return
    scheme = uri_scheme(uri)
    if scheme and scheme != "file://":
        raise ValueError(f"{what} {uri!r}: unsupported URI scheme {scheme!r} (use s3:// or a path)")
    if manifest_uri.startswith(S3_SCHEME):
        raise ValueError(f"{what} {uri!r} is a local path, but the manifest is in object storage")


def _parse_line(text: str, line_no: int, resolve: _Resolver) -> ManifestEntry:
    manifest_uri = resolve.manifest_uri
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ManifestError(manifest_uri, line_no, f"invalid JSON: {exc.msg} at column {exc.colno}") from exc
    if not isinstance(obj, dict):
        raise ManifestError(manifest_uri, line_no, f"expected a JSON object, got {type(obj).__name__}")
    source = obj.get("source")
    if source is None:
        raise ManifestError(manifest_uri, line_no, 'missing "source"')
    if not isinstance(source, str):
        raise ManifestError(manifest_uri, line_no, f'"source" must be a string, got {type(source).__name__}')
    if not source.strip():
        raise ManifestError(manifest_uri, line_no, '"source" is empty')
    raw_annotations = obj.get("annotation")
    if raw_annotations is None:
        raw_annotations = []
    if not isinstance(raw_annotations, list):
        raise ManifestError(manifest_uri, line_no, f'"annotation" must be a list, got {type(raw_annotations).__name__}')
    try:
        annotations = tuple(_parse_annotation(a, i, resolve) for i, a in enumerate(raw_annotations))
        usage = _optional_str(obj, "usage", "")
        resolved = resolve(source.strip())
        _check_location(resolved, manifest_uri, '"source"')
        for ann in annotations:
            if ann.annotation_loc is not None:
                _check_location(ann.annotation_loc, manifest_uri, '"annotation-loc"')
    except ValueError as exc:
        raise ManifestError(manifest_uri, line_no, str(exc)) from exc
    return ManifestEntry(line_no=line_no, source=resolved, annotations=annotations, usage=usage, raw=obj)


def parse_manifest(lines: Iterable[str], manifest_uri: str) -> Iterator[ManifestEntry]:
    """Parse manifest lines lazily; raises :class:`ManifestError` at the first malformed line."""
    resolve = _Resolver(manifest_uri)
    for line_no, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        yield _parse_line(text, line_no, resolve)


def read_manifest(storage: Storage, uri: str) -> Iterator[ManifestEntry]:
    """Stream and parse the manifest at ``uri`` (storage errors propagate as StorageError)."""
    return parse_manifest(storage.iter_lines(uri), uri)


# ------------------------------------------------------------------------------------------ summary


@dataclass
class ManifestSummary:
    label_counts: Counter[str] = field(default_factory=Counter)
    """Images per class label (an image with two labels counts for both)."""
    labeled: int = 0
    unlabeled: int = 0
    annotation_types: set[str] = field(default_factory=set)
    duplicates: list[tuple[str, int, int]] = field(default_factory=list)
    """(source, first line, repeating line) for every repeated source."""

    @property
    def total(self) -> int:
        return self.labeled + self.unlabeled


def summarize(entries: Iterable[ManifestEntry], track_duplicates: bool = True) -> ManifestSummary:
    """Count labels and labeled/unlabeled images.

    Memory grows with the number of labels, plus one entry per source only when ``track_duplicates``
    (the operator passes False for huge manifests). Repeated sources are counted each time here; the
    worker's preflight keeps only the first.
    """
    summary = ManifestSummary()
    first_line: dict[str, int] = {}
    for entry in entries:
        if track_duplicates:
            seen = first_line.setdefault(entry.source, entry.line_no)
            if seen != entry.line_no:
                summary.duplicates.append((entry.source, seen, entry.line_no))
        if entry.is_labeled:
            summary.labeled += 1
            summary.label_counts.update(entry.labels)
            summary.annotation_types.update(a.type for a in entry.annotations)
        else:
            summary.unlabeled += 1
    return summary


# -------------------------------------------------------------------------------------- PASCAL VOC
#
# Rules (docs/datasets.md): rectangles only (<bndbox>); <difficult> and <truncated> are 0 or 1 (absent: 0);
# a box reaching outside the image (<size>, or the image's own size when the caller knows it) is clipped
# to it, with a warning naming the file and the object; a box with zero or negative width or height, or
# one entirely outside the image, is refused, as is a label outside ``known_labels`` when given.

MAX_KNOWN_LISTED = 20  # labels named in an "unknown label" error


class VocBox(NamedTuple):
    name: str
    xmin: float
    ymin: float
    xmax: float
    ymax: float
    confidence: float | None = None
    difficult: bool = False
    """VOC's "hard to recognise" flag: kept for training, ignored when scoring (neither hit nor miss)."""
    truncated: bool = False
    """The object extends beyond the box (cut by the image border or occluded)."""


@dataclass
class VocAnnotation:
    """One PASCAL VOC file as :func:`read_voc` reads it."""

    boxes: list[VocBox] = field(default_factory=list)
    width: int | None = None
    """``<size><width>`` (None when absent or 0, as some tools write)."""
    height: int | None = None
    depth: int | None = None
    filename: str | None = None
    path: str | None = None
    warnings: list[str] = field(default_factory=list)
    """``"<file>: object <i> ("<name>"): …"`` for every box clipped to the image, and for a ``<size>``
    that differs from the image's."""


class VocError(ValueError):
    """A PASCAL VOC file is malformed; ``str()`` names the file and the object at fault."""

    def __init__(self, source: str, reason: str):
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


def _voc_number(obj: ET.Element, path: str, source: str, where: str) -> float:
    text = obj.findtext(path)
    if text is None or not text.strip():
        raise VocError(source, f"{where}: missing <{path.replace('/', '><')}>")
    try:
        value = float(text)
    except ValueError as exc:
        raise VocError(source, f"{where}: <{path.rsplit('/', 1)[-1]}> is not a number: {text.strip()!r}") from exc
    if math.isnan(value) or math.isinf(value):
        raise VocError(source, f"{where}: <{path.rsplit('/', 1)[-1]}> is not a finite number")
    return value


def _voc_flag(obj: ET.Element, tag: str, source: str, where: str) -> bool:
    """``<difficult>`` / ``<truncated>``: absent is False, ``0``/``1`` (``1.0`` too), anything else an error."""
    el = obj.find(tag)
    if el is None:
        return False
    text = (el.text or "").strip()
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if value not in (0.0, 1.0):
        raise VocError(source, f"{where}: <{tag}> must be 0 or 1, got {text!r}")
    return value == 1.0


def _voc_size(root: ET.Element, tag: str, source: str) -> int | None:
    text = root.findtext(f"size/{tag}")
    if text is None or not text.strip():
        return None
    try:
        value = float(text)
    except ValueError as exc:
        raise VocError(source, f"<size><{tag}> is not a number: {text.strip()!r}") from exc
    if not math.isfinite(value) or value < 0 or not value.is_integer():
        raise VocError(source, f"<size><{tag}> must be a whole number of pixels, got {text.strip()!r}")
    return int(value) or None  # 0: unknown (some tools write it so)


def _dims(width: int | None, height: int | None) -> str:
    return f"{'?' if width is None else width}x{'?' if height is None else height}"


def voc_xml(
    filename: str,
    size: tuple[int, int, int],
    boxes: Iterable[VocBox],
    annotated_by: str | None = None,
    path: str | None = None,
) -> bytes:
    """A PASCAL VOC annotation (the inverse of :func:`read_voc`), with ``<annotated-by>``, a
    ``<confidence>`` (0..1) per object where known, and each object's ``<truncated>`` and ``<difficult>``."""
    width, height, depth = size
    root = ET.Element("annotation")
    ET.SubElement(root, "filename").text = filename
    if path is not None:
        ET.SubElement(root, "path").text = path
    size_el = ET.SubElement(root, "size")
    for tag, value in (("width", width), ("height", height), ("depth", depth)):
        ET.SubElement(size_el, tag).text = str(value)
    for box in boxes:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = box.name
        if annotated_by:
            ET.SubElement(obj, "annotated-by").text = annotated_by
        if box.confidence is not None:
            if not 0.0 <= box.confidence <= 1.0:
                raise ValueError(f"confidence {box.confidence} of {box.name!r} in {filename} is outside 0..1")
            ET.SubElement(obj, "confidence").text = f"{box.confidence:.6g}"
        ET.SubElement(obj, "truncated").text = "1" if box.truncated else "0"
        ET.SubElement(obj, "difficult").text = "1" if box.difficult else "0"
        bnd = ET.SubElement(obj, "bndbox")
        for tag, coord in (("xmin", box.xmin), ("ymin", box.ymin), ("xmax", box.xmax), ("ymax", box.ymax)):
            ET.SubElement(bnd, tag).text = f"{coord:g}"
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def read_voc(
    xml_bytes: bytes,
    source: str = "<voc>",
    known_labels: Collection[str] | None = None,
    *,
    image_size: tuple[int, int] | None = None,
) -> VocAnnotation:
    """A PASCAL VOC annotation: its boxes, ``<size>``, ``<filename>``, ``<path>`` and warnings.

    Coordinates are pixels; a box is clipped to ``0 .. width`` and ``0 .. height`` (``image_size``
    ``(width, height)``, the decoded image's, when the caller knows it; else ``<size>``; negative
    coordinates are clipped to 0 even without a size), with a warning in ``warnings``. ``known_labels``:
    an object of any other name is an error. Raises :class:`VocError` naming ``source`` and the object
    (1-based, with its name) at fault: invalid XML, a root other than ``<annotation>``, a missing
    ``<name>`` or ``<bndbox>``, a missing or non-numeric coordinate, ``<difficult>``/``<truncated>``
    other than 0/1, ``<confidence>`` outside 0..1, a box with zero or negative width or height, a box
    entirely outside the image, an unknown label.
    """
    try:
        root = ET.fromstring(xml_bytes)
    except ET.ParseError as exc:
        raise VocError(source, f"not valid XML: {exc}") from exc
    if root.tag != "annotation":
        raise VocError(source, f"root element is <{root.tag}>, expected <annotation>")
    ann = VocAnnotation(
        width=_voc_size(root, "width", source),
        height=_voc_size(root, "height", source),
        depth=_voc_size(root, "depth", source),
        filename=(root.findtext("filename") or "").strip() or None,
        path=(root.findtext("path") or "").strip() or None,
    )
    width, height = ann.width, ann.height
    if image_size is not None:
        if (width is not None and width != image_size[0]) or (height is not None and height != image_size[1]):
            ann.warnings.append(
                f"{source}: <size> says {_dims(width, height)}, the image is {_dims(*image_size)};"
                " boxes are clipped to the image"
            )
        width, height = image_size
    known = None if known_labels is None else frozenset(known_labels)
    for i, obj in enumerate(root.findall("object"), start=1):
        name = (obj.findtext("name") or "").strip()
        where = f"object {i}"
        if not name:
            raise VocError(source, f"{where}: missing <name>")
        where = f'object {i} ("{name}")'
        if known is not None and name not in known:
            listed = sorted(known)
            more = f", … {len(listed) - MAX_KNOWN_LISTED} more" if len(listed) > MAX_KNOWN_LISTED else ""
            raise VocError(
                source, f'{where}: unknown label "{name}" (known: {", ".join(listed[:MAX_KNOWN_LISTED])}{more})'
            )
        if obj.find("bndbox") is None:
            raise VocError(source, f"{where}: no <bndbox> (only rectangles are supported)")
        xmin, ymin, xmax, ymax = (_voc_number(obj, f"bndbox/{k}", source, where) for k in
                                  ("xmin", "ymin", "xmax", "ymax"))  # fmt: skip
        given = f"({xmin:g}, {ymin:g}, {xmax:g}, {ymax:g})"
        if xmax <= xmin or ymax <= ymin:
            raise VocError(source, f"{where}: empty box {given}: xmax must exceed xmin and ymax ymin")
        confidence = None
        if obj.findtext("confidence") is not None:
            confidence = _voc_number(obj, "confidence", source, where)
            if not 0.0 <= confidence <= 1.0:
                raise VocError(source, f"{where}: <confidence> {confidence} is outside 0..1")
        difficult = _voc_flag(obj, "difficult", source, where)
        truncated = _voc_flag(obj, "truncated", source, where)
        cx0, cy0 = max(xmin, 0.0), max(ymin, 0.0)
        cx1 = xmax if width is None else min(xmax, float(width))
        cy1 = ymax if height is None else min(ymax, float(height))
        if (cx0, cy0, cx1, cy1) != (xmin, ymin, xmax, ymax):
            image = _dims(width, height)
            if cx1 <= cx0 or cy1 <= cy0:
                raise VocError(source, f"{where}: box {given} is entirely outside the {image} image")
            clipped = f"({cx0:g}, {cy0:g}, {cx1:g}, {cy1:g})"
            ann.warnings.append(
                f"{source}: {where}: box {given} reaches outside the {image} image, clipped to {clipped}"
            )
        ann.boxes.append(VocBox(name, cx0, cy0, cx1, cy1, confidence, difficult, truncated))
    return ann


def parse_voc(xml_bytes: bytes, source: str = "<voc>") -> list[VocBox]:
    """The rectangles of a PASCAL VOC annotation (:func:`read_voc`'s boxes; its warnings are logged).

    ``[VocBox(name, xmin, ymin, xmax, ymax, confidence, difficult, truncated)]``; ``confidence`` comes from
    an object's ``<confidence>`` element (written for predictions), else None. Raises :class:`VocError`
    naming ``source`` and the object (1-based) at fault.
    """
    ann = read_voc(xml_bytes, source)
    for warning in ann.warnings:
        log.warning("%s", warning)
    return ann.boxes
