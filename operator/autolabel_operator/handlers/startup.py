"""Operator start and stop: kopf settings, the API client, the metrics server."""

from __future__ import annotations

import asyncio
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kopf

from .. import metrics
from ..config import Settings
from ..kube import Kube, new_api_client
from ..names import KOPF_PREFIX, MANAGED_BY, MANAGED_BY_LABEL
from ..reconcile import Reconciler
from .runtime import Runtime, runtime_of

FINALIZER = "autolabel.dev/finalizer"


def use_io_threads(loop: asyncio.AbstractEventLoop, op_settings: Settings) -> ThreadPoolExecutor:
    """The loop's default executor (``asyncio.to_thread``): ``io_threads`` threads for blocking storage
    calls instead of asyncio's cores + 4."""
    executor = ThreadPoolExecutor(max_workers=op_settings.io_threads, thread_name_prefix="autolabel-io")
    loop.set_default_executor(executor)
    return executor


def register(registry: kopf.OperatorRegistry, op_settings: Settings) -> None:
    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        """In a pod: its service account; elsewhere: $KUBECONFIG or ~/.kube/config (kopf's own readers)."""
        if os.environ.get("KUBERNETES_SERVICE_HOST") and not os.environ.get("KUBECONFIG"):
            return kopf.login_with_service_account(**kwargs)
        return kopf.login_with_kubeconfig(**kwargs)

    @kopf.on.startup(registry=registry)
    async def start(*, settings: kopf.OperatorSettings, memo: kopf.Memo, logger: Any, **_: Any) -> None:
        settings.persistence.finalizer = FINALIZER
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=KOPF_PREFIX)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix=KOPF_PREFIX, key="last-handled-configuration"
        )
        # Explicit watch time-outs (as crate-operator does): no silently dead streams.
        settings.watching.server_timeout = 300
        settings.watching.client_timeout = 310
        settings.watching.connect_timeout = 30
        selector = f"{MANAGED_BY_LABEL}={MANAGED_BY}"
        settings.watching.label_selectors[("batch/v1", "jobs")] = selector
        settings.watching.label_selectors[("v1", "pods")] = selector
        # kopf posts its own handler logs as Events from this level; ours go through kopf.event().
        settings.posting.level = logging.WARNING
        use_io_threads(asyncio.get_running_loop(), op_settings)
        api = await new_api_client()
        memo.runtime = Runtime(Reconciler(op_settings, Kube(api)))
        metrics.serve(op_settings.metrics_port)
        logger.info(
            "autolabel-operator: namespaces=%s flavors=%s (default %s) metrics port %s",
            ",".join(op_settings.namespaces) or "<all>",
            ",".join(op_settings.flavors.flavors),
            op_settings.flavors.default,
            op_settings.metrics_port or "off",
        )

    @kopf.on.cleanup(registry=registry)
    async def stop(*, memo: kopf.Memo, **_: Any) -> None:
        runtime = runtime_of(memo)
        memo.runtime = None
        await runtime.reconciler.kube.api.close()
