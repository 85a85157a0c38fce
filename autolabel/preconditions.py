"""The seed's preconditions for an auto labeling job, shared by the operator and the worker's preflight.

From the ModelArts documentation: only image classification and object detection; at least two labels,
each on at least five images; at least one unlabeled image. For pre-labeling, the model must exist and be
made for the job's task. Every failure carries a CamelCase ``reason`` (used as a Kubernetes condition
reason) and a message that names what is wrong: the label and its count, the line, or the object.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass

from autolabel.api import Task
from autolabel.manifest import (
    CLASSIFICATION_TYPE,
    DETECTION_TYPE,
    ManifestEntry,
    ManifestError,
    ManifestSummary,
    read_manifest,
    summarize,
)
from autolabel.storage import (
    LineTooLong,
    ObjectNotFound,
    Storage,
    StorageError,
    StorageUnreachable,
    is_s3,
    join_uri,
    local_path,
    split_s3,
)

MIN_LABELS = 2
MIN_IMAGES_PER_LABEL = 5
MIN_UNLABELED = 1
MAX_NAMED = 10  # labels named in one message; the rest are counted

SUPPORTED_TASKS = {Task.IMAGE_CLASSIFICATION.value, Task.OBJECT_DETECTION.value}
TASK_ANNOTATION_TYPE = {
    Task.IMAGE_CLASSIFICATION.value: CLASSIFICATION_TYPE,
    Task.OBJECT_DETECTION.value: DETECTION_TYPE,
}
# labels.json may name the task as the API does, or as a ModelArts annotation type.
_TASK_ALIASES = {
    "imageclassification": Task.IMAGE_CLASSIFICATION.value,
    "image_classification": Task.IMAGE_CLASSIFICATION.value,
    CLASSIFICATION_TYPE: Task.IMAGE_CLASSIFICATION.value,
    "objectdetection": Task.OBJECT_DETECTION.value,
    "object_detection": Task.OBJECT_DETECTION.value,
    DETECTION_TYPE: Task.OBJECT_DETECTION.value,
}


@dataclass(frozen=True)
class PreconditionFailure:
    reason: str
    """CamelCase: UnsupportedTask, TooFewLabels, TooFewImagesPerLabel, NoUnlabeledImages, ManifestInvalid,
    ManifestUnreadable, StorageUnreachable, ModelNotFound, ModelInvalid, ModelTaskMismatch, BucketNotAllowed."""
    message: str

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


def _images(n: int) -> str:
    return f"{n} image" if n == 1 else f"{n} images"


def _name_list(items: list[str]) -> str:
    shown = ", ".join(items[:MAX_NAMED])
    return shown + (f" and {len(items) - MAX_NAMED} more" if len(items) > MAX_NAMED else "")


def _task_value(task: Task | str) -> str:
    return task.value if isinstance(task, Task) else str(task)


def check_dataset(summary: ManifestSummary, task: Task | str) -> list[PreconditionFailure]:
    """The seed's dataset rules against a manifest summary; an empty list means all hold."""
    task_value = _task_value(task)
    if task_value not in SUPPORTED_TASKS:
        return [
            PreconditionFailure(
                "UnsupportedTask",
                f'task "{task_value}" is not supported; use {" or ".join(sorted(SUPPORTED_TASKS))}',
            )
        ]
    failures: list[PreconditionFailure] = []
    expected_type = TASK_ANNOTATION_TYPE[task_value]
    foreign = sorted(summary.annotation_types - {expected_type})
    if foreign:
        failures.append(
            PreconditionFailure(
                "ManifestInvalid",
                f"the task is {task_value} but the manifest has annotations of type {', '.join(foreign)} "
                f"(expected {expected_type})",
            )
        )
    counts = summary.label_counts
    # Detection labels live in the VOC files; a summary of the manifest alone may not know them yet.
    label_rules_apply = task_value == Task.IMAGE_CLASSIFICATION.value or bool(counts)
    if label_rules_apply:
        if len(counts) < MIN_LABELS:
            if counts:
                only, n = next(iter(counts.items()))
                detail = f'only 1 label ("{only}" on {_images(n)})'
            else:
                detail = "no labeled images" if summary.labeled == 0 else "no class labels"
            failures.append(
                PreconditionFailure(
                    "TooFewLabels",
                    f"the dataset has {detail}; auto labeling needs at least {MIN_LABELS} labels",
                )
            )
        short = sorted(
            ((name, n) for name, n in counts.items() if n < MIN_IMAGES_PER_LABEL),
            key=lambda kv: (kv[1], kv[0]),
        )
        if short:
            parts = [f'label "{name}" has {_images(n)}' for name, n in short]
            failures.append(
                PreconditionFailure(
                    "TooFewImagesPerLabel",
                    f"{_name_list(parts)}; each label needs at least {MIN_IMAGES_PER_LABEL}",
                )
            )
    if summary.unlabeled < MIN_UNLABELED:
        failures.append(
            PreconditionFailure(
                "NoUnlabeledImages",
                f"all {_images(summary.labeled)} are labeled; auto labeling needs at least "
                f"{MIN_UNLABELED} unlabeled image",
            )
        )
    return failures


class BucketNotAllowed(ManifestError):
    """A manifest line names an object in a bucket the reader may not use."""


def only_buckets(
    entries: Iterable[ManifestEntry], manifest_uri: str, allowed: Collection[str]
) -> Iterator[ManifestEntry]:
    """The entries, unchanged, while every ``s3://`` object they name (image, VOC file) is in ``allowed``;
    raises :class:`BucketNotAllowed` naming the line and the bucket at the first that is not."""
    for entry in entries:
        named = [('"source"', entry.source)]
        named += [('"annotation-loc"', a.annotation_loc) for a in entry.annotations if a.annotation_loc]
        for what, uri in named:
            if is_s3(uri):
                bucket = split_s3(uri)[0]
                if bucket not in allowed:
                    raise BucketNotAllowed(
                        manifest_uri, entry.line_no, f"{what} {uri} is in bucket {bucket!r}, which is not allowed"
                    )
        yield entry


def check_manifest(
    storage: Storage,
    manifest_uri: str,
    task: Task | str,
    track_duplicates: bool = False,
    allowed_buckets: Collection[str] | None = None,
) -> tuple[ManifestSummary | None, list[PreconditionFailure]]:
    """Read and check a whole manifest (streamed); storage and format problems become failures.

    ``StorageUnreachable`` is a failure too: callers that retry (the operator) check its reason. With
    ``allowed_buckets``, a line naming an object in any other bucket is ``BucketNotAllowed`` (None: any).
    """
    try:
        entries: Iterable[ManifestEntry] = read_manifest(storage, manifest_uri)
        if allowed_buckets is not None:
            entries = only_buckets(entries, manifest_uri, allowed_buckets)
        summary = summarize(entries, track_duplicates=track_duplicates)
    except BucketNotAllowed as exc:
        return None, [PreconditionFailure("BucketNotAllowed", str(exc))]
    except (ManifestError, LineTooLong) as exc:
        return None, [PreconditionFailure("ManifestInvalid", str(exc))]
    except StorageUnreachable as exc:
        return None, [PreconditionFailure("StorageUnreachable", str(exc))]
    except StorageError as exc:
        return None, [PreconditionFailure("ManifestUnreadable", str(exc))]
    except ValueError as exc:  # e.g. an unsupported URI scheme
        return None, [PreconditionFailure("ManifestUnreadable", f"{manifest_uri}: {exc}")]
    if summary.labeled + summary.unlabeled == 0:
        return summary, [PreconditionFailure("ManifestInvalid", f"{manifest_uri}: empty (not one JSON line in it)")]
    return summary, check_dataset(summary, task)


def normalise_task(value: object) -> str | None:
    """A task named in labels.json, as the API spells it (None when unknown)."""
    if not isinstance(value, str):
        return None
    if value in SUPPORTED_TASKS:
        return value
    return _TASK_ALIASES.get(value.strip().lower()) or _TASK_ALIASES.get(value.strip())


def model_files(storage: Storage, model_uri: str) -> tuple[str, str]:
    """``(model file, labels.json)`` for a model URI: a folder holding ``model.pt``, or a TorchScript file.

    Raises ObjectNotFound when neither form exists.
    """
    if model_uri.endswith("/"):
        candidates = [(join_uri(model_uri, "model.pt"), join_uri(model_uri, "labels.json"))]
    else:
        candidates = [
            (model_uri, join_uri(model_uri, "labels.json")),
            (join_uri(model_uri + "/", "model.pt"), join_uri(model_uri + "/", "labels.json")),
        ]
    for model_file, labels_file in candidates:
        if storage.exists(model_file) and not _is_local_dir(model_file):
            return model_file, labels_file
    raise ObjectNotFound(model_uri, "no model: expected a TorchScript file, or a folder with model.pt and labels.json")


def _is_local_dir(uri: str) -> bool:
    return not is_s3(uri) and os.path.isdir(local_path(uri))


def check_model(storage: Storage, model_uri: str, task: Task | str) -> list[PreconditionFailure]:
    """The PreLabeling model exists, has a readable ``labels.json`` beside it, and is for ``task``."""
    task_value = _task_value(task)
    try:
        _, labels_uri = model_files(storage, model_uri)
        raw = storage.read_bytes(labels_uri)
    except StorageUnreachable as exc:
        return [PreconditionFailure("StorageUnreachable", str(exc))]
    except ObjectNotFound as exc:
        return [PreconditionFailure("ModelNotFound", str(exc))]
    except StorageError as exc:
        return [PreconditionFailure("ModelNotFound", str(exc))]
    except ValueError as exc:
        return [PreconditionFailure("ModelNotFound", f"{model_uri}: {exc}")]
    try:
        info = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return [PreconditionFailure("ModelInvalid", f"{labels_uri}: not valid JSON ({exc})")]
    if not isinstance(info, dict):
        return [PreconditionFailure("ModelInvalid", f"{labels_uri}: expected a JSON object")]
    failures = []
    labels = info.get("labels")
    if not isinstance(labels, list) or len(labels) < 1 or not all(isinstance(x, str) and x for x in labels):
        failures.append(PreconditionFailure("ModelInvalid", f'{labels_uri}: "labels" must be a list of names'))
    model_task = normalise_task(info.get("task"))
    if model_task is None:
        failures.append(
            PreconditionFailure(
                "ModelInvalid",
                # The value itself is not quoted: messages name the file and what is wrong, never echo
                # the content of a file the user pointed at (it lands in a status anyone can read).
                f'{labels_uri}: "task" must be {" or ".join(sorted(SUPPORTED_TASKS))}',
            )
        )
    elif model_task != task_value:
        failures.append(
            PreconditionFailure(
                "ModelTaskMismatch",
                f"the model at {model_uri} is for {model_task}; the job's task is {task_value}",
            )
        )
    return failures
