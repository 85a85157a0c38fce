"""Progress of a worker run: ``progress.json`` for the operator, a bar or log lines for people.

``progress.json`` (:class:`autolabel.contract.ProgressDoc`: stage, processed, total, percent, updatedAt,
plus error when failed) is written atomically through the job's :class:`~autolabel.storage.ScopedWriter` on every stage
change and at most every ``interval`` seconds otherwise, so a run over 100k images does not turn into
100k PUTs. On a terminal a one-line bar on stderr shows the same; otherwise plain ``logging`` lines.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

from autolabel.contract import PROGRESS_FILE, ProgressDoc, Stage, format_time
from autolabel.storage import ScopedWriter, StorageError

log = logging.getLogger("autolabel_worker.progress")


class ProgressReporter:
    """Tracks ``processed``/``total`` within a stage and publishes it.

    Thread-safe: loader threads may call :meth:`advance` concurrently. Storage errors while publishing are
    logged, never raised: losing one progress update must not fail a labeling run.
    """

    def __init__(
        self,
        writer: ScopedWriter | None,
        total: int = 0,
        stage: str = Stage.PREFLIGHT,
        *,
        interval: float = 2.0,
        log_interval: float = 10.0,
        stream: TextIO | None = None,
        tty: bool | None = None,
        extra: dict[str, Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.writer = writer
        self.interval = interval
        self.log_interval = log_interval
        self.stream = stream if stream is not None else sys.stderr
        self.tty = tty if tty is not None else bool(getattr(self.stream, "isatty", lambda: False)())
        self.extra = dict(extra or {})
        self._lock = threading.Lock()
        self._clock = clock
        self.stage = stage
        self.total = max(0, int(total))
        self.processed = 0
        self.error: str | None = None
        self._last_write = float("-inf")
        self._last_log = float("-inf")
        self._last_bar = float("-inf")
        self._bar_open = False
        self.writes = 0
        self._log_filter: _ClearBarFilter | None = None
        if self.tty:
            self._log_filter = _ClearBarFilter(self)
            for handler in logging.getLogger().handlers:
                handler.addFilter(self._log_filter)
        self._publish(force=True)

    # ------------------------------------------------------------------ public API

    @property
    def percent(self) -> int:
        if self.stage == Stage.DONE:
            return 100
        if self.total <= 0:
            return 0
        return max(0, min(100, int(100 * self.processed / self.total)))

    def set_stage(self, stage: str, total: int | None = None, processed: int = 0) -> None:
        """Enter a new stage (always published at once)."""
        with self._lock:
            self._end_bar()
            self.stage = stage
            self.total = max(0, int(total)) if total is not None else 0  # a new stage starts its own count
            self.processed = processed
            log.info("stage %s%s", stage, f" ({self.total} items)" if self.total else "")
            self._publish(force=True)

    def update(self, processed: int, total: int | None = None) -> None:
        """Set the absolute count in the current stage."""
        with self._lock:
            self.processed = max(0, int(processed))
            if total is not None:
                self.total = max(0, int(total))
            self._publish(force=False)

    def advance(self, n: int = 1) -> None:
        with self._lock:
            self.processed += n
            self._publish(force=False)

    def flush(self) -> None:
        with self._lock:
            self._publish(force=True)

    def done(self) -> None:
        """The run finished: stage ``done`` at 100%."""
        with self._lock:
            self._end_bar()
            self.stage = Stage.DONE
            self.processed = self.total
            log.info("done")
            self._publish(force=True)
            self._end_bar()
            self._remove_log_filter()

    def fail(self, error: str) -> None:
        """The run failed: stage ``failed`` with the error message (the operator shows it)."""
        with self._lock:
            self._end_bar()
            self.stage = Stage.FAILED
            self.error = error
            self._publish(force=True)
            self._end_bar()
            self._remove_log_filter()

    def close(self) -> None:
        with self._lock:
            self._end_bar()
            self._remove_log_filter()

    def _remove_log_filter(self) -> None:
        if self._log_filter is not None:
            for handler in logging.getLogger().handlers:
                handler.removeFilter(self._log_filter)
            self._log_filter = None

    def __enter__(self) -> ProgressReporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ internals

    def snapshot(self) -> ProgressDoc:
        return ProgressDoc.model_validate(
            {
                **self.extra,
                "stage": str(self.stage),
                "processed": self.processed,
                "total": self.total,
                "percent": self.percent,
                "updatedAt": format_time(),
                "error": self.error,
            }
        )

    def _publish(self, force: bool) -> None:
        now = self._clock()
        if self.writer is not None and (force or now - self._last_write >= self.interval):
            self._last_write = now
            try:
                self.writer.write_bytes(PROGRESS_FILE, self.snapshot().to_json())
                self.writes += 1
            except (StorageError, OSError) as exc:
                log.warning("could not write progress.json: %s", exc)
        if self.tty:
            if force or now - self._last_bar >= 0.1:
                self._last_bar = now
                self._draw_bar()
        elif not force and now - self._last_log >= self.log_interval:
            self._last_log = now
            log.info("%s: %d/%d (%d%%)", self.stage, self.processed, self.total, self.percent)

    def _draw_bar(self, width: int = 30) -> None:
        filled = int(width * self.percent / 100)
        bar = "#" * filled + "." * (width - filled)
        counts = f"{self.processed}/{self.total}" if self.total else ""
        self.stream.write(f"\r{self.stage:<10} [{bar}] {self.percent:3d}% {counts}  ")
        self.stream.flush()
        self._bar_open = True

    def _end_bar(self) -> None:
        if self.tty and self._bar_open:
            self._draw_bar()
            self.stream.write("\n")
            self.stream.flush()
            self._bar_open = False


class _ClearBarFilter(logging.Filter):
    """Clears the progress bar's line before a log record is printed, so that log lines stay whole
    (the bar is redrawn by the next update)."""

    def __init__(self, reporter: ProgressReporter):
        super().__init__()
        self.reporter = reporter

    def filter(self, record: logging.LogRecord) -> bool:
        reporter = self.reporter
        if reporter._bar_open:
            reporter.stream.write("\r\033[K")
            reporter.stream.flush()
            reporter._bar_open = False
        return True
