"""The API client's errors, apart from the client, so that the pure modules (the lock) can name them
without importing kubernetes_asyncio."""

from __future__ import annotations


class Conflict(Exception):
    """409 from the API server: the object exists already, or changed since we read it."""


class KubeError(Exception):
    """Any other non-2xx answer (404 is not an error: reads return None)."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"API server answered {status}: {body}")
        self.status = status
