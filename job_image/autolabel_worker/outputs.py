"""Writing a run's results: ``result.manifest``, ``summary.json``, ``model/`` (formats: job_image/README.md).

Result lines are streamed to a local temporary file and uploaded once at the end, so 100k predictions
never sit in memory and readers never see half a manifest. ``summary.json`` is written last: its presence
means the run (or shard) completed, which is what :func:`merge_shards` relies on.

One line per image that was unlabeled::

    {"source": "s3://b/img/2.png",
     "annotation": [{"type": "modelarts/image_classification", "name": "3",
                     "annotated-by": "autolabel/active-learning", "confidence": 0.9731}],
     "hard": false, "hard-coefficient": 0.0269, "hard-reasons": ""}
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import IO, Any

from autolabel.api import Task
from autolabel.contract import (
    ANNOTATIONS_DIR,
    MODEL_DIR,
    PROGRESS_FILE,
    RESULT_FILE,
    SUMMARY_FILE,
    ProgressDoc,
    Stage,
    format_time,
    merge_summaries,
    shard_prefix,
)
from autolabel.manifest import CLASSIFICATION_TYPE, DETECTION_TYPE, VOC_FORMAT, VocBox, read_manifest, voc_xml
from autolabel.storage import ScopedWriter, Storage, StorageError

from .errors import PipelineError

log = logging.getLogger(__name__)

MAX_NAMED = 20  # sources named in an error message

ACTIVE_LEARNING_BY = "autolabel/active-learning"
PRE_LABELING_BY = "autolabel/pre-labeling"


def format_reasons(reasons: Iterable[int | str] | str) -> str:
    """Hard-example reason IDs joined by ``-`` (ModelArts style), e.g. ``[1, 19] -> "1-19"``."""
    if isinstance(reasons, str):
        return reasons
    seen: list[str] = []
    for reason in reasons:
        text = str(int(reason)) if not isinstance(reason, str) else reason.strip()
        if text and text not in seen:
            seen.append(text)
    return "-".join(seen)


def annotation_key(source: str) -> str:
    """The VOC file of one image's boxes: named after the image and a hash of its URI (images with the
    same file name in different folders get different files; a shard that runs again rewrites its own)."""
    stem = os.path.splitext(source.rsplit("/", 1)[-1])[0] or "image"
    return f"{ANNOTATIONS_DIR}/{stem}-{hashlib.sha256(source.encode()).hexdigest()[:12]}.xml"


def _unit(value: float, what: str) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{what} {value} is outside 0..1")
    return value


class ResultWriter:
    """Streams result lines to a temp file; :meth:`close` uploads ``result.manifest``.

    Use as a context manager: on an exception the temp file is removed and nothing is uploaded.
    Counts (``total``, ``auto_labeled``, ``hard_examples``, ``label_counts``) feed the summary.
    """

    def __init__(
        self,
        writer: ScopedWriter,
        annotated_by: str = ACTIVE_LEARNING_BY,
        task: Task | str = Task.IMAGE_CLASSIFICATION,
        result_key: str = RESULT_FILE,
        annotations: ScopedWriter | None = None,
    ):
        self.writer = writer
        self.annotations = annotations or writer
        """Where detection VOC files go: the job's results folder for every shard (`annotation_key` is
        unique per image), so a merged result.manifest is the one-shard one, line for line."""
        self.annotated_by = annotated_by
        self.task = task.value if isinstance(task, Task) else str(task)
        self.result_key = result_key
        self.total = 0
        self.auto_labeled = 0
        self.hard_examples = 0
        self.label_counts: Counter[str] = Counter()
        self._tmp: IO[str] | None = tempfile.NamedTemporaryFile(  # noqa: SIM115 (closed in close/abort)
            "w", encoding="utf-8", prefix="autolabel-result-", suffix=".manifest", delete=False
        )
        self._closed = False

    # ------------------------------------------------------------------ lines

    def add(
        self,
        source: str,
        annotations: list[dict[str, Any]],
        hard: bool,
        hard_coefficient: float,
        hard_reasons: Iterable[int | str] | str = (),
    ) -> None:
        """Append one result line with ready-made annotation objects."""
        if self._tmp is None:
            raise RuntimeError("ResultWriter is closed")
        line = {
            "source": source,
            "annotation": annotations,
            "hard": bool(hard),
            "hard-coefficient": round(_unit(hard_coefficient, "hard-coefficient"), 6),
            "hard-reasons": format_reasons(hard_reasons),
        }
        self._tmp.write(json.dumps(line, ensure_ascii=False) + "\n")
        self.total += 1
        if hard:
            self.hard_examples += 1
        else:
            self.auto_labeled += 1

    def add_classification(
        self,
        source: str,
        label: str,
        confidence: float,
        hard: bool,
        hard_coefficient: float,
        hard_reasons: Iterable[int | str] | str = (),
    ) -> None:
        """One classified image: its proposed class ``label`` with ``confidence`` (0..1)."""
        annotation = {
            "type": CLASSIFICATION_TYPE,
            "name": label,
            "annotated-by": self.annotated_by,
            "confidence": round(_unit(confidence, "confidence"), 6),
        }
        self.label_counts[label] += 1
        self.add(source, [annotation], hard, hard_coefficient, hard_reasons)

    def add_detection(
        self,
        source: str,
        boxes: Sequence[VocBox],
        image_size: tuple[int, int, int],
        hard: bool,
        hard_coefficient: float,
        hard_reasons: Iterable[int | str] | str = (),
    ) -> None:
        """One image's boxes: a VOC file under ``annotations/`` plus a line pointing at it."""
        name = source.rsplit("/", 1)[-1]
        xml_key = annotation_key(source)
        self.annotations.write_bytes(xml_key, voc_xml(name, image_size, boxes, self.annotated_by))
        annotation = {
            "type": DETECTION_TYPE,
            "annotation-loc": self.annotations.uri(xml_key),
            "annotation-format": VOC_FORMAT,
            "annotated-by": self.annotated_by,
        }
        self.label_counts.update(box.name for box in boxes)
        self.add(source, [annotation], hard, hard_coefficient, hard_reasons)

    # ------------------------------------------------------------------ finishing

    def close(self) -> str:
        """Upload ``result.manifest`` (once) and return its URI."""
        if self._closed:
            return self.writer.uri(self.result_key)
        assert self._tmp is not None
        path = self._tmp.name
        self._tmp.close()
        self._tmp = None
        try:
            self.writer.upload_file(path, self.result_key)
        finally:
            os.unlink(path)
        self._closed = True
        log.info("wrote %s (%d lines)", self.writer.uri(self.result_key), self.total)
        return self.writer.uri(self.result_key)

    def abort(self) -> None:
        """Drop the lines written so far (nothing is uploaded)."""
        if self._tmp is not None:
            path = self._tmp.name
            self._tmp.close()
            self._tmp = None
            os.unlink(path)
        self._closed = True

    def __enter__(self) -> ResultWriter:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is not None:
            self.abort()
        elif not self._closed:
            self.close()

    def counts(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "autoLabeled": self.auto_labeled,
            "hardExamples": self.hard_examples,
            "labelCounts": dict(sorted(self.label_counts.items())),
        }

    def write_summary(self, summary: Mapping[str, Any]) -> dict[str, Any]:
        """Write ``summary.json``: the counts of this writer, overridden by ``summary``. Write it last."""
        doc = {**self.counts(), **dict(summary)}
        write_json(self.writer, SUMMARY_FILE, doc)
        return doc

    def upload_model(self, local_dir: str, key: str = MODEL_DIR) -> list[str]:
        """Upload every file below ``local_dir`` to ``<key>/…``; returns the URIs written."""
        return upload_dir(self.writer, local_dir, key)


def check_accounted(
    expected: Iterable[str], results: Collection[str], unreadable: Iterable[Mapping[str, Any]], where: str = ""
) -> None:
    """Every source in ``expected`` (the unlabeled images of a run or a merge) has a result line (is in
    ``results``) or is listed in ``unreadable``; else :class:`PipelineError` ``ImagesUnaccounted``, saying
    how many are missing and naming the first. Nothing is reported as done while an image is lost."""
    listed = {str(u.get("source")) for u in unreadable}
    count, missing = 0, []
    for source in expected:
        count += 1
        if source not in results and source not in listed:
            missing.append(source)
    if missing:
        more = len(missing) - MAX_NAMED
        named = ", ".join(missing[:MAX_NAMED]) + (f" and {more} more" if more > 0 else "")
        raise PipelineError(
            "ImagesUnaccounted",
            f"{where}{len(missing)} of {count} unlabeled images have neither a result line nor an entry in "
            f"unreadableImages (lost by the worker; nothing was reported as done): {named}",
        )


def write_json(writer: ScopedWriter, key: str, doc: Mapping[str, Any]) -> None:
    writer.write_bytes(key, (json.dumps(doc, indent=2, sort_keys=False, ensure_ascii=False) + "\n").encode())


def upload_dir(writer: ScopedWriter, local_dir: str, key: str) -> list[str]:
    """Upload a folder's files, ``labels.json`` last so its presence means the model is complete."""
    if not os.path.isdir(local_dir):
        raise StorageError(local_dir, "cannot upload: not a folder")
    files: list[str] = []
    for dirpath, dirnames, filenames in os.walk(local_dir):
        dirnames.sort()
        files.extend(os.path.join(dirpath, name) for name in sorted(filenames))
    files.sort(key=lambda p: os.path.basename(p) == "labels.json")
    written = []
    for path in files:
        relative = os.path.relpath(path, local_dir).replace(os.sep, "/")
        writer.upload_file(path, f"{key.rstrip('/')}/{relative}")
        written.append(writer.uri(f"{key.rstrip('/')}/{relative}"))
    return written


# ------------------------------------------------------------------------------------------ shards


def merge_shards(
    storage: Storage, writer: ScopedWriter, shard_count: int, manifest: str | None = None
) -> dict[str, Any] | None:
    """Merge ``shards/<i>/`` into the top-level results when every shard's ``summary.json`` exists.

    Returns the merged summary, or None when a shard has not finished. The merge is deterministic (shard
    order, streamed), so running it twice, or from two shards at once, writes the same objects.

    Nothing is merged (:class:`PipelineError` ``ImagesUnaccounted``) when a shard's ``result.manifest``
    has fewer lines than its ``summary.json`` counts, or, given the job's ``manifest``, when an unlabeled
    image of it has no result line in any shard and is listed as unreadable by none.
    """
    summaries = []
    for index in range(shard_count):
        summary_uri = writer.uri(shard_prefix(index) + SUMMARY_FILE)
        if not storage.exists(summary_uri):
            return None
        summaries.append(json.loads(storage.read_bytes(summary_uri)))
    sources: set[str] = set()
    tmp = tempfile.NamedTemporaryFile("w", encoding="utf-8", suffix=".manifest", delete=False)  # noqa: SIM115
    try:
        with tmp:
            for index in range(shard_count):
                result_uri = writer.uri(shard_prefix(index) + RESULT_FILE)
                lines = 0
                for line in storage.iter_lines(result_uri):
                    if line.strip():
                        tmp.write(line + "\n")
                        lines += 1
                        if manifest is not None:
                            sources.add(str(json.loads(line).get("source")))
                claimed = summaries[index].get("total")
                if isinstance(claimed, int) and not isinstance(claimed, bool) and lines < claimed:
                    raise PipelineError(
                        "ImagesUnaccounted",
                        f"shard {index}: {claimed - lines} of {claimed} result lines its summary.json counts are "
                        f"missing from {result_uri} (nothing was merged)",
                    )
        if manifest is not None:
            unlabeled = dict.fromkeys(e.source for e in read_manifest(storage, manifest) if not e.is_labeled)
            unreadable = [u for s in summaries for u in (s.get("unreadableImages") or []) if isinstance(u, dict)]
            check_accounted(unlabeled, sources, unreadable, where="shard merge: ")
        writer.upload_file(tmp.name, RESULT_FILE)
    finally:
        os.unlink(tmp.name)
    merged = merge_summaries(summaries)
    write_json(writer, SUMMARY_FILE, merged)
    total = int(merged["total"])
    done = ProgressDoc(stage=Stage.DONE, processed=total, total=total, percent=100, updated_at=format_time())
    writer.write_bytes(PROGRESS_FILE, done.to_json())
    return merged
