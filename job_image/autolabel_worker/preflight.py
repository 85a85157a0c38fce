"""Preflight: is this dataset usable, image by image, before any training starts?

Every image named by the manifest is fetched concurrently and its header checked (:func:`probe_image`);
bytes are dropped at once, so memory grows with the number of entries, not with the images. Unreadable
images are listed and skipped; the run fails only when their share exceeds
``spec.images.maxUnreadableFraction``. Unreadable labeled images are dropped *before* the seed's label
rules are checked, so a label whose images are broken is reported as short of images. For object
detection the VOC file of every labeled image is read as well, and the label counts come from its boxes.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from autolabel.api import AlphaPolicy, AutoLabelJobSpec, Task
from autolabel.manifest import DETECTION_TYPE, ManifestEntry, ManifestSummary, VocBox, VocError, read_voc
from autolabel.preconditions import PreconditionFailure, check_dataset
from autolabel.storage import Storage, StorageError, StorageUnreachable
from autolabel_worker.images import ImageError, probe_image

log = logging.getLogger(__name__)

MAX_LISTED = 20  # sources named in an error message
MAX_DUPLICATES_KEPT = 1000  # repeated sources listed in summary.json (all are counted)
MAX_VOC_WARNINGS_KEPT = 1000  # annotation warnings listed in summary.json (all are counted)


class PreflightError(Exception):
    """The dataset cannot be auto-labeled. ``reason`` is CamelCase (a condition reason)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass
class PreflightResult:
    labeled: list[ManifestEntry] = field(default_factory=list)
    """Readable labeled images, first occurrence of each source, manifest order."""
    unlabeled: list[ManifestEntry] = field(default_factory=list)
    """Readable unlabeled images, first occurrence of each source, manifest order."""
    classes: list[str] = field(default_factory=list)
    """Sorted class names; a class's index is its position."""
    class_index: dict[str, int] = field(default_factory=dict)
    label_counts: Counter[str] = field(default_factory=Counter)
    failures: list[PreconditionFailure] = field(default_factory=list)
    unreadable: list[dict[str, str]] = field(default_factory=list)
    """``[{"source", "reason"}]`` for every image (or VOC file) that could not be used."""
    converted: int = 0
    """Readable images with transparency that decoding will flatten to RGB."""
    duplicates: list[dict[str, object]] = field(default_factory=list)
    """``[{"source", "firstLine", "line"}]``: repeated sources (only the first is used), at most
    ``MAX_DUPLICATES_KEPT`` of them; ``duplicate_count`` counts them all."""
    duplicate_count: int = 0
    sizes: Counter[tuple[int, int]] = field(default_factory=Counter)
    """(width, height) -> number of readable images."""
    boxes: dict[str, list[VocBox]] = field(default_factory=dict)
    """Object detection: the boxes of each labeled image, by source (clipped to the image)."""
    image_sizes: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Object detection: (width, height) of each readable labeled image, as decoded (what its boxes were
    clipped to)."""
    voc_warnings: list[str] = field(default_factory=list)
    """Object detection: what was repaired in the VOC files (a box clipped to the image, a ``<size>`` that
    is not the image's), each naming the file and the object; at most ``MAX_VOC_WARNINGS_KEPT`` of them,
    ``voc_warning_count`` counts them all."""
    voc_warning_count: int = 0
    total_images: int = 0
    unlabeled_sources: list[str] = field(default_factory=list)
    """Every unlabeled image (first occurrence of each source, readable or not): what the run must account
    for, each with a result line or an entry in ``unreadable``."""

    @property
    def ok(self) -> bool:
        return not self.failures

    def raise_for_failures(self) -> None:
        """Raise :class:`PreflightError` when a precondition failed (reason of the first failure)."""
        if self.failures:
            raise PreflightError(self.failures[0].reason, "; ".join(f.message for f in self.failures))

    def summary_fields(self) -> dict[str, object]:
        """The preflight part of ``summary.json``."""
        return {
            "unreadableImages": self.unreadable,
            "convertedImages": self.converted,
            "duplicates": self.duplicates,
            "duplicateCount": self.duplicate_count,
            "annotationWarnings": self.voc_warnings,
            "annotationWarningCount": self.voc_warning_count,
        }


def _is_detection(entry: ManifestEntry) -> bool:
    return any(a.type == DETECTION_TYPE for a in entry.annotations)


def run_preflight(
    entries: Iterable[ManifestEntry],
    storage: Storage,
    spec: AutoLabelJobSpec,
    *,
    max_workers: int = 16,
    on_progress: Callable[[int, int], None] | None = None,
) -> PreflightResult:
    """Check every image; see the module docstring. ``on_progress(done, total)`` is called as it goes.

    Raises :class:`PreflightError` when too many images are unreadable, when ``spec.images.alpha`` is
    Fail and an image has transparency, or when the store is unreachable. Precondition failures (too few
    labels, …) are returned in ``result.failures`` (see :meth:`PreflightResult.raise_for_failures`).
    """
    result = PreflightResult()
    first_line: dict[str, int] = {}
    unique: list[ManifestEntry] = []
    for entry in entries:
        seen = first_line.setdefault(entry.source, entry.line_no)
        if seen != entry.line_no:
            result.duplicate_count += 1
            if len(result.duplicates) < MAX_DUPLICATES_KEPT:
                result.duplicates.append({"source": entry.source, "firstLine": seen, "line": entry.line_no})
            continue
        unique.append(entry)
    del first_line
    result.total_images = len(unique)
    result.unlabeled_sources = [e.source for e in unique if not e.is_labeled]
    if result.duplicate_count:
        log.warning("%d repeated sources in the manifest; only the first of each is used", result.duplicate_count)

    fail_on_alpha = str(spec.images.alpha) == AlphaPolicy.FAIL.value
    is_detection = str(spec.task) == Task.OBJECT_DETECTION.value
    with_alpha: list[str] = []
    bad: set[int] = set()
    done = 0
    for index, (uri, data) in enumerate(storage.fetch_many((e.source for e in unique), max_workers)):
        done += 1
        if on_progress is not None and (done % 256 == 0 or done == len(unique)):
            on_progress(done, len(unique))
        if isinstance(data, StorageUnreachable):
            raise PreflightError("StorageUnreachable", str(data))
        if isinstance(data, StorageError):
            result.unreadable.append({"source": uri, "reason": data.cause})
            bad.add(index)
            continue
        try:
            info = probe_image(data, uri)
        except ImageError as exc:
            result.unreadable.append({"source": uri, "reason": exc.reason})
            bad.add(index)
            continue
        result.sizes[(info.width, info.height)] += 1
        if is_detection and unique[index].is_labeled:
            result.image_sizes[unique[index].source] = (info.width, info.height)
        if info.has_alpha:
            if fail_on_alpha:
                with_alpha.append(uri)
            else:
                result.converted += 1

    if with_alpha:
        listed = ", ".join(with_alpha[:MAX_LISTED]) + (
            f" and {len(with_alpha) - MAX_LISTED} more" if len(with_alpha) > MAX_LISTED else ""
        )
        raise PreflightError(
            "ImageHasAlpha",
            f"{len(with_alpha)} image(s) have transparency and spec.images.alpha is Fail: {listed}",
        )

    readable = [e for i, e in enumerate(unique) if i not in bad]
    del unique
    if is_detection:
        readable = _read_voc_files(readable, storage, result, max_workers)

    _check_unreadable_share(result, spec)

    summary = ManifestSummary()
    for entry in readable:
        if entry.is_labeled:
            result.labeled.append(entry)
            summary.labeled += 1
            summary.annotation_types.update(a.type for a in entry.annotations)
            if is_detection and entry.source in result.boxes:
                summary.label_counts.update({box.name for box in result.boxes[entry.source]})
            else:
                summary.label_counts.update(entry.labels)
        else:
            result.unlabeled.append(entry)
            summary.unlabeled += 1
    result.label_counts = summary.label_counts
    result.classes = sorted(summary.label_counts)
    result.class_index = {name: i for i, name in enumerate(result.classes)}
    result.failures = check_dataset(summary, spec.task)
    log.info(
        "preflight: %d labeled, %d unlabeled, %d classes, %d unreadable, %d converted, %d duplicates",
        len(result.labeled),
        len(result.unlabeled),
        len(result.classes),
        len(result.unreadable),
        result.converted,
        result.duplicate_count,
    )
    return result


def _read_voc_files(
    readable: list[ManifestEntry], storage: Storage, result: PreflightResult, max_workers: int
) -> list[ManifestEntry]:
    """Read the VOC file of each labeled detection image (:func:`read_voc`, boxes clipped to the decoded
    image's size, warnings kept in ``result.voc_warnings``); an image whose file is broken is dropped."""
    labeled = [e for e in readable if _is_detection(e)]
    locs = [(e, a.annotation_loc) for e in labeled for a in e.annotations if a.annotation_loc]
    dropped: set[str] = set()
    uris = [loc for _, loc in locs if loc is not None]
    for (entry, _), (uri, data) in zip(locs, storage.fetch_many(uris, max_workers), strict=True):
        if isinstance(data, StorageUnreachable):
            raise PreflightError("StorageUnreachable", str(data))
        if isinstance(data, StorageError):
            reason = f"annotation file {uri}: {data.cause}"
        else:
            try:
                voc = read_voc(data, uri, image_size=result.image_sizes.get(entry.source))
            except VocError as exc:
                reason = f"annotation file {exc}"
            else:
                result.boxes.setdefault(entry.source, []).extend(voc.boxes)
                for warning in voc.warnings:
                    result.voc_warning_count += 1
                    if len(result.voc_warnings) < MAX_VOC_WARNINGS_KEPT:
                        result.voc_warnings.append(warning)
                continue
        result.unreadable.append({"source": entry.source, "reason": reason})
        dropped.add(entry.source)
    for source in dropped:
        result.boxes.pop(source, None)
    if result.voc_warning_count:
        log.warning(
            "%d warning(s) about the VOC files (listed in summary.json), first: %s",
            result.voc_warning_count,
            result.voc_warnings[0],
        )
    return [e for e in readable if e.source not in dropped]


def _check_unreadable_share(result: PreflightResult, spec: AutoLabelJobSpec) -> None:
    check_unreadable_share(result.unreadable, result.total_images, spec)


def check_unreadable_share(unreadable: list[dict[str, str]], total: int, spec: AutoLabelJobSpec) -> None:
    """Raise :class:`PreflightError` ``TooManyUnreadableImages`` when more than
    ``spec.images.maxUnreadableFraction`` of ``total`` images are listed in ``unreadable``. The pipeline
    calls it again after training and inference, with every image found unusable so far in the run."""
    limit = spec.images.max_unreadable_fraction
    bad = len({u["source"] for u in unreadable})
    if total and bad / total > limit:
        listed = "; ".join(f"{u['source']}: {u['reason']}" for u in unreadable[:MAX_LISTED])
        more = f"; and {bad - MAX_LISTED} more" if bad > MAX_LISTED else ""
        raise PreflightError(
            "TooManyUnreadableImages",
            f"{bad} of {total} images ({bad / total:.1%}) cannot be used, more than "
            f"spec.images.maxUnreadableFraction ({limit:.1%}): {listed}{more}",
        )
    if bad:
        log.warning("%d of %d images cannot be used and are skipped (listed in summary.json)", bad, total)
