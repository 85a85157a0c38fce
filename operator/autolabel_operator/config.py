"""Operator settings from environment variables (overridable by command-line flags in :mod:`.main`).

The flavor catalogue is a YAML file::

    default: cpu                 # the flavor used when spec.resources.flavor is empty
    flavors:
      cpu:
        resources: {requests: {cpu: "1", memory: 2Gi}, limits: {memory: 4Gi}}
      gpu-1:
        resources: {requests: {nvidia.com/gpu: 1}, limits: {nvidia.com/gpu: 1}}
        nodeSelector: {nvidia.com/gpu.present: "true"}
        tolerations: [{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]

A flavor that asks for ``nvidia.com/gpu`` in its limits gets the same amount as an explicit request
(Kueue counts requests; the API server would default them, but we say it).
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from autolabel.api import AutoLabelJob
from autolabel.contract import storage_endpoint

GPU_RESOURCE = "nvidia.com/gpu"
# In AUTOLABEL_DEFAULT_CREDENTIALS_NAMESPACES / AUTOLABEL_ALLOWED_BUCKETS: every namespace / bucket.
# For a single-user development environment only: on a shared cluster it hands the operator's storage
# keys to everyone who can create an AutoLabelJob (docs/operations.md, "Storage credentials").
EVERY = "*"
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]")


class ConfigError(ValueError):
    """Bad operator configuration; the message names the file/variable and the field."""


class Flavor(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    resources: dict[str, dict[str, str | int]] = Field(default_factory=dict)
    node_selector: dict[str, str] = Field(default_factory=dict, alias="nodeSelector")
    tolerations: list[dict[str, Any]] = Field(default_factory=list)

    def pod_resources(self) -> dict[str, dict[str, str]]:
        """``resources`` for the container: values as strings, GPUs requested explicitly."""
        out = {
            kind: {name: str(value) for name, value in amounts.items()}
            for kind, amounts in self.resources.items()
            if kind in ("requests", "limits")
        }
        gpu_limit = out.get("limits", {}).get(GPU_RESOURCE)
        if gpu_limit is not None:
            out.setdefault("requests", {}).setdefault(GPU_RESOURCE, gpu_limit)
        return out


# The catalogue used when none is configured: one flavor that runs on any node.
DEFAULT_FLAVORS = {"cpu": Flavor(resources={"requests": {"cpu": "1", "memory": "1Gi"}})}


@dataclass(frozen=True)
class FlavorCatalogue:
    flavors: dict[str, Flavor]
    default: str

    def get(self, name: str | None) -> Flavor | None:
        return self.flavors.get(name or self.default)


def parse_flavors(text: str, source: str) -> FlavorCatalogue:
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("flavors"), dict) or not data["flavors"]:
        raise ConfigError(f"{source}: expected a mapping with a non-empty `flavors` mapping")
    flavors: dict[str, Flavor] = {}
    for name, body in data["flavors"].items():
        try:
            flavors[str(name)] = Flavor.model_validate(body or {})
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ConfigError(f"{source}: flavors.{name}.{where}: {first['msg']}") from exc
    default = str(data.get("default") or next(iter(flavors)))
    if default not in flavors:
        raise ConfigError(f"{source}: default flavor {default!r} is not in flavors ({', '.join(flavors)})")
    return FlavorCatalogue(flavors=flavors, default=default)


def load_flavors(path: str | None) -> FlavorCatalogue:
    if not path:
        return FlavorCatalogue(flavors=dict(DEFAULT_FLAVORS), default="cpu")
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"AUTOLABEL_FLAVORS={path}: cannot read: {exc.strerror}") from exc
    return parse_flavors(text, path)


def _list_env(env: dict[str, str], name: str, pattern: re.Pattern[str], what: str) -> tuple[str, ...]:
    """A comma-separated list; each item must match ``pattern`` or be ``*`` (every one)."""
    raw = env.get(name, "")
    items = tuple(dict.fromkeys(item.strip() for item in raw.split(",") if item.strip()))
    for item in items:
        if item != EVERY and not pattern.fullmatch(item):
            raise ConfigError(f"{name}={raw!r}: {item!r} is not a valid {what} (nor {EVERY!r}, meaning every one)")
    return items


def _float_env(env: dict[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r}: not a number") from None


@dataclass(frozen=True)
class Settings:
    namespaces: tuple[str, ...] = ()  # empty: every namespace
    flavors: FlavorCatalogue = field(
        default_factory=lambda: FlavorCatalogue(flavors=dict(DEFAULT_FLAVORS), default="cpu")
    )
    s3_endpoint: str | None = None
    s3_region: str | None = None
    access_key: str | None = None
    secret_key: str | None = None
    # Where jobs without spec.storage.secretRef may use the operator's credentials (empty: nowhere), and
    # the buckets they may name with them (empty: none). "*" is every namespace / bucket.
    default_credentials_namespaces: tuple[str, ...] = ()
    allowed_buckets: tuple[str, ...] = ()
    worker_image: str = "ghcr.io/autolabel/worker:latest"
    worker_command: tuple[str, ...] = ("autolabel-worker",)
    image_pull_policy: str = "IfNotPresent"
    metrics_port: int = 9090  # 0 disables the metrics server
    liveness: str | None = None  # e.g. http://0.0.0.0:8080/healthz
    reconcile_interval: float = 5.0  # seconds between timer reconciliations of an active job
    lease_duration: int = 60  # seconds; renewed every reconcile while the job holds it
    storage_retries: int = 4  # attempts of a precondition read before StorageUnreachable
    storage_backoff: float = 1.0  # seconds, doubled per attempt
    results_backoff: float = 2.0  # seconds before reading an unreadable summary.json again, doubled per try
    results_backoff_max: float = 300.0
    job_credentials_seconds: int = 43200
    """Upper bound on the lifetime of a job's scoped credentials (credentials.py); AWS allows 12 h."""
    sts_role_arn: str | None = None
    """The role AssumeRole names (AWS needs a real one; MinIO ignores it)."""
    time_budget_seconds: int | None = None
    io_threads: int = 32
    """Threads for the blocking storage calls (precondition reads, STS, progress and results): mostly
    waiting on the network, so many more than cores; asyncio's default (cores + 4) queued 100 jobs
    created at once behind 6 threads (docs/benchmarks.md "Operator at scale")."""

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        namespaces = tuple(n.strip() for n in env.get("AUTOLABEL_NAMESPACES", "").split(",") if n.strip())
        command = tuple(shlex.split(env.get("AUTOLABEL_WORKER_COMMAND", "") or "autolabel-worker"))
        port_raw = env.get("AUTOLABEL_METRICS_PORT", "9090")
        try:
            metrics_port = int(port_raw)
        except ValueError:
            raise ConfigError(f"AUTOLABEL_METRICS_PORT={port_raw!r}: not an integer") from None
        budget = env.get("AUTOLABEL_TIME_BUDGET_SECONDS")
        return cls(
            namespaces=namespaces,
            flavors=load_flavors(env.get("AUTOLABEL_FLAVORS")),
            s3_endpoint=env.get("AUTOLABEL_S3_ENDPOINT") or env.get("AWS_ENDPOINT_URL") or None,
            s3_region=env.get("AUTOLABEL_S3_REGION") or env.get("AWS_REGION") or None,
            access_key=env.get("AWS_ACCESS_KEY_ID") or None,
            secret_key=env.get("AWS_SECRET_ACCESS_KEY") or None,
            default_credentials_namespaces=_list_env(
                env, "AUTOLABEL_DEFAULT_CREDENTIALS_NAMESPACES", _DNS_LABEL, "namespace name"
            ),
            allowed_buckets=_list_env(env, "AUTOLABEL_ALLOWED_BUCKETS", _BUCKET, "bucket name"),
            worker_image=env.get("AUTOLABEL_WORKER_IMAGE") or cls.worker_image,
            worker_command=command,
            image_pull_policy=env.get("AUTOLABEL_IMAGE_PULL_POLICY") or cls.image_pull_policy,
            metrics_port=metrics_port,
            liveness=env.get("AUTOLABEL_LIVENESS") or None,
            reconcile_interval=_float_env(env, "AUTOLABEL_RECONCILE_INTERVAL", cls.reconcile_interval),
            lease_duration=int(_float_env(env, "AUTOLABEL_LEASE_DURATION", cls.lease_duration)),
            storage_retries=int(_float_env(env, "AUTOLABEL_STORAGE_RETRIES", cls.storage_retries)),
            storage_backoff=_float_env(env, "AUTOLABEL_STORAGE_BACKOFF", cls.storage_backoff),
            results_backoff=_float_env(env, "AUTOLABEL_RESULTS_BACKOFF", cls.results_backoff),
            job_credentials_seconds=int(
                _float_env(env, "AUTOLABEL_JOB_CREDENTIALS_SECONDS", cls.job_credentials_seconds)
            ),
            sts_role_arn=env.get("AUTOLABEL_STS_ROLE_ARN") or None,
            time_budget_seconds=int(budget) if budget else None,
            io_threads=max(1, int(_float_env(env, "AUTOLABEL_IO_THREADS", cls.io_threads))),
        )

    def default_credentials_allowed(self, namespace: str) -> bool:
        """May a job in ``namespace`` without spec.storage.secretRef use the operator's credentials?"""
        allowed = self.default_credentials_namespaces
        return EVERY in allowed or namespace in allowed

    def bucket_allowed(self, bucket: str) -> bool:
        """May a job using the operator's credentials name ``bucket``?"""
        return EVERY in self.allowed_buckets or bucket in self.allowed_buckets

    def buckets_for_operator_credentials(self) -> frozenset[str] | None:
        """The buckets a manifest read with the operator's credentials may name (None: any)."""
        return None if EVERY in self.allowed_buckets else frozenset(self.allowed_buckets)


def uses_operator_credentials(job: AutoLabelJob) -> bool:
    """A job without spec.storage.secretRef runs on the operator's credentials (its keys, or whatever the
    operator's own environment gives boto3)."""
    return job.spec.storage is None or job.spec.storage.secret_ref is None


def job_endpoint(job: AutoLabelJob, settings: Settings) -> str | None:
    """The endpoint requests for ``job`` are sent to, by the operator and by the worker. With the
    operator's credentials always the operator's own endpoint: they are never signed for a host a user
    names (a different spec.storage.endpoint fails the preconditions with EndpointNotAllowed)."""
    if uses_operator_credentials(job):
        return settings.s3_endpoint
    return storage_endpoint(job, settings.s3_endpoint)


def same_endpoint(a: str | None, b: str | None) -> bool:
    """Two endpoint URLs name the same place (scheme and host case-insensitive, trailing slash ignored)."""
    if not a or not b:
        return not a and not b

    def canonical(url: str) -> tuple[str, str, str]:
        parts = urlsplit(url.strip())
        return parts.scheme.lower(), parts.netloc.lower(), parts.path.rstrip("/")

    return canonical(a) == canonical(b)
