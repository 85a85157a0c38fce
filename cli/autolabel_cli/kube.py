"""The CLI's view of a cluster: AutoLabelJobs through the official (sync) ``kubernetes`` client.

Connection settings work like kubectl's: ``--kubeconfig`` (else ``$KUBECONFIG``, which may list several
files, else ``~/.kube/config``), ``--context`` (else the current context), ``-n/--namespace`` (else the
context's namespace, else ``default``), ``-A/--all-namespaces``. Every failure becomes a :class:`CliError`
whose message names what is at fault (the kubeconfig file, the server, the job and its namespace).

``kubernetes`` is imported only inside :func:`connect`, so ``autolabel run --local`` never loads it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from autolabel.api import GROUP, PLURAL, VERSION

RESOURCE = f"{PLURAL}.{GROUP}"
REQUEST_TIMEOUT = 15.0
T = TypeVar("T")


class CliError(Exception):
    """A failure to report in one sentence (``str()``), exiting with ``code``."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


class JobNotFound(CliError):
    def __init__(self, namespace: str, name: str) -> None:
        super().__init__(f'AutoLabelJob "{name}" not found in namespace "{namespace}"')
        self.namespace, self.name = namespace, name


@dataclass(frozen=True)
class KubeOptions:
    kubeconfig: str | None = None
    context: str | None = None
    namespace: str | None = None
    all_namespaces: bool = False

    def merged(self, other: KubeOptions) -> KubeOptions:
        """These options, with the ones ``other`` sets winning (a sub-command's flags over the global ones)."""
        return KubeOptions(
            kubeconfig=other.kubeconfig or self.kubeconfig,
            context=other.context or self.context,
            namespace=other.namespace or self.namespace,
            all_namespaces=other.all_namespaces or self.all_namespaces,
        )


class JobsApi(Protocol):
    """What the commands need from the cluster (a fake in the unit tests)."""

    def get(self, namespace: str, name: str) -> dict[str, Any]:
        """One AutoLabelJob; :class:`JobNotFound` when there is none."""
        ...

    def list(self, namespace: str | None) -> list[dict[str, Any]]:
        """The AutoLabelJobs of ``namespace`` (None: every namespace), sorted by namespace and name."""
        ...


def kubeconfig_path(opts: KubeOptions) -> str:
    return opts.kubeconfig or os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")


def connect(opts: KubeOptions) -> tuple[JobsApi, str]:
    """A client for ``opts`` and the namespace to use (the flag, else the context's, else ``default``)."""
    from kubernetes import config

    path = kubeconfig_path(opts)
    try:
        contexts, active = config.list_kube_config_contexts(config_file=path)
        api_client = config.new_client_from_config(config_file=path, context=opts.context)
    except (config.ConfigException, OSError, ValueError, TypeError) as exc:
        where = f"context {opts.context!r} of kubeconfig {path}" if opts.context else f"kubeconfig {path}"
        raise CliError(f"cannot use {where}: {exc}") from exc
    chosen = next((c for c in contexts or [] if c.get("name") == opts.context), None) if opts.context else active
    namespace = opts.namespace or ((chosen or {}).get("context") or {}).get("namespace") or "default"
    api_client.configuration.retries = 1
    return ClusterJobs(api_client), namespace


class ClusterJobs:
    """:class:`JobsApi` over ``CustomObjectsApi``."""

    def __init__(self, api_client: Any) -> None:
        from kubernetes import client

        self.api = client.CustomObjectsApi(api_client)
        self.host = str(api_client.configuration.host)

    def get(self, namespace: str, name: str) -> dict[str, Any]:
        def call() -> Any:
            return self.api.get_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name, _request_timeout=REQUEST_TIMEOUT
            )

        return dict(self._call(call, namespace=namespace, name=name))

    def list(self, namespace: str | None) -> list[dict[str, Any]]:
        def call() -> Any:
            if namespace is None:
                return self.api.list_cluster_custom_object(GROUP, VERSION, PLURAL, _request_timeout=REQUEST_TIMEOUT)
            return self.api.list_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, _request_timeout=REQUEST_TIMEOUT
            )

        items = list(self._call(call, namespace=namespace).get("items") or [])
        return sorted(items, key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]))

    def _call(self, fn: Callable[[], T], namespace: str | None, name: str | None = None) -> T:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            return fn()
        except ApiException as exc:
            raise self._api_error(exc, namespace, name) from exc
        except HTTPError as exc:
            raise CliError(f"cannot reach the API server at {self.host}: {exc}") from exc

    def _api_error(self, exc: Any, namespace: str | None, name: str | None) -> CliError:
        try:
            body = json.loads(exc.body or "{}")
        except (TypeError, ValueError):
            body = {}
        details = body.get("details") or {}
        where = f'namespace "{namespace}"' if namespace else "all namespaces"
        if exc.status == 404 and name is not None and details.get("name") == name:
            return JobNotFound(namespace or "", name)
        if exc.status == 404:
            return CliError(f"the API server at {self.host} does not serve {RESOURCE} (is the CRD installed?)")
        if exc.status in (401, 403):
            what = f'AutoLabelJob "{name}"' if name else "AutoLabelJobs"
            message = body.get("message") or exc.reason
            return CliError(f"not allowed to read {what} in {where}: {message}")
        return CliError(f"the API server at {self.host} answered {exc.status} {exc.reason}: {body.get('message', '')}")
