"""Prometheus collectors, served on ``/metrics`` by :func:`serve`."""

from __future__ import annotations

import threading
from collections import Counter as _Counter
from collections.abc import Iterator

from prometheus_client import REGISTRY, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from autolabel.api import Phase, Result

PRECONDITION_FAILURES = Counter(
    "autolabel_precondition_failures",
    "AutoLabelJobs failed by a precondition, by reason.",
    ["reason"],
)
RECONCILE_ERRORS = Counter(
    "autolabel_reconcile_errors", "Reconciliations that raised an error (they are retried).", ["kind"]
)
for _kind in ("KubeError", "Conflict", "OSError", "unexpected"):
    RECONCILE_ERRORS.labels(_kind)  # shown as 0 from the start, so alerts can rate() them
JOB_DURATION = Histogram(
    "autolabel_job_duration_seconds",
    "From the worker Job's start to its end, by outcome.",
    ["outcome", "mode"],
    buckets=(10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 43200, 86400),
)
IMAGES_LABELED = Counter(
    "autolabel_images_labeled", "Unlabeled images that got a proposed label (from summary.json).", ["mode"]
)
AUTO_LABELED = Counter(
    "autolabel_images_auto_labeled", "Proposed labels not flagged hard (from summary.json).", ["mode"]
)
HARD_EXAMPLES = Counter("autolabel_hard_examples", "Proposed labels flagged hard, for people to review.", ["mode"])


class PhaseCollector(Collector):
    """``autolabel_jobs{phase}``: AutoLabelJobs the operator sees, by phase (every phase, zeros too)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._phases: dict[str, str] = {}

    def set(self, uid: str, phase: str | None) -> None:
        with self._lock:
            self._phases[uid] = phase or Phase.PENDING.value

    def forget(self, uid: str) -> None:
        with self._lock:
            self._phases.pop(uid, None)

    def counts(self) -> dict[str, int]:
        with self._lock:
            counted = _Counter(self._phases.values())
        return {phase.value: counted.get(phase.value, 0) for phase in Phase}

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("autolabel_jobs", "AutoLabelJobs by phase.", labels=["phase"])
        for phase, count in self.counts().items():
            family.add_metric([phase], count)
        yield family


PHASES = PhaseCollector()
REGISTRY.register(PHASES)


def record_result(mode: str, result: Result) -> None:
    for counter, value in (
        (IMAGES_LABELED, result.total),
        (AUTO_LABELED, result.auto_labeled),
        (HARD_EXAMPLES, result.hard_examples),
    ):
        if value is not None:
            counter.labels(mode).inc(value)


def serve(port: int, addr: str = "0.0.0.0") -> None:
    """Start the /metrics HTTP server in a background thread (port 0: disabled)."""
    if port:
        start_http_server(port, addr=addr)
