"""The worker's own failure type, shared by the pipeline and the result writers (imports nothing heavy:
the fake worker in the tests imports the writers without torch)."""

from __future__ import annotations


class PipelineError(Exception):
    """A run that cannot go on; ``reason`` is the CamelCase condition reason the operator shows."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
