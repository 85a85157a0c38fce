"""Streaming, batched inference over the unlabeled images.

A loader thread cuts the sources into batches and hands runs of images to a small pool of loading
*processes* (forked), which read them (local files one after another; objects in a store through
``Storage.fetch_many``, concurrent, bounded, in order), decode and resize them straight into a ring of
batch slots in memory shared with them since the fork; the loader thread copies each finished slot out
to the main thread through a bounded queue, so fetching, decoding and the model overlap while memory
stays bounded by ``prefetch`` batches, however long the manifest.

Why processes and not threads: the model gives up the GIL in every operator and must take it back when
the operator returns, and Pillow's PNG/JPEG plugins (and botocore) run much of their work in Python
holding it. With the decoders as threads of the model's process the stage reached 0.80 of the model's own
speed on a quiet 2-core machine; a decoding loop in another process cost the model 1-4% against 93% as a
thread of its process (docs/benchmarks.md, "Worker at its ceiling"). While batches load, the GIL's switch
interval is still shortened (:data:`SWITCH_INTERVAL`) for the loader thread that stays in the process.
On CUDA the batches are pinned and copied asynchronously, the model runs in channels_last with bf16
autocast (``train.autocast``, the setting the held-out predictions that calibration is fitted on are made
with).

Each batch is run once for the plain view and once per test-time view (augment.py); the model returns
calibrated log-probabilities (and, for our own models, features for hard-example reason 3).
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import logging
import mmap
import multiprocessing
import queue
import signal
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
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
Each of the model's operators releases the GIL and must take it back when it returns; another thread
of the model's process that holds it keeps it waiting up to 5 ms at a time (a convoy; measured when the
decoders were threads: 0.74 -> 0.97 of the model's speed in two A/B runs at load 6.5-7,
docs/benchmarks.md). Only the loader thread is left in the process now; not measured again since."""


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


# ------------------------------------------------------------------ the loading processes


@dataclass(frozen=True)
class _LoaderState:
    """What each loading process holds, from the fork (nothing of it is pickled)."""

    storage: Storage
    decode: Decoder
    input_size: tuple[int, int]
    slots: np.ndarray  # uint8 (n_slots, batch, 3, H, W) over an anonymous MAP_SHARED mapping
    fetch_workers: int


_loader: _LoaderState | None = None


def _start_loader(state: _LoaderState) -> None:
    """Runs first in each loading process. The store's client is made anew (the parent's connections are
    not this process's); the process dies with its parent (Linux), so a killed worker leaves no loaders
    behind; SIGINT/SIGTERM are left to the parent, which stops the pool."""
    global _loader
    _loader = state
    if isinstance(state.storage, Storage):
        state.storage.after_fork()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    with contextlib.suppress(OSError, AttributeError):  # not Linux: the pool's own shutdown still ends it
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _read(storage: Storage, source: str) -> bytes | StorageError:
    try:
        return storage.read_bytes(source)
    except StorageError as exc:
        return exc


Unreachable = tuple[str, str]  # (uri, cause) of a store that could not be reached


def _load_into(sources: list[str], slot: int, offset: int) -> tuple[list[str | None], Unreachable | None]:
    """Fetch and decode a run of a batch's images into rows ``offset...`` of ring slot ``slot``.

    Returns, per image, None (row written) or why it cannot be used, and the store's failure if it could
    not be reached (the run stops there). Local files are read one after another, objects in a store
    through ``fetch_many``. One task per run of images: a task per image costs more than decoding a small
    image (profile in docs/benchmarks.md)."""
    assert _loader is not None, "_start_loader did not run in this process"
    state = _loader
    rows = state.slots[slot]
    fetched: Iterable[tuple[str, bytes | StorageError]]
    if any(is_s3(source) for source in sources):
        fetched = state.storage.fetch_many(sources, max_workers=state.fetch_workers)
    else:
        fetched = ((source, _read(state.storage, source)) for source in sources)
    reasons: list[str | None] = []
    for k, (source, data) in enumerate(fetched):
        if isinstance(data, StorageUnreachable):
            return reasons, (data.uri, data.cause)
        if isinstance(data, StorageError):
            value: np.ndarray | str = data.cause
        else:
            value = _decode_one(state.decode, source, data, state.input_size)
        if isinstance(value, str):
            reasons.append(value)
        else:
            rows[offset + k] = value
            reasons.append(None)
    return reasons, None


def iter_batches(
    storage: Storage,
    sources: Iterable[str],
    decode: Decoder,
    input_size: tuple[int, int],
    batch_size: int = 256,
    decode_workers: int = 2,
    fetch_workers: int = 16,
    prefetch: int = 4,
    pin_memory: bool = False,
    chunk: int = 64,
) -> Iterator[Batch]:
    """Yield decoded batches in manifest order, fetched and decoded ahead by ``decode_workers`` forked
    processes (each task ``chunk`` images, objects in a store fetched ``fetch_workers`` at a time).

    An image that is missing, refused or cannot be decoded is a batch's failure (the caller lists it as
    unreadable); a store that cannot be reached raises :class:`StorageUnreachable` from the iteration."""
    out: queue.Queue[Any] = queue.Queue(maxsize=prefetch)
    stop = threading.Event()
    done = object()
    h, w = input_size
    Image.init()  # Pillow's format plugins registered once here, not imported again in every fresh fork

    # A slot per batch in flight: at most prefetch + 1 are pending (submit below), one spare.
    n_slots = prefetch + 2
    ring = mmap.mmap(-1, n_slots * batch_size * 3 * h * w)  # anonymous, MAP_SHARED: shared with the forks
    slots = np.frombuffer(ring, dtype=np.uint8).reshape(n_slots, batch_size, 3, h, w)

    @dataclass
    class Pending:
        sources: list[str]
        slot: int
        parts: list[Future[tuple[list[str | None], Unreachable | None]]]

    def assemble(p: Pending) -> Batch:
        """The batch copied out of its slot (which is free again), without the images that failed."""
        reasons: list[str | None] = []
        for part in p.parts:
            part_reasons, unreachable = part.result()
            if unreachable:
                # The store is down (after the storage layer's retries): an infrastructure failure for
                # the whole run, never an image to drop (handed to the consumer).
                raise StorageUnreachable(*unreachable)
            reasons += part_reasons
        failures = [(src, r) for src, r in zip(p.sources, reasons, strict=True) if r is not None]
        rows = slots[p.slot, : len(p.sources)]
        if failures:
            ok = np.array([r is None for r in reasons], dtype=bool)
            kept = [src for src, r in zip(p.sources, reasons, strict=True) if r is None]
            rows = rows[ok]
        else:
            kept = p.sources
        x = torch.empty((len(kept), 3, h, w), dtype=torch.uint8, pin_memory=pin_memory and bool(kept))
        x.numpy()[:] = rows
        return Batch(kept, x, failures)

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        pending: deque[Pending] = deque()
        state = _LoaderState(storage, decode, input_size, slots, fetch_workers)
        try:
            pool = ProcessPoolExecutor(
                max_workers=max(1, decode_workers),
                mp_context=multiprocessing.get_context("fork"),
                initializer=_start_loader,
                initargs=(state,),
            )
            try:
                submitted = itertools.count()

                def submit(batch: list[str]) -> bool:
                    slot = next(submitted) % n_slots
                    parts = [
                        pool.submit(_load_into, batch[i : i + chunk], slot, i) for i in range(0, len(batch), chunk)
                    ]
                    pending.append(Pending(batch, slot, parts))
                    # hand on every batch already decoded (the first one as soon as it is), and wait for
                    # the oldest only when prefetch batches are in the loaders
                    while pending and (len(pending) > prefetch or all(f.done() for f in pending[0].parts)):
                        if not put(assemble(pending.popleft())):
                            return False
                    return True

                batch: list[str] = []
                for source in sources:
                    if stop.is_set():
                        return
                    batch.append(source)
                    if len(batch) == batch_size:
                        if not submit(batch):
                            return
                        batch = []
                if batch and not submit(batch):
                    return
                while pending:
                    if not put(assemble(pending.popleft())):
                        return
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
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
    estimate: np.ndarray | None = None  # (n, 2) `CalibratedEnsemble.forward_with_estimate`'s, or None
    witness: np.ndarray | None = None  # (n, 3) the witness's `estimate_of` the labels (Precise), or None


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
        witness: Any = None,
    ):
        """`witness`: a `CalibratedEnsemble` asked about each label (`BatchOutput.witness`), plain image only."""
        self.device = device or torch.device("cpu")
        self.cuda = self.device.type == "cuda"
        self.model = model.to(self.device)
        if self.cuda:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.model.eval()
        self.input_size = input_size
        self.normalization = (tuple(mean), tuple(std))
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self.tta_views = list(tta_views)
        self.with_features = with_features and hasattr(model, "forward_with_features")
        self.with_estimate = self.with_features and hasattr(model, "forward_with_estimate")
        self.witness = witness.to(self.device).eval() if witness is not None else None

    def _normalize(self, x_u8: torch.Tensor) -> torch.Tensor:
        x = x_u8.to(self.device, non_blocking=True).float().div_(255.0)
        x = (x - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if self.cuda else x

    def _run(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        feats = estimate = None
        with autocast(self.device):  # as the held-out logits the temperature was fitted on (predict_logits)
            if self.with_estimate:
                logp, feats, estimate = self.model.forward_with_estimate(x)
            elif self.with_features:
                logp, feats = self.model.forward_with_features(x)
            else:
                logp = self.model(x)
        # softmax of log-probabilities is the probabilities, of raw logits their softmax: one rule for both
        probs = torch.softmax(logp.float(), dim=1)
        return probs, feats, estimate

    @torch.inference_mode()
    def predict(self, x_u8: torch.Tensor) -> BatchOutput:
        n = len(x_u8)
        x = self._normalize(x_u8)
        views = [x] + [apply_tta(x if not self.cuda else x.float(), v, *self.normalization) for v in self.tta_views]
        probs_all, feats, estimate = self._run(torch.cat(views) if len(views) > 1 else x)
        probs = probs_all[:n]
        tta_pred = {
            v: probs_all[(i + 1) * n : (i + 2) * n].argmax(dim=1).cpu().numpy() for i, v in enumerate(self.tta_views)
        }
        witness = None
        if self.witness is not None:
            with autocast(self.device):
                witness = self.witness.estimate_of(x, probs.argmax(dim=1)).double().cpu().numpy()
        return BatchOutput(
            probs=probs.cpu().double().numpy(),
            tta_pred=tta_pred,
            features=feats[:n].float().cpu().numpy() if feats is not None else None,
            estimate=estimate[:n].double().cpu().numpy() if estimate is not None else None,
            witness=witness,
        )
