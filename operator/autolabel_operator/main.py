"""``autolabel-operator``: run the kopf operator against the current kubeconfig (or in-cluster config).

Every flag has an environment variable (flags win)::

    autolabel-operator [--namespaces a,b] [--flavors catalogue.yaml] [--s3-endpoint URL] [--s3-region R]
                       [--worker-image IMG] [--worker-command CMD] [--metrics-port 9090]
                       [--liveness http://0.0.0.0:8080/healthz] [--reconcile-interval 5] [--verbose]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys

from .config import ConfigError, Settings
from .memory import limit_malloc_arenas, report_on_signal

_FLAGS = {
    "namespaces": "AUTOLABEL_NAMESPACES",
    "flavors": "AUTOLABEL_FLAVORS",
    "s3_endpoint": "AUTOLABEL_S3_ENDPOINT",
    "s3_region": "AUTOLABEL_S3_REGION",
    "worker_image": "AUTOLABEL_WORKER_IMAGE",
    "worker_command": "AUTOLABEL_WORKER_COMMAND",
    "metrics_port": "AUTOLABEL_METRICS_PORT",
    "liveness": "AUTOLABEL_LIVENESS",
    "reconcile_interval": "AUTOLABEL_RECONCILE_INTERVAL",
}


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, Settings]:
    parser = argparse.ArgumentParser(prog="autolabel-operator", description=__doc__.splitlines()[0])
    for dest, variable in _FLAGS.items():
        parser.add_argument("--" + dest.replace("_", "-"), dest=dest, help=f"default: ${variable}")
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    env = dict(os.environ)
    for dest, name in _FLAGS.items():
        value = getattr(args, dest)
        if value is not None:
            env[name] = value
    return args, Settings.from_env(env)


def main(argv: list[str] | None = None) -> int:
    try:
        args, settings = parse_args(argv)
    except ConfigError as exc:
        print(f"autolabel-operator: {exc}", file=sys.stderr)
        return 2
    limit_malloc_arenas()  # before any thread is started
    report_on_signal()
    import kopf  # imported late: `--help` and config errors need no kopf

    from .handlers import register

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("botocore", "boto3", "urllib3", "aiohttp.access", "kubernetes_asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not args.verbose:
        # kopf logs every handler and timer run of every object at INFO ("Timer 'keep_status' succeeded."):
        # 30,293 lines in the 1,000-job run of docs/benchmarks.md. Their failures (WARNING and up) stay;
        # what happened to a job is in its status and Events.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    registry = register(settings)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(
            kopf.operator(
                registry=registry,
                standalone=True,  # one replica (Recreate): no peering, no freezes
                clusterwide=not settings.namespaces,
                namespaces=list(settings.namespaces),
                liveness_endpoint=settings.liveness,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
