"""What the stages of a run share, for classification (pipeline.py) and detection (detection/run.py):
the run's context, the preflight stage, decoding, and a PreLabeling shard's share of the images."""

from __future__ import annotations

import platform
import time
import zlib
from collections import Counter
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from autolabel.api import AutoLabelJob, AutoLabelJobSpec, Mode
from autolabel.contract import Stage
from autolabel.manifest import ManifestEntry, read_manifest
from autolabel.preconditions import check_model, model_files
from autolabel.storage import ScopedWriter, Storage, StorageError, StorageUnreachable

from .errors import PipelineError
from .images import decode_image
from .outputs import ResultWriter, check_accounted
from .predict import Decoder, image_to_array
from .preflight import PreflightResult, check_unreadable_share, run_preflight
from .progress import ProgressReporter

PRELABELING_KEEP = {"UnsupportedTask", "NoUnlabeledImages", "ManifestInvalid"}


@dataclass
class RunContext:
    job: AutoLabelJob
    storage: Storage
    writer: ScopedWriter
    progress: ProgressReporter
    started: float
    device: torch.device
    shard_index: int
    shard_count: int
    results: ScopedWriter | None = None
    """The job's results folder (`writer` is a shard's folder in a sharded run); None: `writer`."""


def read_and_check(ctx: RunContext, entries: Iterator[ManifestEntry] | list[ManifestEntry]) -> PreflightResult:
    """Stage preflight: image headers, unreadable/converted images, the seed's preconditions."""
    ctx.progress.set_stage(Stage.PREFLIGHT)
    pre = run_preflight(entries, ctx.storage, ctx.job.spec, on_progress=ctx.progress.update)
    if str(ctx.job.spec.mode) == Mode.PRE_LABELING.value:
        # The model brings the labels. A shard may hold no image at all (tiny datasets, 5 shards): the
        # operator has checked that the dataset as a whole has unlabeled images.
        keep = PRELABELING_KEEP - ({"NoUnlabeledImages"} if ctx.shard_count > 1 else set())
        pre.failures = [f for f in pre.failures if f.reason in keep]
    pre.raise_for_failures()
    return pre


def decoded_images(
    ctx: RunContext, sources: Iterable[str], unreadable: list[dict[str, str]]
) -> Iterator[tuple[int, str, Image.Image]]:
    """(position in `sources`, source, decoded image) for every usable image; images that are missing,
    refused or cannot be decoded are added to `unreadable`, a store that cannot be reached raises
    StorageUnreachable."""
    decode = decoder(ctx)
    for i, (uri, data) in enumerate(ctx.storage.fetch_many(sources)):
        if isinstance(data, StorageUnreachable):
            raise data
        if isinstance(data, StorageError):
            unreadable.append({"source": uri, "reason": data.cause})
            continue
        try:
            image = decode(data, uri)
        except Exception as exc:
            unreadable.append({"source": uri, "reason": getattr(exc, "reason", None) or str(exc)})
            continue
        yield i, uri, image


def load_images(
    ctx: RunContext, entries: list[ManifestEntry], input_size: tuple[int, int], unreadable: list[dict[str, str]]
) -> tuple[torch.Tensor, list[int]]:
    """Decode images into one uint8 tensor (see `decoded_images`). Returns (x, kept indices)."""
    arrays, kept = [], []
    for i, _, image in decoded_images(ctx, (e.source for e in entries), unreadable):
        arrays.append(image_to_array(image, input_size))
        kept.append(i)
    h, w = input_size
    x = torch.from_numpy(np.stack(arrays)) if arrays else torch.zeros((0, 3, h, w), dtype=torch.uint8)
    return x, kept


def read_prelabeling_model(ctx: RunContext) -> tuple[str, bytes, bytes]:
    """(model URI, model file, labels.json) of a PreLabeling job, after the operator's model check (the
    model exists and is for the job's task) has been made again here."""
    spec = ctx.job.spec
    assert spec.pre_labeling is not None
    model_uri = spec.pre_labeling.model.uri
    failures = check_model(ctx.storage, model_uri, spec.task)
    if failures:
        raise PipelineError(failures[0].reason, "; ".join(f.message for f in failures))
    model_file, labels_file = model_files(ctx.storage, model_uri)
    return model_uri, ctx.storage.read_bytes(model_file), ctx.storage.read_bytes(labels_file)


def decoder(ctx: RunContext) -> Decoder:
    alpha = ctx.job.spec.images.alpha

    def decode(data: bytes, source: str) -> Image.Image:
        return decode_image(data, source, alpha)

    return decode


def shard_share(ctx: RunContext) -> Iterator[ManifestEntry]:
    """This PreLabeling shard's share: the unlabeled lines whose source hashes to it (a repeated source
    stays in one shard)."""
    for entry in read_manifest(ctx.storage, ctx.job.spec.dataset.manifest):
        if entry.is_labeled:
            continue
        if zlib.crc32(entry.source.encode()) % ctx.shard_count == ctx.shard_index:
            yield entry


def close_results(
    results: ResultWriter,
    pre: PreflightResult,
    written: Collection[str],
    unreadable: list[dict[str, str]],
    images_read: int | None,
    spec: AutoLabelJobSpec,
    model_dir: str | None,
) -> None:
    """The write stage's end for either task: every unlabeled image has a line or is listed unreadable, the
    unreadable share is within the job's limit over the `images_read` (default: the preflight's), then the
    result manifest is closed and the model (if any) uploaded."""
    check_accounted(pre.unlabeled_sources, written, unreadable)
    check_unreadable_share(unreadable, pre.total_images if images_read is None else images_read, spec)
    results.close()
    if model_dir is not None:
        results.upload_model(model_dir)


def run_summary(
    ctx: RunContext,
    results: ResultWriter,
    pre: PreflightResult,
    unreadable: list[dict[str, str]],
    *,
    target: float,
    estimated: float | None,
    verifiable: bool,
    labels: list[str],
    reasons: Counter[str],
) -> dict[str, Any]:
    """The fields of summary.json that every run has (the caller adds its calibration and training)."""
    duration = time.monotonic() - ctx.started
    spec = ctx.job.spec
    return {
        **results.counts(),
        "targetPrecision": target,
        "estimatedPrecision": round(estimated, 6) if estimated is not None else None,
        "targetVerifiable": verifiable,
        "labels": labels,
        "durationSeconds": round(duration, 3),
        "imagesPerSecond": round(results.total / duration, 3) if duration > 0 else None,
        "mode": str(spec.mode),
        "task": str(spec.task),
        **pre.summary_fields(),
        "unreadableImages": unreadable,
        "shard": ctx.shard_index,
        "shards": ctx.shard_count,
        "hardReasons": dict(sorted(reasons.items(), key=lambda kv: int(kv[0]))),
        "device": str(ctx.device),
        "host": platform.node(),
    }
