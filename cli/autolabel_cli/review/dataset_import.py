"""Importing a dataset from a common layout into a ModelArts manifest that :mod:`autolabel.manifest` reads.

Sources (``fmt`` is detected when None: a ``.json`` file is COCO, a folder with ``Annotations/`` is VOC,
any other folder an ImageFolder tree):

- ``imagefolder``: ``<src>/<label>/<image>`` → a labeled line per image; ``<src>/unlabeled/<image>`` →
  unlabeled lines. Files that are not images (by extension) are skipped; an image elsewhere is an error;
- ``coco``: a COCO JSON file; ``file_name`` relative to the JSON's folder (or its ``images/`` folder).
  An image whose annotations all have one category is labeled with it (image-level); one with several
  categories keeps its boxes: a VOC XML file under ``Annotations/`` and an ``annotation-loc`` line; one
  without annotations is unlabeled;
- ``voc``: ``<src>/Annotations/*.xml`` and ``<src>/JPEGImages/``: every XML with objects keeps its boxes
  (a copied VOC file and an ``annotation-loc`` line); images without an XML, or with no object, are unlabeled.

Images are copied under ``<to_uri>/images/`` and ``<to_uri>/dataset.manifest`` is written with sources
relative to it. Everything is checked before the first write: bad input raises :class:`ReviewError`.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass, field
from typing import Any

from autolabel.manifest import CLASSIFICATION_TYPE, DETECTION_TYPE, VOC_FORMAT, VocBox, VocError, parse_voc, voc_xml
from autolabel.storage import ObjectNotFound, ScopedWriter, Storage, join_uri

from .common import IMAGE_EXTENSIONS, basename, unique_stems
from .errors import ReviewError

IMPORT_FORMATS = ("imagefolder", "coco", "voc")
MANIFEST_NAME = "dataset.manifest"
UNLABELED_DIR = "unlabeled"
BY = "human"


@dataclass
class _Plan:
    copies: list[tuple[str, str]] = field(default_factory=list)  # (source URI, destination key)
    files: dict[str, bytes] = field(default_factory=dict)  # destination key -> content
    lines: list[dict[str, Any]] = field(default_factory=list)

    def image(self, src: str, key: str) -> None:
        self.copies.append((src, key))

    def classified(self, key: str, label: str | None) -> None:
        line: dict[str, Any] = {"source": key}
        if label is not None:
            line["annotation"] = [{"type": CLASSIFICATION_TYPE, "name": label, "annotated-by": BY}]
        self.lines.append(line)

    def boxes(self, key: str, xml_key: str, xml: bytes) -> None:
        self.files[xml_key] = xml
        ann = {"type": DETECTION_TYPE, "annotation-loc": xml_key, "annotation-format": VOC_FORMAT, "annotated-by": BY}
        self.lines.append({"source": key, "annotation": [ann]})


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _folder(src: str) -> str:
    return src if src.endswith("/") else src + "/"


def _relative_files(storage: Storage, folder: str) -> list[str]:
    return sorted(uri[len(folder) :] for uri in storage.list(folder) if uri.startswith(folder))


def _imagefolder(storage: Storage, src: str) -> _Plan:
    folder = _folder(src)
    plan = _Plan()
    for rel in _relative_files(storage, folder):
        if not _is_image(rel):
            continue
        parts = rel.split("/")
        if len(parts) != 2:
            raise ReviewError(f"image {folder}{rel}: expected <label>/<image> or {UNLABELED_DIR}/<image>")
        label, _ = parts
        key = f"images/{rel}"
        plan.image(folder + rel, key)
        plan.classified(key, None if label == UNLABELED_DIR else label)
    if not plan.lines:
        raise ReviewError(f"ImageFolder {src}: no such folder, or no <label>/<image> in it")
    return plan


def _load_coco(storage: Storage, src: str) -> dict[str, Any]:
    try:
        doc = json.loads(storage.read_bytes(src))
    except ObjectNotFound as exc:
        raise ReviewError(f"COCO file {src}: no such file or object") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ReviewError(f"COCO file {src}: invalid JSON ({exc})") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
        raise ReviewError(f'COCO file {src}: expected an object with an "images" list')
    return doc


def _coco(storage: Storage, src: str) -> _Plan:
    doc = _load_coco(storage, src)
    try:
        categories = {c["id"]: str(c["name"]) for c in doc.get("categories", [])}
        images = {img["id"]: img for img in doc["images"]}
        by_image: dict[Any, list[dict[str, Any]]] = {i: [] for i in images}
        for ann in doc.get("annotations", []):
            if ann["image_id"] not in images:
                raise ReviewError(f"COCO file {src}: annotation {ann.get('id')} names unknown image {ann['image_id']}")
            if ann["category_id"] not in categories:
                raise ReviewError(f"COCO file {src}: annotation {ann.get('id')}: unknown category {ann['category_id']}")
            by_image[ann["image_id"]].append(ann)
    except (KeyError, TypeError) as exc:
        raise ReviewError(f"COCO file {src}: malformed ({type(exc).__name__}: {exc})") from exc
    plan = _Plan()
    file_names = [str(img.get("file_name", "")) for img in images.values()]
    for (image_id, img), stem in zip(images.items(), unique_stems(file_names), strict=True):
        name = str(img.get("file_name") or "")
        if not name:
            raise ReviewError(f"COCO file {src}: image {image_id} has no file_name")
        image_uri = join_uri(src, name)
        if not storage.exists(image_uri):
            alt = join_uri(src, "images/" + name)
            if not storage.exists(alt):
                raise ReviewError(f"COCO file {src}: image {image_id} ({name}): no such file (looked at {image_uri})")
            image_uri = alt
        key = f"images/{stem}{posixpath.splitext(name)[1]}"
        plan.image(image_uri, key)
        anns = by_image[image_id]
        names = {categories[a["category_id"]] for a in anns}
        if len(names) <= 1:
            plan.classified(key, names.pop() if names else None)
            continue
        boxes = []
        for a in anns:
            bbox = a.get("bbox")
            if not (isinstance(bbox, list) and len(bbox) == 4 and bbox[2] > 0 and bbox[3] > 0):
                raise ReviewError(f"COCO file {src}: annotation {a.get('id')} of image {name}: no usable bbox")
            x, y, w, h = (float(v) for v in bbox)
            boxes.append(VocBox(categories[a["category_id"]], x, y, x + w, y + h))
        size = (int(img.get("width") or 0), int(img.get("height") or 0), 3)
        plan.boxes(key, f"Annotations/{stem}.xml", voc_xml(basename(key), size, boxes, BY))
    if not plan.lines:
        raise ReviewError(f"COCO file {src}: no images")
    return plan


def _voc(storage: Storage, src: str) -> _Plan:
    folder = _folder(src)
    files = _relative_files(storage, folder)
    images = [f for f in files if f.startswith("JPEGImages/") and _is_image(f)]
    xmls = {posixpath.splitext(f)[0].removeprefix("Annotations/"): f for f in files
            if f.startswith("Annotations/") and f.endswith(".xml")}  # fmt: skip
    if not xmls and not images:
        raise ReviewError(f"VOC folder {src}: no such folder, or no Annotations/*.xml and JPEGImages/ in it")
    plan = _Plan()
    seen: set[str] = set()
    for image in images:
        rel = image.removeprefix("JPEGImages/")
        stem = posixpath.splitext(rel)[0]
        key = f"images/{rel}"
        plan.image(folder + image, key)
        xml_rel = xmls.get(stem)
        if xml_rel is None:
            plan.classified(key, None)
            continue
        seen.add(stem)
        data = storage.read_bytes(folder + xml_rel)
        try:
            boxes = parse_voc(data, folder + xml_rel)
        except VocError as exc:
            raise ReviewError(str(exc)) from exc
        if boxes:
            plan.boxes(key, f"Annotations/{stem}.xml", data)
        else:
            plan.classified(key, None)
    for stem in sorted(set(xmls) - seen):
        raise ReviewError(f"VOC folder {src}: {folder}{xmls[stem]} has no image in JPEGImages/")
    return plan


def detect_format(storage: Storage, src: str) -> str:
    if src.lower().endswith(".json"):
        return "coco"
    if any(True for _ in storage.list(_folder(src) + "Annotations/")):
        return "voc"
    return "imagefolder"


def import_dataset(storage: Storage, src: str, to_uri: str, fmt: str | None = None) -> str:
    """Import ``src`` (format ``fmt``, or detected) under ``to_uri``; returns the manifest URI written."""
    if fmt is not None and fmt not in IMPORT_FORMATS:
        raise ReviewError(f"unknown dataset format {fmt!r} (one of {', '.join(IMPORT_FORMATS)})")
    fmt = fmt or detect_format(storage, src)
    plan = {"imagefolder": _imagefolder, "coco": _coco, "voc": _voc}[fmt](storage, src)
    try:
        writer = ScopedWriter(storage, to_uri)
        targets = {key: writer.uri(key) for key in [k for _, k in plan.copies] + [*plan.files, MANIFEST_NAME]}
    except ValueError as exc:
        raise ReviewError(f"destination {to_uri!r}: {exc}") from exc
    for image_uri, key in plan.copies:
        storage.write_bytes(targets[key], storage.read_bytes(image_uri))
    for key, data in plan.files.items():
        storage.write_bytes(targets[key], data)
    manifest = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in plan.lines)
    storage.write_bytes(targets[MANIFEST_NAME], manifest.encode("utf-8"))
    return targets[MANIFEST_NAME]
