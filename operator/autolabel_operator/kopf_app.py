"""For ``kopf run``: registers the operator's handlers on kopf's default registry, settings from the
environment (the same variables as ``autolabel-operator``)::

    kopf run --standalone --all-namespaces -m autolabel_operator.kopf_app
"""

from __future__ import annotations

import kopf

from .config import Settings
from .handlers import register

register(Settings.from_env(), kopf.get_default_registry())
