"""A real Kueue (sigs.k8s.io/kueue, built from its Go module by tools/build-bins.sh) in front of the local
control plane: its controller manager as a local process, its CRDs and webhooks registered in the API server.

    python -m devenv.kueue up   [--state-dir .kueue] [--cluster-dir .cluster]
    python -m devenv.kueue down [--state-dir .kueue]

What a Helm install of Kueue does in a cluster, done for loopback:
- the CRDs come from the same module's sources (``config/components/crd/bases``), with the conversion
  webhook that Kueue's kustomization patches in pointed at the local process;
- the webhook server listens on 127.0.0.1 with a self-signed certificate made here (openssl), and the
  webhook configurations (``config/components/webhook/manifests.yaml``) call it by URL with that
  certificate as their CA bundle; only the webhooks of the integrations enabled here (batch/v1 Jobs and
  Kueue's own kinds) are registered, since the manager serves no others and a registered webhook that
  nobody serves fails every request it matches;
- Kueue's own certificate management, leader election, metrics and the visibility API server are off;
- the manager runs in a mount namespace of its own with a folder laid over /etc (see
  :meth:`LocalKueue._metrics_certificate_overlay` for why): this needs ``unshare`` (util-linux) and
  unprivileged user namespaces, as rootless container tools do.
"""

from __future__ import annotations

import argparse
import base64
import functools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from devenv.cluster import LocalCluster
from devenv.procs import (
    REPO_ROOT,
    LocalService,
    ProcessGroup,
    StartError,
    ensure_binaries,
    free_port,
    http_ok,
    wait_until,
)

KUEUE_MODULE = "sigs.k8s.io/kueue"
NAMESPACE = "kueue-system"
SERVED_API_GROUPS = {"batch", "kueue.x-k8s.io"}
"""Webhooks kept from Kueue's manifests: those of the batch/job integration and of Kueue's own kinds."""
CONVERTED_CRDS = ("localqueues", "clusterqueues", "cohorts", "workloads", "multikueueclusters")
"""The CRDs whose conversion webhook Kueue's kustomization enables (config/components/crd/kustomization.yaml)."""


def kueue_source_dir() -> Path:
    """The Kueue module's sources in the Go module cache, at the version pinned in tools/kueue-bin/go.mod."""
    result = subprocess.run(
        ["go", "list", "-m", "-f", "{{.Dir}}", KUEUE_MODULE],
        cwd=REPO_ROOT / "tools" / "kueue-bin",
        env={**os.environ, "GOFLAGS": "-mod=mod"},
        capture_output=True,
        text=True,
    )
    if result.returncode != 0 or not result.stdout.strip():
        raise RuntimeError(f"cannot find the sources of {KUEUE_MODULE} (go list -m): {result.stderr.strip()}")
    return Path(result.stdout.strip())


def manager_config(webhook_port: int, health_port: int, cert_dir: Path) -> dict[str, Any]:
    """Kueue's Configuration (config.kueue.x-k8s.io/v1beta2) for one local process."""
    return {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2",
        "kind": "Configuration",
        "namespace": NAMESPACE,
        "health": {"healthProbeBindAddress": f"127.0.0.1:{health_port}"},
        "metrics": {"bindAddress": "0"},
        "webhook": {"host": "127.0.0.1", "port": webhook_port, "certDir": str(cert_dir)},
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": False},
        "manageJobsWithoutQueueName": False,
        "integrations": {"frameworks": ["batch/job"]},
        "featureGates": {"VisibilityOnDemand": False},
    }


def crds_with_local_conversion(source: Path, webhook_url: str, ca_bundle: str) -> list[dict[str, Any]]:
    """Kueue's CRDs, the conversion webhook of :data:`CONVERTED_CRDS` calling ``webhook_url``/convert."""
    crds = []
    for path in sorted((source / "config" / "components" / "crd" / "bases").glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        if crd["spec"]["names"]["plural"] in CONVERTED_CRDS:
            crd["spec"]["conversion"] = {
                "strategy": "Webhook",
                "webhook": {
                    "clientConfig": {"url": f"{webhook_url}/convert", "caBundle": ca_bundle},
                    "conversionReviewVersions": ["v1"],
                },
            }
        crds.append(crd)
    return crds


def local_webhook_configurations(source: Path, webhook_url: str, ca_bundle: str) -> list[dict[str, Any]]:
    """Kueue's mutating and validating webhook configurations, kept to :data:`SERVED_API_GROUPS` and
    calling ``webhook_url`` + each webhook's path instead of the in-cluster Service."""
    manifests = source / "config" / "components" / "webhook" / "manifests.yaml"
    configurations = []
    for doc in yaml.safe_load_all(manifests.read_text()):
        if not doc:
            continue
        kept = []
        for webhook in doc["webhooks"]:
            groups = {group for rule in webhook["rules"] for group in rule["apiGroups"]}
            if not groups <= SERVED_API_GROUPS:
                continue
            path = webhook["clientConfig"]["service"]["path"]
            webhook["clientConfig"] = {"url": f"{webhook_url}{path}", "caBundle": ca_bundle}
            kept.append(webhook)
        doc["metadata"]["name"] = f"kueue-{doc['metadata']['name']}"
        doc["webhooks"] = kept
        configurations.append(doc)
    return configurations


def in_private_etc(overlay: Path) -> list[str]:
    """The command prefix that runs a program with ``overlay`` laid over /etc, in a mount namespace of
    its own (an unprivileged user namespace, so no root needed; the host's /etc is not touched)."""
    script = 'mount -t overlay overlay -o "lowerdir=$1:/etc" /etc && shift && exec "$@"'
    return ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script, "sh", str(overlay)]


class LocalKueue(LocalService):
    """Kueue's controller manager for a :class:`LocalCluster` (which must be running)."""

    name = "Kueue"
    start_timeout = 120.0

    def __init__(self, cluster: LocalCluster, state_dir: str | Path = ".kueue"):
        self.cluster = cluster
        self.state_dir = Path(state_dir).resolve()
        self.procs = ProcessGroup(self.state_dir)
        self.source = Path()

    def _prepare(self) -> Path:
        bins = ensure_binaries("kueue")
        self.source = kueue_source_dir()
        return bins

    def _start(self, bins: Path, timeout: float) -> None:
        certs = self.state_dir / "certs"
        certs.mkdir(parents=True)
        ca_bundle = self._write_serving_certificate(certs)
        webhook_port, health_port = free_port(), free_port()
        webhook_url = f"https://127.0.0.1:{webhook_port}"

        self.cluster.kubectl("create", "namespace", NAMESPACE, check=False)
        self._apply(crds_with_local_conversion(self.source, webhook_url, ca_bundle))
        for crd in ("workloads", "clusterqueues", "localqueues", "resourceflavors"):
            wait_until(functools.partial(self._established, f"{crd}.kueue.x-k8s.io"), timeout, f"CRD {crd}")

        config = self.state_dir / "config.yaml"
        config.write_text(yaml.safe_dump(manager_config(webhook_port, health_port, certs)))
        overlay = self._metrics_certificate_overlay(certs)
        self.procs.start(
            "kueue",
            [*in_private_etc(overlay), str(bins / "kueue"), "--config", str(config), "--zap-log-level", "info"],
            env={"KUBECONFIG": str(self.cluster.kubeconfig)},
        )
        self.procs.wait_healthy({"kueue": lambda: http_ok(f"http://127.0.0.1:{health_port}/readyz")}, timeout)
        # Registered once the server answers, so that no request meets a webhook nobody serves yet.
        self._apply(local_webhook_configurations(self.source, webhook_url, ca_bundle))
        (self.state_dir / "kueue.json").write_text(json.dumps({"webhook": webhook_url}, indent=1))

    def _metrics_certificate_overlay(self, certs: Path) -> Path:
        """A folder laid over /etc for the manager only, holding ``kueue/metrics/certs/tls.{crt,key}``.

        Kueue v0.17, with its own certificate management off, reads a metrics certificate from the fixed
        path /etc/kueue/metrics/certs at start and exits when there is none (cmd/kueue/main.go, "Unable
        to initialize metrics certificate watcher"), even with metrics off. Rather than write into the
        host's /etc, the manager runs in a private mount namespace where this folder is layered over it."""
        overlay = self.state_dir / "etc-overlay"
        metrics_certs = overlay / "kueue" / "metrics" / "certs"
        metrics_certs.mkdir(parents=True)
        for name in ("tls.crt", "tls.key"):
            (metrics_certs / name).write_bytes((certs / name).read_bytes())
        return overlay

    def _established(self, crd: str) -> bool:
        # (not `kubectl wait`: it fails at once on a CRD whose status the API server has not written yet)
        query = '{.status.conditions[?(@.type=="Established")].status}'
        return self.cluster.kubectl("get", "crd", crd, "-o", f"jsonpath={query}", check=False).stdout == "True"

    def _apply(self, objects: list[dict[str, Any]]) -> None:
        # Server-side: Kueue's CRDs are too large for the last-applied annotation of a client-side apply.
        manifest = json.dumps({"apiVersion": "v1", "kind": "List", "items": objects})
        self.cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=manifest)

    @staticmethod
    def _write_serving_certificate(certs: Path) -> str:
        """A self-signed certificate for 127.0.0.1 (tls.crt, tls.key: the names controller-runtime's webhook
        server reads from its certDir); returns it base64-encoded, as the CA bundle of the webhooks."""
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
             "-subj", "/CN=kueue-webhook.local", "-addext", "subjectAltName=IP:127.0.0.1",
             "-keyout", str(certs / "tls.key"), "-out", str(certs / "tls.crt")],
            check=True, capture_output=True,
        )  # fmt: skip
        return base64.b64encode((certs / "tls.crt").read_bytes()).decode()

    def stop(self) -> list[str]:
        """Stops the manager and removes its webhook configurations (they would fail every Job create)."""
        stopped = super().stop()
        for kind in ("mutating", "validating"):
            self.cluster.kubectl("delete", f"{kind}webhookconfiguration", f"kueue-{kind}-webhook-configuration",
                                 "--ignore-not-found", check=False)  # fmt: skip
        return stopped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devenv.kueue", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["up", "down"])
    parser.add_argument("--state-dir", default=".kueue")
    parser.add_argument("--cluster-dir", default=".cluster")
    args = parser.parse_args(argv)
    kueue = LocalKueue(LocalCluster(args.cluster_dir), args.state_dir)
    if args.command == "up":
        try:
            kueue.start()
        except StartError as exc:
            print(f"kueue up failed: {exc}", file=sys.stderr)
            return 1
        print(f"Kueue up (webhooks on loopback); state in {kueue.state_dir}")
    else:
        stopped = kueue.stop()
        print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
