"""Streaming, batched inference over the unlabeled images.

A loader thread pulls bytes through ``Storage.fetch_many`` (concurrent, bounded, in order; local files are
read by the decoding threads), decodes and resizes them in a small thread pool (Pillow releases the GIL
while decoding), a run of images per task written straight into the batch's array, and hands ready uint8
batches to the main thread through a bounded queue, so fetching, decoding and the model overlap while
memory stays bounded by ``prefetch`` batches, however long the manifest. While it runs, the GIL's switch
interval is shortened (:data:`SWITCH_INTERVAL`) so that the model is not kept waiting by the decoders.
On CUDA the batches are pinned and copied asynchronously, the model runs in channels_last with bf16
autocast (``train.autocast``, the setting the held-out predictions that calibration is fitted on are made
with).

Each batch is run once for the plain view and once per test-time view (augment.py); the model returns
calibrated log-probabilities (and, for our own models, features for hard-example reason 3).
"""

from __future__ import annotations

import itertools
import logging
import queue
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from autolabel.storage import Storage, StorageError, StorageUnreachable, is_s3

from .augment import apply_tta
from .train import autocast

log = logging.getLogger(__name__)

Decoder = Callable[[bytes, str], Image.Image]

SWITCH_INTERVAL = 0.0005
"""Seconds a thread may hold the GIL while another waits, while batches load (Python's default: 0.005).
Each of the model's operators releases the GIL and must take it back when it returns; with the decoding
threads holding it for up to 5 ms at a time, the model waited (a convoy). In two A/B runs on 2 cores at
load 6.5-7, the stage went from 0.74 to 0.97 of the model's own speed with 0.5 ms; under heavier load the
gain was not reliably measurable (docs/benchmarks.md, "Worker at its ceiling")."""


@dataclass
class Batch:
    sources: list[str]
    x: torch.Tensor  # uint8 (n, 3, H, W)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (source, reason) skipped in this batch


def image_to_array(img: Image.Image, input_size: tuple[int, int]) -> np.ndarray:
    """RGB PIL image -> uint8 (3, H, W) at the model's input size."""
    h, w = input_size
    if img.mode != "RGB":
        img = img.convert("RGB")
    if img.size != (w, h):
        img = img.resize((w, h), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)


def _decode_one(decode: Decoder, source: str, data: bytes, input_size: tuple[int, int]) -> np.ndarray | str:
    try:
        return image_to_array(decode(data, source), input_size)
    except Exception as exc:  # an image that cannot be used is reported, never fatal for the batch
        reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
        return str(reason)


Item = tuple[str, bytes | StorageError | None]  # None: not fetched yet (a local file, read by the decoder)


def _decode_into(
    storage: Storage, decode: Decoder, items: list[Item], input_size: tuple[int, int], out: np.ndarray, offset: int
) -> list[str | None]:
    """Decode a run of a batch's images straight into its rows of ``out``; returns, per image, None (row
    written) or why it cannot be used. One task per run of images instead of one per image: the futures,
    queue hand-offs and GIL switches per image cost more than decoding a small image (profile in
    docs/benchmarks.md "Worker at its ceiling"). A store that cannot be reached raises."""
    reasons: list[str | None] = []
    for k, (source, data) in enumerate(items):
        if data is None:
            try:
                data = storage.read_bytes(source)
            except StorageUnreachable:
                raise
            except StorageError as exc:
                data = exc
        if isinstance(data, StorageError):  # missing or refused: this image's problem
            reasons.append(data.cause)
            continue
        value = _decode_one(decode, source, data, input_size)
        if isinstance(value, str):
            reasons.append(value)
        else:
            out[offset + k] = value
            reasons.append(None)
    return reasons


def iter_batches(
    storage: Storage,
    sources: Iterable[str],
    decode: Decoder,
    input_size: tuple[int, int],
    batch_size: int = 256,
    decode_workers: int = 4,
    fetch_workers: int = 16,
    prefetch: int = 4,
    pin_memory: bool = False,
    chunk: int = 64,
) -> Iterator[Batch]:
    """Yield decoded batches in manifest order; fetching and decoding run ahead in background threads.

    Objects in a store are fetched concurrently (``fetch_workers``, for the network's latency); local
    files are read by the decoding threads themselves. Each decoding task takes ``chunk`` images of a batch
    and writes them into the batch's array.

    An image that is missing, refused or cannot be decoded is a batch's failure (the caller lists it as
    unreadable); a store that cannot be reached raises :class:`StorageUnreachable` from the iteration."""
    out: queue.Queue[Any] = queue.Queue(maxsize=prefetch)
    stop = threading.Event()
    done = object()
    h, w = input_size

    @dataclass
    class Pending:
        sources: list[str]
        x: np.ndarray
        parts: list[Future[list[str | None]]]

    def assemble(p: Pending) -> Batch:
        reasons = [r for part in p.parts for r in part.result()]
        failures = [(src, r) for src, r in zip(p.sources, reasons, strict=True) if r is not None]
        if failures:
            ok = np.array([r is None for r in reasons], dtype=bool)
            kept = [src for src, r in zip(p.sources, reasons, strict=True) if r is None]
            arr = p.x[ok]
        else:
            kept, arr = p.sources, p.x
        x = torch.from_numpy(arr) if len(kept) else torch.zeros((0, 3, h, w), dtype=torch.uint8)
        if pin_memory and len(kept):
            x = x.pin_memory()
        return Batch(kept, x, failures)

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def items() -> Iterator[Item]:
        it = iter(sources)
        first = next(it, None)
        if first is None:
            return
        rest = itertools.chain([first], it)
        if not is_s3(first):  # local files: read where they are decoded
            yield from ((source, None) for source in rest)
            return
        for uri, data in storage.fetch_many(rest, max_workers=fetch_workers):
            if isinstance(data, StorageUnreachable):
                # The store is down (after the storage layer's retries): an infrastructure failure for
                # the whole run, never an image to drop (handed to the consumer).
                raise data
            yield uri, data

    def produce() -> None:
        pending: deque[Pending] = deque()
        try:
            with ThreadPoolExecutor(max_workers=decode_workers, thread_name_prefix="decode") as pool:

                def submit(batch: list[Item]) -> bool:
                    x = np.empty((len(batch), 3, h, w), dtype=np.uint8)
                    parts = [
                        pool.submit(_decode_into, storage, decode, batch[i : i + chunk], input_size, x, i)
                        for i in range(0, len(batch), chunk)
                    ]
                    pending.append(Pending([source for source, _ in batch], x, parts))
                    return len(pending) <= prefetch or put(assemble(pending.popleft()))

                batch: list[Item] = []
                for item in items():
                    if stop.is_set():
                        return
                    batch.append(item)
                    if len(batch) == batch_size:
                        if not submit(batch):
                            return
                        batch = []
                if batch and not submit(batch):
                    return
                while pending:
                    if not put(assemble(pending.popleft())):
                        return
            put(done)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            put(exc)

    thread = threading.Thread(target=produce, name="batch-loader", daemon=True)
    previous = sys.getswitchinterval()
    sys.setswitchinterval(min(previous, SWITCH_INTERVAL))
    thread.start()
    try:
        while True:
            item = out.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=10)
        sys.setswitchinterval(previous)


@dataclass
class BatchOutput:
    probs: np.ndarray  # (n, C) calibrated probabilities
    tta_pred: dict[str, np.ndarray]  # view -> argmax (n,)
    features: np.ndarray | None  # (n, D) unit-norm, or None when the model has none


class Predictor:
    """Runs a model (our CalibratedEnsemble or any TorchScript classifier) on uint8 batches."""

    def __init__(
        self,
        model: Any,
        input_size: tuple[int, int],
        mean: tuple[float, ...],
        std: tuple[float, ...],
        tta_views: list[str],
        device: torch.device | None = None,
        with_features: bool = True,
    ):
        self.device = device or torch.device("cpu")
        self.cuda = self.device.type == "cuda"
        self.model = model.to(self.device)
        if self.cuda:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.model.eval()
        self.input_size = input_size
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self.tta_views = list(tta_views)
        self.with_features = with_features and hasattr(model, "forward_with_features")

    def _normalize(self, x_u8: torch.Tensor) -> torch.Tensor:
        x = x_u8.to(self.device, non_blocking=True).float().div_(255.0)
        x = (x - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if self.cuda else x

    def _run(self, x: torch.Tensor, features: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        with autocast(self.device):  # as the held-out logits the temperature was fitted on (predict_logits)
            if features:
                logp, feats = self.model.forward_with_features(x)
            else:
                logp, feats = self.model(x), None
        # softmax of log-probabilities is the probabilities, of raw logits their softmax: one rule for both
        probs = torch.softmax(logp.float(), dim=1)
        return probs, feats

    @torch.inference_mode()
    def predict(self, x_u8: torch.Tensor) -> BatchOutput:
        n = len(x_u8)
        x = self._normalize(x_u8)
        views = [x] + [apply_tta(x, v) if not self.cuda else apply_tta(x.float(), v) for v in self.tta_views]
        probs_all, feats = self._run(torch.cat(views) if len(views) > 1 else x, self.with_features)
        probs = probs_all[:n]
        tta_pred = {
            v: probs_all[(i + 1) * n : (i + 2) * n].argmax(dim=1).cpu().numpy() for i, v in enumerate(self.tta_views)
        }
        return BatchOutput(
            probs=probs.cpu().double().numpy(),
            tta_pred=tta_pred,
            features=feats[:n].float().cpu().numpy() if feats is not None else None,
        )
