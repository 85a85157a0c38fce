"""Create, resume (operator start), spec updates and wake-ups (the dataset lock was released): reconcile
at once."""

from __future__ import annotations

from typing import Any

import kopf

from autolabel.api import GROUP, PLURAL, VERSION

from ..names import WAKE_ANNOTATION
from .runtime import reconcile_from_handler


def register(registry: kopf.OperatorRegistry) -> None:
    @kopf.on.resume(GROUP, VERSION, PLURAL, id="reconcile-on-resume", backoff=5, registry=registry)
    @kopf.on.create(GROUP, VERSION, PLURAL, id="reconcile-on-create", backoff=5, registry=registry)
    @kopf.on.update(GROUP, VERSION, PLURAL, id="reconcile-on-update", field="spec", backoff=5, registry=registry)
    @kopf.on.update(
        GROUP,
        VERSION,
        PLURAL,
        id="reconcile-on-wake",
        backoff=5,
        field=("metadata", "annotations", WAKE_ANNOTATION),
        registry=registry,
    )
    async def reconcile_now(*, body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
        await reconcile_from_handler(memo, body, kwargs)
