"""Exporting a run's proposals, with their confidences, to other tools' formats.

Under the folder ``to_uri``:

- ``coco``: ``coco.json`` — ``images`` (URI as ``file_name``, width and height read with Pillow),
  ``categories`` (the dataset's labels and the proposed ones, ids from 1 in sorted order) and one
  ``annotation`` per proposal with its ``score``. COCO has no image-level label, so a classification is a
  whole-image box ``[0, 0, width, height]`` (``area`` = width * height, ``iscrowd`` 0) in the detection
  results style (``score``), plus ``hard``;
- ``voc``: ``Annotations/<stem>.xml`` per image, one ``<object>`` with ``<name>``, ``<confidence>`` and a
  whole-image ``<bndbox>``; ``<filename>`` and ``<path>`` name the image;
- ``yolo``: ``classes.txt`` (one label a line; the line number is the class id), ``images.txt`` (the image
  URIs, in order) and ``labels/<stem>.txt`` per image: ``class cx cy w h conf``, the whole image
  (``0.5 0.5 1 1``) for a classification;
- ``labelstudio``: ``labelstudio.json``, a list of tasks ``{data: {image}, predictions: [{model_version,
  score, result: [{from_name: "label", to_name: "image", type: "choices", value: {choices: [label]}}]}]}``
  (``model_version`` is the run's name, the folder of ``result.manifest``).

Every image of the results is exported, hard ones included (COCO and Label Studio say which are hard).
Everything is computed first; nothing is written when a :class:`ReviewError` is raised.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from autolabel.manifest import VocBox, voc_xml
from autolabel.storage import ScopedWriter, Storage

from .common import (
    Proposal,
    basename,
    dataset_labels,
    image_size,
    parse_entries,
    read_lines,
    read_proposals,
    run_name,
    unique_stems,
)
from .errors import ReviewError

FORMATS = ("coco", "voc", "yolo", "labelstudio")

Files = dict[str, bytes]  # relative key -> content


def _json(doc: object) -> bytes:
    return (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def _coco(storage: Storage, proposals: list[Proposal], categories: list[str], run: str) -> Files:
    cat_id = {label: i for i, label in enumerate(categories, start=1)}
    images, annotations = [], []
    for i, p in enumerate(proposals, start=1):
        width, height, _ = image_size(storage, p.source)
        images.append({"id": i, "file_name": p.source, "width": width, "height": height})
        annotations.append(
            {
                "id": i,
                "image_id": i,
                "category_id": cat_id[p.label],
                "bbox": [0, 0, width, height],
                "area": width * height,
                "iscrowd": 0,
                "score": p.confidence if p.confidence is not None else 1.0,
                "hard": p.hard,
            }
        )
    doc = {
        "info": {"description": f"autolabel proposals of {run}", "version": run},
        "images": images,
        "categories": [{"id": cat_id[label], "name": label, "supercategory": ""} for label in categories],
        "annotations": annotations,
    }
    return {"coco.json": _json(doc)}


def _voc(storage: Storage, proposals: list[Proposal], categories: list[str], run: str) -> Files:
    files: Files = {}
    for p, stem in zip(proposals, unique_stems([p.source for p in proposals]), strict=True):
        size = image_size(storage, p.source)
        box = VocBox(p.label, 0, 0, size[0], size[1], p.confidence)
        files[f"Annotations/{stem}.xml"] = voc_xml(basename(p.source), size, [box], p.annotated_by, path=p.source)
    return files


def _yolo(storage: Storage, proposals: list[Proposal], categories: list[str], run: str) -> Files:
    class_id = {label: i for i, label in enumerate(categories)}
    files: Files = {
        "classes.txt": "".join(f"{label}\n" for label in categories).encode("utf-8"),
        "images.txt": "".join(f"{p.source}\n" for p in proposals).encode("utf-8"),
    }
    for p, stem in zip(proposals, unique_stems([p.source for p in proposals]), strict=True):
        conf = p.confidence if p.confidence is not None else 1.0
        files[f"labels/{stem}.txt"] = f"{class_id[p.label]} 0.5 0.5 1 1 {conf:.6g}\n".encode()
    return files


def _labelstudio(storage: Storage, proposals: list[Proposal], categories: list[str], run: str) -> Files:
    tasks = []
    for p in proposals:
        result = {"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [p.label]}}
        prediction = {"model_version": run, "score": p.confidence, "result": [result]}
        tasks.append({"data": {"image": p.source, "hard": p.hard}, "predictions": [prediction]})
    return {"labelstudio.json": _json(tasks)}


_WRITERS: dict[str, Callable[[Storage, list[Proposal], list[str], str], Files]] = {
    "coco": _coco,
    "voc": _voc,
    "yolo": _yolo,
    "labelstudio": _labelstudio,
}


def export(storage: Storage, manifest_uri: str, result_manifest_uri: str, fmt: str, to_uri: str) -> list[str]:
    """Write the proposals of ``result_manifest_uri`` in format ``fmt`` under ``to_uri``; the URIs written."""
    if fmt not in FORMATS:
        raise ReviewError(f"unknown export format {fmt!r} (one of {', '.join(FORMATS)})")
    entries = parse_entries(read_lines(storage, manifest_uri, "manifest"), manifest_uri)
    proposals = read_proposals(storage, result_manifest_uri)
    categories = sorted(dataset_labels(entries) | {p.label for p in proposals})
    try:
        writer = ScopedWriter(storage, to_uri, protected=[manifest_uri, result_manifest_uri])
    except ValueError as exc:
        raise ReviewError(f"export folder {to_uri!r}: {exc}") from exc
    files = _WRITERS[fmt](storage, proposals, categories, run_name(result_manifest_uri))
    try:
        targets = {key: writer.uri(key) for key in files}
    except ValueError as exc:
        raise ReviewError(str(exc)) from exc
    for key, data in files.items():
        storage.write_bytes(targets[key], data)
    return list(targets.values())
