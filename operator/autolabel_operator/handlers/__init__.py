"""kopf handlers, one module per cause; :func:`register` puts them on a registry with the settings."""

from __future__ import annotations

import kopf

from ..config import Settings
from . import children, delete, indexes, lifecycle, startup, timer


def register(settings: Settings, registry: kopf.OperatorRegistry | None = None) -> kopf.OperatorRegistry:
    registry = registry if registry is not None else kopf.OperatorRegistry()
    startup.register(registry, settings)
    indexes.register(registry)
    lifecycle.register(registry)
    timer.register(registry, settings)
    delete.register(registry)
    children.register(registry)
    return registry
