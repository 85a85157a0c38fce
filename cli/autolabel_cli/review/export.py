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

Object detection results export their boxes instead (sizes from the run's VOC files): COCO one
annotation per box (``bbox`` ``[xmin, ymin, width, height]``, its ``score``); VOC the boxes with their
``<confidence>``; YOLO a ``class cx cy w h conf`` line per box (an image without boxes: an empty file);
Label Studio ``rectanglelabels`` predictions (``x``, ``y``, ``width``, ``height`` in percent of
``original_width``/``original_height``, a ``score`` per box; the prediction's ``score`` the lowest box's).

Every image of the results is exported, hard ones included (COCO and Label Studio say which are hard).
Everything is computed first; nothing is written when a :class:`ReviewError` is raised.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from autolabel.manifest import ManifestEntry, VocBox, voc_xml
from autolabel.storage import ScopedWriter, Storage

from .common import (
    Proposal,
    basename,
    dataset_labels,
    detection_labels,
    image_size,
    parse_entries,
    proposal_size,
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
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for i, p in enumerate(proposals, start=1):
        width, height, _ = proposal_size(storage, p) if p.is_detection else image_size(storage, p.source)
        images.append({"id": i, "file_name": p.source, "width": width, "height": height})
        if p.boxes is not None:
            for box in p.boxes:
                w, h = box.xmax - box.xmin, box.ymax - box.ymin
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": i,
                        "category_id": cat_id[box.name],
                        "bbox": [box.xmin, box.ymin, w, h],
                        "area": w * h,
                        "iscrowd": 0,
                        "score": box.confidence if box.confidence is not None else 1.0,
                        "hard": p.hard,
                    }
                )
            continue
        annotations.append(
            {
                "id": len(annotations) + 1,
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
        if p.boxes is not None:
            size, boxes = proposal_size(storage, p), list(p.boxes)
        else:
            size = image_size(storage, p.source)
            boxes = [VocBox(p.label, 0, 0, size[0], size[1], p.confidence)]
        files[f"Annotations/{stem}.xml"] = voc_xml(basename(p.source), size, boxes, p.annotated_by, path=p.source)
    return files


def _yolo(storage: Storage, proposals: list[Proposal], categories: list[str], run: str) -> Files:
    class_id = {label: i for i, label in enumerate(categories)}
    files: Files = {
        "classes.txt": "".join(f"{label}\n" for label in categories).encode("utf-8"),
        "images.txt": "".join(f"{p.source}\n" for p in proposals).encode("utf-8"),
    }
    for p, stem in zip(proposals, unique_stems([p.source for p in proposals]), strict=True):
        if p.boxes is None:
            conf = p.confidence if p.confidence is not None else 1.0
            files[f"labels/{stem}.txt"] = f"{class_id[p.label]} 0.5 0.5 1 1 {conf:.6g}\n".encode()
            continue
        width, height, _ = proposal_size(storage, p)
        rows = []
        for box in p.boxes:
            cx, cy = (box.xmin + box.xmax) / 2 / width, (box.ymin + box.ymax) / 2 / height
            w, h = (box.xmax - box.xmin) / width, (box.ymax - box.ymin) / height
            conf = box.confidence if box.confidence is not None else 1.0
            rows.append(f"{class_id[box.name]} {cx:.6g} {cy:.6g} {w:.6g} {h:.6g} {conf:.6g}\n")
        files[f"labels/{stem}.txt"] = "".join(rows).encode()
    return files


def _labelstudio(storage: Storage, proposals: list[Proposal], categories: list[str], run: str) -> Files:
    tasks = []
    for p in proposals:
        prediction = {"model_version": run, "score": p.confidence, "result": prediction_result(storage, p)}
        tasks.append({"data": {"image": p.source, "hard": p.hard}, "predictions": [prediction]})
    return {"labelstudio.json": _json(tasks)}


def prediction_result(storage: Storage, p: Proposal) -> list[dict[str, Any]]:
    """A proposal as Label Studio result items: one ``choices`` (classification) or a ``rectanglelabels``
    per box (percent of the image, ``original_width``/``original_height`` its pixels, ``score``)."""
    if p.boxes is None:
        return [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [p.label]}}]
    width, height, _ = proposal_size(storage, p)
    items = []
    for i, box in enumerate(p.boxes, start=1):
        value = {
            "x": 100 * box.xmin / width,
            "y": 100 * box.ymin / height,
            "width": 100 * (box.xmax - box.xmin) / width,
            "height": 100 * (box.ymax - box.ymin) / height,
            "rotation": 0,
            "rectanglelabels": [box.name],
        }
        item: dict[str, Any] = {"id": f"box{i}", "from_name": "label", "to_name": "image", "type": "rectanglelabels"}
        item.update(original_width=width, original_height=height, image_rotation=0, value=value)
        if box.confidence is not None:
            item["score"] = box.confidence
        items.append(item)
    return items


_WRITERS: dict[str, Callable[[Storage, list[Proposal], list[str], str], Files]] = {
    "coco": _coco,
    "voc": _voc,
    "yolo": _yolo,
    "labelstudio": _labelstudio,
}


def job_labels(
    storage: Storage, entries: list[ManifestEntry], manifest_uri: str, proposals: list[Proposal]
) -> set[str]:
    """The dataset's labels and the proposed ones (detection: the labeled images' VOC files too)."""
    labels = dataset_labels(entries) | {label for p in proposals for label in p.labels}
    if proposals and proposals[0].is_detection:
        labels |= detection_labels(storage, [e for e in entries if e.is_labeled], manifest_uri)
    return labels


def export(storage: Storage, manifest_uri: str, result_manifest_uri: str, fmt: str, to_uri: str) -> list[str]:
    """Write the proposals of ``result_manifest_uri`` in format ``fmt`` under ``to_uri``; the URIs written."""
    if fmt not in FORMATS:
        raise ReviewError(f"unknown export format {fmt!r} (one of {', '.join(FORMATS)})")
    entries = parse_entries(read_lines(storage, manifest_uri, "manifest"), manifest_uri)
    proposals = read_proposals(storage, result_manifest_uri)
    categories = sorted(job_labels(storage, entries, manifest_uri, proposals))
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
