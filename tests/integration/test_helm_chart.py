"""The Helm chart (charts/autolabel-operator): lint, render, server-side validation, install, RBAC.

The RBAC the chart grants is compared, in both directions, with the permissions derived from the operator
itself: every API request in ``operator/autolabel_operator`` (found in its source), the watches, finalizers
and annotations of its kopf registry, and what kopf does on its own (CRD discovery, events, namespaces).
After a real ``helm install`` the API server's authorizer is asked (SubjectAccessReview) whether the
operator's ServiceAccount may do each of those things.
"""

from __future__ import annotations

import ast
import importlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from devenv.cluster import LocalCluster
from devenv.s3 import MinioServer

pytestmark = [pytest.mark.needs_cluster, pytest.mark.needs_s3]

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "charts" / "autolabel-operator"
CHART_CRD = CHART / "files" / "autolabeljobs.autolabel.dev.yaml"
GENERATED_CRD = REPO_ROOT / "crds" / "autolabeljobs.autolabel.dev.yaml"
OPERATOR_SRC = REPO_ROOT / "operator" / "autolabel_operator"
HELM_VERSION = "v3.21.4"

# Installed releases keep their operator pod unscheduled: the local node runner (started by other test
# modules) runs every pod bound to local-node as a process, and a stray cluster-wide operator would
# reconcile other tests' jobs. Unbound pods also go away at once on uninstall (no kubelet to confirm).
NEVER_SCHEDULED = {"nodeSelector": {"autolabel.dev/helm-test": "never-scheduled"}}
Perm = tuple[str, str, str]  # (API group, resource[/subresource], verb)
CLUSTER_SCOPED = {"customresourcedefinitions", "namespaces"}


# ----------------------------------------------------------------------------------------------- helm
@pytest.fixture(scope="module")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Runs the pinned Helm (built from source by tools/install-helm.sh once, cached in .cache/bin)."""
    build = subprocess.run(["bash", str(REPO_ROOT / "tools" / "install-helm.sh")], capture_output=True, text=True)
    if build.returncode != 0:
        pytest.fail(f"tools/install-helm.sh failed:\n{build.stdout}\n{build.stderr}")
    binary = Path(os.environ.get("BIN_DIR", REPO_ROOT / ".cache" / "bin")) / "helm"
    home = tmp_path_factory.mktemp("helm-home")
    env = {
        **os.environ,
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run([str(binary), *args], capture_output=True, text=True, env=env, timeout=120)
        if check and result.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
        return result

    assert run("version", "--template", "{{.Version}}").stdout.strip() == HELM_VERSION
    yield run


def _values_file(tmp_path: Path, values: dict[str, Any] | None) -> list[str]:
    if not values:
        return []
    path = tmp_path / f"values-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(values))
    return ["-f", str(path)]


def render(helm: Any, tmp_path: Path, values: dict[str, Any] | None = None, namespace: str = "autolabel",
           release: str = "al") -> list[dict[str, Any]]:
    out = helm("template", release, str(CHART), "--namespace", namespace, *_values_file(tmp_path, values)).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = find(docs, kind)
    assert len(found) == 1, f"expected one {kind}, rendered {len(found)}"
    return found[0]


# ------------------------------------------------------------------- permissions the operator needs
VERBS = {"GET": "get", "POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


def _modules() -> dict[str, ast.Module]:
    return {
        str(path.relative_to(OPERATOR_SRC)): ast.parse(path.read_text(), str(path))
        for path in sorted(OPERATOR_SRC.rglob("*.py"))
    }


def _call_name(node: ast.Call) -> str | None:
    func = node.func
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None


def _literal_args_at(trees: dict[str, ast.Module], function: str, position: int, keyword: str) -> set[str]:
    """String literals passed to ``<anything>.function(...)`` at ``position`` or as ``keyword=``."""
    found: set[str] = set()
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and _call_name(node) == function:
                arg = node.args[position] if len(node.args) > position else next(
                    (k.value for k in node.keywords if k.arg == keyword), None)
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    found.add(arg.value)
                else:
                    raise AssertionError(f"cannot resolve the {keyword!r} argument of a call to {function}()")
    return found


def _resolve(node: ast.expr, fn: ast.FunctionDef | ast.AsyncFunctionDef, module: Any, where: str,
             trees: dict[str, ast.Module]) -> set[str]:
    """The string value(s) of a ``_path()`` argument: a literal, a module constant, or a parameter of ``fn``
    (then the literals its callers pass)."""
    params = [a.arg for a in fn.args.args + fn.args.kwonlyargs]
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, ast.Name) and node.id in params:
        position = params.index(node.id) - (params[:1] == ["self"])
        return _literal_args_at(trees, fn.name, position, node.id)
    if isinstance(node, ast.Name) and hasattr(module, node.id):
        return {str(getattr(module, node.id))}
    raise AssertionError(f"{where}:{node.lineno}: cannot resolve {ast.unparse(node)}")


def api_requests() -> set[Perm]:
    """Every ``request(METHOD, _path(group_version, plural, namespace[, name]) [+ "/sub"])`` in the operator.

    A plural that is a parameter of the enclosing function is resolved at that function's call sites.
    """
    trees = _modules()
    perms: set[Perm] = set()
    for rel, tree in trees.items():
        module = importlib.import_module("autolabel_operator." + rel.removesuffix(".py").replace("/", "."))
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            assigned = {t.id: n.value for n in ast.walk(fn) if isinstance(n, ast.Assign)
                        for t in n.targets if isinstance(t, ast.Name)}
            for call in ast.walk(fn):
                if not (isinstance(call, ast.Call) and _call_name(call) == "request" and len(call.args) >= 2):
                    continue
                method, path = call.args[0], call.args[1]
                if not (isinstance(method, ast.Constant) and method.value in VERBS):
                    raise AssertionError(f"{rel}:{call.lineno}: request() with method {ast.unparse(method)}")
                if isinstance(path, ast.Name) and path.id in assigned:
                    path = assigned[path.id]
                paths = [n for n in ast.walk(path) if isinstance(n, ast.Call) and _call_name(n) == "_path"]
                assert len(paths) == 1, f"{rel}:{call.lineno}: no single _path() in {ast.unparse(path)}"
                subs = {n.value for n in ast.walk(path) if isinstance(n, ast.Constant)
                        and isinstance(n.value, str) and n.value.startswith("/")}
                optional = any(isinstance(n, ast.IfExp) for n in ast.walk(path))
                suffixes = {"/" + s.strip("/") for s in subs} | ({""} if optional or not subs else set())
                group_versions = _resolve(paths[0].args[0], fn, module, rel, trees)
                plurals = _resolve(paths[0].args[1], fn, module, rel, trees)
                named = len(paths[0].args) >= 4
                verb = VERBS[method.value]
                if method.value == "GET" and not named:
                    verb = "list"
                if method.value == "DELETE" and not named:
                    verb = "deletecollection"
                for gv in group_versions:
                    group = "" if gv == "v1" else gv.rsplit("/", 1)[0]
                    for plural in plurals:
                        perms |= {(group, plural + suffix, verb) for suffix in suffixes}
    return perms


def operator_permissions(namespaced: bool) -> set[Perm]:
    """What the operator needs: its own API requests plus what kopf does for its registry."""
    from autolabel_operator.config import Settings
    from autolabel_operator.handlers import register
    from kopf._cogs.structs import references

    perms = api_requests()
    registry = register(Settings())

    def resource(selector: Any) -> tuple[str, str]:
        return selector.group or "", selector.plural or selector.any_name

    for kind in ("_indexing", "_watching", "_spawning", "_changing"):
        for handler in getattr(registry, kind).get_all_handlers():
            group, plural = resource(handler.selector)
            perms |= {(group, plural, "list"), (group, plural, "watch")}
            if kind in ("_spawning", "_changing"):  # finalizers, progress and diff-base annotations
                perms.add((group, plural, "patch"))
                if any("blockOwnerDeletion" in ast.unparse(t) for t in _modules().values()):
                    # Children name this resource as owner with blockOwnerDeletion: the
                    # OwnerReferencesPermissionEnforcement admission plugin asks for update on finalizers.
                    perms.add((group, plural + "/finalizers", "update"))
    assert not registry._webhooks.get_all_handlers(), "admission webhooks need RBAC and a Service: add them"
    # kopf itself: resource discovery, events from handlers' logs, and (only when it serves named
    # namespaces) the namespace list.
    perms |= {(*resource(references.CRDS), v) for v in ("list", "watch")}
    perms.add((*resource(references.EVENTS), "create"))
    if namespaced:
        perms |= {(*resource(references.NAMESPACES), v) for v in ("list", "watch")}
    main = (OPERATOR_SRC / "main.py").read_text()
    assert "standalone=True" in main, "kopf peering needs kopf.dev (cluster)kopfpeerings RBAC: add it to the chart"
    return perms


def granted(rules: list[dict[str, Any]]) -> set[Perm]:
    out: set[Perm] = set()
    for rule in rules:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"], f"wildcard in {rule}"
        out |= {(g, r, v) for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    return out


def test_derivation_finds_the_operator_requests() -> None:
    """Guard against a derivation that silently finds nothing (e.g. after a refactor of kube.py)."""
    perms = api_requests()
    assert {("batch", "jobs", "create"), ("coordination.k8s.io", "leases", "update"),
            ("autolabel.dev", "autolabeljobs/status", "patch")} <= perms, perms
    assert len(perms) >= 8, perms
    # Every API call must go through Kube.request(): typed clients (CoreV1Api, ...) or other call_api()
    # users would escape this derivation.
    for rel, tree in _modules().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                name = _call_name(node) or ""
                assert not (name.endswith("Api") and name[:1].isupper()), f"{rel}:{node.lineno}: {name}()"
                if name == "call_api":
                    fn = next(f for f in ast.walk(tree) if isinstance(f, ast.AsyncFunctionDef | ast.FunctionDef)
                              and node in ast.walk(f))
                    assert fn.name == "request", f"{rel}:{node.lineno}: call_api() outside Kube.request()"


# --------------------------------------------------------------------------------- lint and render
def test_lint_strict(helm: Any, tmp_path: Path) -> None:
    for values in (None, {"watchNamespaces": ["team-a", "team-b"]},
                   {"metrics": {"serviceMonitor": {"enabled": True}}, "s3": {"credentialsSecret": "s3"}}):
        result = helm("lint", "--strict", str(CHART), *_values_file(tmp_path, values))
        assert "0 chart(s) failed" in result.stdout, result.stdout
    # The packaged chart (what a chart repository serves) carries the CRD file and renders the same.
    helm("package", str(CHART), "--destination", str(tmp_path))
    (package,) = tmp_path.glob("autolabel-operator-*.tgz")
    packaged = helm("template", "al", str(package), "--namespace", "autolabel").stdout
    assert packaged == helm("template", "al", str(CHART), "--namespace", "autolabel").stdout
    assert "kind: CustomResourceDefinition" in packaged


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"watchNamespace": ["a"]}, "watchNamespace"),  # typo of watchNamespaces
        ({"flavors": {"cpu": {"resource": {}}}}, "resource"),  # typo of resources
        ({"flavors": {"cpu": {"resources": {"requests": {"cpu": "two"}}}}}, "cpu"),
        ({"defaultFlavor": "gpu-8"}, 'defaultFlavor: "gpu-8" is not an entry of flavors (cpu, gpu-1)'),
        ({"watchNamespaces": ["Team_A"]}, "watchNamespaces"),
        ({"s3": {"endpoint": "minio:9000"}}, "endpoint"),
        ({"defaultCredentials": {"namespaces": ["Team_A"]}}, "/defaultCredentials/namespaces/0"),
        ({"defaultCredentials": {"buckets": ["s3://datasets"]}}, "/defaultCredentials/buckets/0"),
        ({"defaultCredentials": {"namespace": ["team-a"]}}, "namespace"),  # typo of namespaces
        ({"image": {"pullPolicy": "Sometimes"}}, "pullPolicy"),
        ({"metrics": {"service": {"enabled": False}, "serviceMonitor": {"enabled": True}}},
         "metrics.serviceMonitor.enabled needs metrics.service.enabled"),
    ],
)
def test_bad_values_are_rejected_naming_the_key(helm: Any, tmp_path: Path, values: dict, message: str) -> None:
    result = helm("template", "al", str(CHART), *_values_file(tmp_path, values), check=False)
    assert result.returncode != 0, "helm accepted bad values"
    assert message in result.stderr, result.stderr


def test_default_render(helm: Any, tmp_path: Path) -> None:
    docs = render(helm, tmp_path, namespace="ops")
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["ClusterRole", "ClusterRoleBinding", "ConfigMap", "CustomResourceDefinition", "Deployment",
                     "Service", "ServiceAccount"]
    for doc in docs:
        if doc["kind"] not in ("ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"):
            assert doc["metadata"]["namespace"] == "ops", doc["metadata"]

    deploy = one(docs, "Deployment")
    spec = deploy["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == one(docs, "ServiceAccount")["metadata"]["name"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["image"] == "ghcr.io/autolabel/operator:0.1.0"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"health": 8080, "metrics": 9090}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/etc/autolabel", "/tmp"} <= mounts

    service = one(docs, "Service")
    assert service["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    assert service["metadata"]["annotations"]["prometheus.io/port"] == "9090"
    assert service["spec"]["selector"].items() <= spec["template"]["metadata"]["labels"].items()


def _settings_from_render(docs: list[dict[str, Any]], tmp_path: Path, secret: dict[str, str] | None = None) -> Any:
    """The operator's own Settings, built from the rendered container env and flavor ConfigMap."""
    from autolabel_operator.config import Settings

    (container,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    flavors = one(docs, "ConfigMap")["data"]["flavors.yaml"]
    (tmp_path / "flavors.yaml").write_text(flavors)
    env: dict[str, str] = {}
    for var in container["env"]:
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            ref = var["valueFrom"]["secretKeyRef"]
            assert secret is not None and ref["name"] == "s3-creds", var
            env[var["name"]] = secret[ref["key"]]
    assert env.pop("AUTOLABEL_FLAVORS") == "/etc/autolabel/flavors.yaml"
    env["AUTOLABEL_FLAVORS"] = str(tmp_path / "flavors.yaml")
    return Settings.from_env(env)


def test_the_operator_reads_the_rendered_configuration(helm: Any, tmp_path: Path) -> None:
    """Env names and the flavor catalogue format are the operator's, parsed by its own code."""
    from autolabel_operator.config import GPU_RESOURCE

    settings = _settings_from_render(render(helm, tmp_path), tmp_path)
    assert settings.namespaces == ()
    assert settings.worker_image == "ghcr.io/autolabel/worker:0.1.0"
    assert settings.metrics_port == 9090
    assert settings.liveness == "http://0.0.0.0:8080/healthz"
    assert settings.access_key is None and settings.s3_endpoint is None
    # By default no job may use the operator's credentials, in no namespace, for no bucket.
    assert settings.default_credentials_namespaces == () and settings.allowed_buckets == ()
    assert settings.flavors.default == "gpu-1"
    gpu = settings.flavors.get("gpu-1")
    assert gpu is not None
    assert gpu.pod_resources()["requests"] == {"cpu": "8", "memory": "32Gi", GPU_RESOURCE: "1"}
    assert gpu.tolerations == [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]
    cpu = settings.flavors.get("cpu")
    assert cpu is not None and cpu.pod_resources()["requests"] == {"cpu": "2", "memory": "4Gi"}

    values = {
        "watchNamespaces": ["team-a", "team-b"],
        "s3": {"endpoint": "http://minio.storage:9000", "region": "eu-west-1", "credentialsSecret": "s3-creds"},
        "defaultCredentials": {"namespaces": ["team-a"], "buckets": ["datasets", "models.v2"]},
        "worker": {"image": {"repository": "registry.local/worker", "tag": "7", "pullPolicy": "Always"},
                   "command": "python -m autolabel_worker.entrypoint", "timeBudgetSeconds": 600},
        "reconcileIntervalSeconds": 2.5,
        "defaultFlavor": "cpu",
        "image": {"tag": "dev"},
    }
    docs = render(helm, tmp_path, values)
    settings = _settings_from_render(docs, tmp_path, {"AWS_ACCESS_KEY_ID": "ak", "AWS_SECRET_ACCESS_KEY": "sk"})
    assert settings.namespaces == ("team-a", "team-b")
    assert (settings.s3_endpoint, settings.s3_region) == ("http://minio.storage:9000", "eu-west-1")
    assert (settings.access_key, settings.secret_key) == ("ak", "sk")
    assert settings.default_credentials_namespaces == ("team-a",)
    assert settings.allowed_buckets == ("datasets", "models.v2")
    assert settings.worker_image == "registry.local/worker:7" and settings.image_pull_policy == "Always"
    assert settings.worker_command == ("python", "-m", "autolabel_worker.entrypoint")
    assert settings.time_budget_seconds == 600 and settings.reconcile_interval == 2.5
    assert settings.flavors.default == "cpu"
    assert one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"].endswith("operator:dev")


def test_flavor_change_rolls_the_operator(helm: Any, tmp_path: Path) -> None:
    """The catalogue is read at start, so its checksum is on the pod template."""

    def checksum(values: dict | None) -> str:
        pod = one(render(helm, tmp_path, values), "Deployment")["spec"]["template"]
        return pod["metadata"]["annotations"]["checksum/flavors"]

    assert checksum(None) != checksum({"flavors": {"cpu": {"resources": {"requests": {"cpu": "3"}}}}})


def test_service_monitor_is_optional(helm: Any, tmp_path: Path) -> None:
    assert not find(render(helm, tmp_path), "ServiceMonitor")
    docs = render(helm, tmp_path, {"metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "kps"}}}})
    monitor = one(docs, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kps"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= one(docs, "Service")["metadata"]["labels"].items()


# --------------------------------------------------------------------------------------------- CRD
def test_chart_crd_is_the_generated_one(helm: Any, tmp_path: Path) -> None:
    from autolabel.crd import render as render_crd

    assert CHART_CRD.read_text() == render_crd() == GENERATED_CRD.read_text(), (
        "charts/autolabel-operator/files/ holds a stale CRD: run `make crds` and copy "
        "crds/autolabeljobs.autolabel.dev.yaml there"
    )
    crd = one(render(helm, tmp_path), "CustomResourceDefinition")
    assert crd["metadata"]["annotations"].pop("helm.sh/resource-policy") == "keep"
    if not crd["metadata"]["annotations"]:
        del crd["metadata"]["annotations"]
    chart_labels = {"helm.sh/chart", "app.kubernetes.io/name", "app.kubernetes.io/instance",
                    "app.kubernetes.io/version", "app.kubernetes.io/managed-by", "app.kubernetes.io/part-of"}
    generated = yaml.safe_load(GENERATED_CRD.read_text())
    for key in chart_labels - set(generated["metadata"].get("labels") or {}):
        del crd["metadata"]["labels"][key]
    if not crd["metadata"]["labels"]:
        del crd["metadata"]["labels"]
    assert crd == generated  # the template changed nothing else (numbers, strings, CEL rules)
    assert not find(render(helm, tmp_path, {"crds": {"install": False}}), "CustomResourceDefinition")


# -------------------------------------------------------------------------------------------- RBAC
def test_cluster_role_grants_exactly_what_the_operator_uses(helm: Any, tmp_path: Path) -> None:
    docs = render(helm, tmp_path)
    assert not find(docs, "Role")
    role = one(docs, "ClusterRole")
    need = operator_permissions(namespaced=False)
    have = granted(role["rules"])
    assert not need - have, f"the ClusterRole lacks {sorted(need - have)}"
    assert not have - need, f"the ClusterRole grants more than the operator uses: {sorted(have - need)}"
    binding = one(docs, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": one(docs, "ServiceAccount")["metadata"]["name"],
                                    "namespace": "autolabel"}]


def test_watch_namespaces_gives_roles_in_those_namespaces_only(helm: Any, tmp_path: Path) -> None:
    docs = render(helm, tmp_path, {"watchNamespaces": ["team-a", "team-b"]})
    need = operator_permissions(namespaced=True)
    cluster_need = {p for p in need if p[1] in CLUSTER_SCOPED}
    roles = find(docs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    for role in roles:
        have = granted(role["rules"])
        assert have == need - cluster_need, (sorted(need - cluster_need - have), sorted(have - need))
    assert sorted(b["metadata"]["namespace"] for b in find(docs, "RoleBinding")) == ["team-a", "team-b"]
    assert granted(one(docs, "ClusterRole")["rules"]) == cluster_need
    assert cluster_need == {("apiextensions.k8s.io", "customresourcedefinitions", "list"),
                            ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
                            ("", "namespaces", "list"), ("", "namespaces", "watch")}


# ------------------------------------------------------------------------------- real API server
def _server_dry_run(cluster: LocalCluster, docs: list[dict[str, Any]]) -> str:
    result = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump_all(docs), check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_every_rendered_object_is_accepted_by_the_api_server(
    helm: Any, tmp_path: Path, cluster: LocalCluster, namespace: str
) -> None:
    other = f"{namespace}-b"
    cluster.kubectl("create", "namespace", other)
    try:
        release = f"r{uuid.uuid4().hex[:6]}"
        docs = render(helm, tmp_path, {"s3": {"credentialsSecret": "s3-creds", "endpoint": "http://minio:9000"}},
                      namespace=namespace, release=release)
        out = _server_dry_run(cluster, docs)
        assert out.count("(server dry run)") == len(docs), out
        docs = render(helm, tmp_path, {"watchNamespaces": [namespace, other]}, namespace=namespace, release=release)
        out = _server_dry_run(cluster, docs)
        assert out.count("(server dry run)") == len(docs), out
    finally:
        cluster.kubectl("delete", "namespace", other, "--wait=false", check=False)


def _access_reviews(cluster: LocalCluster, user: str, namespace: str, perms: set[Perm]) -> dict[Perm, bool]:
    """Ask the API server's authorizer, in one request per permission (one kubectl call)."""
    ordered = sorted(perms)
    items = []
    for group, resource, verb in ordered:
        plural, _, sub = resource.partition("/")
        attrs = {"group": group, "resource": plural, "verb": verb}
        if sub:
            attrs["subresource"] = sub
        if plural not in CLUSTER_SCOPED:
            attrs["namespace"] = namespace
        items.append({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
                      "spec": {"user": user, "groups": ["system:serviceaccounts", "system:authenticated"],
                               "resourceAttributes": attrs}})
    out = cluster.kubectl("create", "-o", "json", "-f", "-",
                          input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items})).stdout
    results, decoder, at = [], json.JSONDecoder(), 0  # kubectl prints one JSON object per created item
    while out[at:].strip():
        obj, end = decoder.raw_decode(out, at + len(out[at:]) - len(out[at:].lstrip()))
        results.extend(obj.get("items", [obj]))
        at = end
    return {perm: bool(r["status"].get("allowed")) for perm, r in zip(ordered, results, strict=True)}


def test_helm_install_grants_the_service_account_what_the_operator_uses(
    helm: Any, tmp_path: Path, cluster: LocalCluster, namespace: str
) -> None:
    release = f"r{uuid.uuid4().hex[:6]}"
    kube = ["--kubeconfig", str(cluster.kubeconfig), "--namespace", namespace]
    # The session's CRD is applied by the test fixture (not owned by a release): the chart leaves it alone.
    values = _values_file(tmp_path, {"crds": {"install": False}, **NEVER_SCHEDULED})
    helm("install", release, str(CHART), *kube, *values, "--timeout", "60s")
    try:
        status = json.loads(helm("status", release, *kube, "-o", "json").stdout)
        assert status["info"]["status"] == "deployed"
        deploy = json.loads(cluster.kubectl("get", "deployment", "-n", namespace, "-o", "json").stdout)["items"]
        assert [d["metadata"]["name"] for d in deploy] == [f"{release}-autolabel-operator"]

        def unschedulable() -> bool:
            found = _get(cluster, namespace, "pods", "-l", f"app.kubernetes.io/instance={release}") or {}
            pods: list[dict[str, Any]] = found.get("items") or []
            return bool(pods) and all(
                c["type"] == "PodScheduled" and c["reason"] == "Unschedulable"
                for pod in pods for c in pod["status"].get("conditions", []))

        _wait(unschedulable, 30, "the operator pod to be refused by the scheduler (NEVER_SCHEDULED)")
        sa = f"system:serviceaccount:{namespace}:{release}-autolabel-operator"
        need = operator_permissions(namespaced=False)
        for ns in (namespace, "default"):  # cluster-wide: any namespace
            answers = _access_reviews(cluster, sa, ns, need)
            assert all(answers.values()), f"denied in {ns}: {[p for p, ok in answers.items() if not ok]}"
        extra = {("", "secrets", "list"), ("autolabel.dev", "autolabeljobs", "delete"), ("", "pods", "delete"),
                 ("", "nodes", "list"), ("batch", "jobs", "update")}
        answers = _access_reviews(cluster, sa, namespace, extra)
        assert not any(answers.values()), f"allowed but not needed: {[p for p, ok in answers.items() if ok]}"
    finally:
        helm("uninstall", release, *kube, "--timeout", "60s")
    left = cluster.kubectl("get", "clusterrole", f"{release}-autolabel-operator", check=False)
    assert left.returncode != 0, "helm uninstall left the ClusterRole"


def test_helm_install_with_watch_namespaces_confines_the_operator(
    helm: Any, tmp_path: Path, cluster: LocalCluster, namespace: str
) -> None:
    release = f"r{uuid.uuid4().hex[:6]}"
    kube = ["--kubeconfig", str(cluster.kubeconfig), "--namespace", namespace]
    values = _values_file(tmp_path, {"watchNamespaces": [namespace], "crds": {"install": False}, **NEVER_SCHEDULED})
    helm("install", release, str(CHART), *kube, *values, "--timeout", "60s")
    try:
        sa = f"system:serviceaccount:{namespace}:{release}-autolabel-operator"
        need = operator_permissions(namespaced=True)
        answers = _access_reviews(cluster, sa, namespace, need)
        assert all(answers.values()), f"denied: {[p for p, ok in answers.items() if not ok]}"
        namespaced = {p for p in need if p[1] not in CLUSTER_SCOPED}
        elsewhere = _access_reviews(cluster, sa, "default", namespaced)
        assert not any(elsewhere.values()), f"allowed outside: {[p for p, ok in elsewhere.items() if ok]}"
    finally:
        helm("uninstall", release, *kube, "--timeout", "60s")


# ------------------------------------------------- the operator itself, as the chart's ServiceAccount
def _wait(check: Any, timeout: float, what: str, log: Path | None = None) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.3)
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:]) if log else ""
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r}); operator log:\n{tail}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(cluster: LocalCluster, namespace: str, *what: str) -> dict[str, Any] | None:
    result = cluster.kubectl("get", *what, "-n", namespace, "-o", "json", check=False)
    return json.loads(result.stdout) if result.returncode == 0 else None


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def test_the_operator_works_with_only_the_charts_permissions(
    helm: Any, tmp_path: Path, cluster: LocalCluster, namespace: str, s3_server: MinioServer
) -> None:
    """The real operator, configured by the rendered Deployment's env and flavor catalogue and
    authenticated as the chart's ServiceAccount (namespaced mode, so it serves only this test's
    namespace), takes a job through lock, Job creation, suspend and deletion, with no request refused."""
    bucket = f"helm-{uuid.uuid4().hex[:8]}"
    s3_server.make_bucket(bucket)
    lines = [json.dumps({"source": f"img/{label}{i}.png",
                         "annotation": [{"type": "modelarts/image_classification", "name": label}]})
             for label in ("cat", "dog") for i in range(5)]
    lines += [json.dumps({"source": f"img/u{i}.png"}) for i in range(3)]
    s3_server.client().put_object(Bucket=bucket, Key="ds/data.manifest", Body="\n".join(lines).encode())
    cluster.kubectl("create", "secret", "generic", "s3-creds", "-n", namespace,
                    f"--from-literal=AWS_ACCESS_KEY_ID={s3_server.access_key}",
                    f"--from-literal=AWS_SECRET_ACCESS_KEY={s3_server.secret_key}")

    release = f"r{uuid.uuid4().hex[:6]}"
    values = {"watchNamespaces": [namespace], "crds": {"install": False},
              "s3": {"endpoint": s3_server.endpoint_url, "region": "us-east-1", "credentialsSecret": "s3-creds"},
              "defaultCredentials": {"namespaces": [namespace], "buckets": [bucket]},
              "reconcileIntervalSeconds": 1, **NEVER_SCHEDULED}
    kube = ["--kubeconfig", str(cluster.kubeconfig), "--namespace", namespace]
    helm("install", release, str(CHART), *kube, *_values_file(tmp_path, values), "--timeout", "60s")
    operator: subprocess.Popen[bytes] | None = None
    log = tmp_path / "operator.log"
    try:
        docs = render(helm, tmp_path, values, namespace=namespace, release=release)
        (container,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
        sa = one(docs, "ServiceAccount")["metadata"]["name"]
        token = cluster.kubectl("create", "token", sa, "-n", namespace, "--duration=10m").stdout.strip()
        kubeconfig = yaml.safe_load(cluster.kubeconfig.read_text())
        kubeconfig["users"] = [{"name": kubeconfig["users"][0]["name"], "user": {"token": token}}]
        (tmp_path / "kubeconfig").write_text(yaml.safe_dump(kubeconfig))
        (tmp_path / "flavors.yaml").write_text(one(docs, "ConfigMap")["data"]["flavors.yaml"])
        secret = {"AWS_ACCESS_KEY_ID": s3_server.access_key, "AWS_SECRET_ACCESS_KEY": s3_server.secret_key}
        env = {var["name"]: var["value"] if "value" in var else secret[var["valueFrom"]["secretKeyRef"]["key"]]
               for var in container["env"]}
        health, metrics = _free_port(), _free_port()
        env.update({  # what differs between the pod and a local process: files, ports, credentials
            "AUTOLABEL_FLAVORS": str(tmp_path / "flavors.yaml"),
            "AUTOLABEL_METRICS_PORT": str(metrics),
            "AUTOLABEL_LIVENESS": env["AUTOLABEL_LIVENESS"].replace("0.0.0.0:8080", f"127.0.0.1:{health}"),
            "KUBECONFIG": str(tmp_path / "kubeconfig"),
            "HOME": str(tmp_path),
            "PATH": os.environ["PATH"],
        })
        with open(log, "wb") as out:
            operator = subprocess.Popen([sys.executable, "-m", "autolabel_operator.main"], env=env, stdout=out,
                                        stderr=subprocess.STDOUT, cwd=REPO_ROOT, start_new_session=True)
        _wait(lambda: _healthy(f"http://127.0.0.1:{health}/healthz"), 60, "the liveness endpoint /healthz", log)
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5) as response:
            assert "autolabel_jobs" in response.read().decode()  # what the metrics Service exposes

        job = {"apiVersion": "autolabel.dev/v1alpha1", "kind": "AutoLabelJob", "metadata": {"name": "chart"},
               "spec": {"task": "ImageClassification", "mode": "ActiveLearning",
                        "dataset": {"manifest": f"s3://{bucket}/ds/data.manifest"}, "resources": {"flavor": "cpu"}}}
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(job))
        status = _wait(lambda: ((_get(cluster, namespace, "autolabeljob", "chart") or {}).get("status") or {})
                       .get("jobName"), 60, "the worker Job's name in the status", log)
        worker = _wait(lambda: _get(cluster, namespace, "job", status), 30, f"Job {status}", log)
        requests = worker["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]
        assert requests == {"cpu": "2", "memory": "4Gi"}, requests  # the chart's `cpu` flavor

        cluster.kubectl("patch", "autolabeljob", "chart", "-n", namespace, "--type=merge",
                        "-p", '{"spec": {"suspend": true}}')
        _wait(lambda: (_get(cluster, namespace, "job", status) or {}).get("spec", {}).get("suspend"), 30,
              "the Job to be suspended", log)
        cluster.kubectl("delete", "autolabeljob", "chart", "-n", namespace, "--timeout=60s")
        _wait(lambda: _get(cluster, namespace, "autolabeljob", "chart") is None, 30, "deletion", log)
        assert operator.poll() is None, "the operator exited"
    finally:
        if operator is not None and operator.poll() is None:
            os.killpg(operator.pid, signal.SIGTERM)
            try:
                operator.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(operator.pid, signal.SIGKILL)
                operator.wait(10)
        helm("uninstall", release, *kube, "--timeout", "60s")
    text = log.read_text(errors="replace")
    # A whole-word 403: the random metrics port (e.g. 40353) in the startup line is not a refusal.
    refusal = re.compile(r"[Ff]orbidden|\b403\b|Not enough permissions")
    refused = [line for line in text.splitlines() if refusal.search(line)]
    assert not refused, "requests refused to the chart's ServiceAccount:\n" + "\n".join(refused[:20])


def test_existing_service_account_without_rbac(helm: Any, tmp_path: Path) -> None:
    """For clusters where RBAC is managed by hand: the chart creates neither, and uses the named account."""
    docs = render(helm, tmp_path, {"serviceAccount": {"create": False, "name": "ops-autolabel"},
                                   "rbac": {"create": False}})
    assert not {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"} & {
        d["kind"] for d in docs}
    assert one(docs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "ops-autolabel"
    result = helm("template", "al", str(CHART), "--set", "serviceAccount.create=false", check=False)
    assert result.returncode != 0 and "serviceAccount.name is required" in result.stderr, result.stderr
