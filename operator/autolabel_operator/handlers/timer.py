"""The timer that keeps an unfinished AutoLabelJob's status true: lock turns, Job/pod state from the
indexes, progress from storage. Finished jobs have no timer."""

from __future__ import annotations

from typing import Any

import kopf

from autolabel.api import GROUP, PLURAL, VERSION

from ..config import Settings
from ..status import is_terminal
from .runtime import reconcile_from_handler


def _unfinished(*, body: kopf.Body, **_: Any) -> bool:
    return not is_terminal(dict(body.get("status") or {})) and not body["metadata"].get("deletionTimestamp")


def register(registry: kopf.OperatorRegistry, settings: Settings) -> None:
    @kopf.timer(
        GROUP,
        VERSION,
        PLURAL,
        interval=settings.reconcile_interval,
        initial_delay=settings.reconcile_interval,
        id="keep_status",
        backoff=5,
        when=_unfinished,
        registry=registry,
    )
    async def keep_status(*, body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
        await reconcile_from_handler(memo, body, kwargs)
