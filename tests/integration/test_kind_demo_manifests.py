"""`make kind-demo` (tools/kind-demo.sh): what can be checked without Docker.

kind cannot run here, so the script itself is never run by these tests. What is checked: its syntax
(`bash -n`), that every repository path it names exists, that every manifest it applies — the static YAML
under deploy/kind-demo/ and examples/digits-al.yaml, and the chart rendered by `helm template` with the
demo's values — is accepted by `kubectl apply --dry-run=server` on the local control plane, and that the
names the pieces share (namespaces, bucket, images, the MinIO Service and Secret) agree.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from devenv.cluster import LocalCluster

pytestmark = pytest.mark.needs_cluster

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "tools" / "kind-demo.sh"
DEMO_DIR = REPO_ROOT / "deploy" / "kind-demo"
VALUES = DEMO_DIR / "values.yaml"
CHART = REPO_ROOT / "charts" / "autolabel-operator"
HELM = Path(os.environ.get("BIN_DIR", REPO_ROOT / ".cache" / "bin")) / "helm"

# A repository path as the script writes it (relative to the repository root, where it cd's first).
REPO_PATH = re.compile(
    r"(?<![\w/.$-])((?:deploy|examples|charts|operator|job_image|tools|crds)/[\w./-]*\w|kind-config\.yaml)"
)
# `k apply -n "$NS" -f deploy/kind-demo/minio.yaml`: (namespace variable, file).
APPLY = re.compile(r'^\s*k apply -n "\$(\w+)" -f (\S+)\s*$', re.MULTILINE)


def script_text() -> str:
    return SCRIPT.read_text()


def script_var(name: str) -> str:
    match = re.search(rf"^{name}=(\S+)", script_text(), re.MULTILINE)
    assert match, f"{name}= not found in {SCRIPT}"
    return match.group(1)


def applied() -> list[tuple[str, Path]]:
    """The static manifests the script applies, with the namespace each goes to."""
    return [(script_var(var), REPO_ROOT / path) for var, path in APPLY.findall(script_text())]


def load(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def dry_run(cluster: LocalCluster, namespace: str, docs: list[dict[str, Any]]) -> str:
    result = cluster.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", "-",
                             input=yaml.safe_dump_all(docs), check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def helm_template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    if not HELM.exists():
        pytest.fail(f"{HELM} is missing: run `make bins` (tools/install-helm.sh)")
    home = tmp_path_factory.mktemp("helm-home")
    env = {**os.environ, "HELM_CACHE_HOME": str(home / "cache"), "HELM_CONFIG_HOME": str(home / "config"),
           "HELM_DATA_HOME": str(home / "data")}

    def render(namespace: str) -> list[dict[str, Any]]:
        result = subprocess.run([str(HELM), "template", "autolabel", str(CHART), "--namespace", namespace,
                                 "-f", str(VALUES)], capture_output=True, text=True, env=env, timeout=120)
        assert result.returncode == 0, result.stderr
        return [doc for doc in yaml.safe_load_all(result.stdout) if doc]

    yield render


# ------------------------------------------------------------------------------------ the script
def test_script_parses() -> None:
    result = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_script_names_only_files_that_exist() -> None:
    # `deploy/minio` (one slash) is kubectl's short name for a Deployment, not a path under deploy/.
    paths = {p for p in REPO_PATH.findall(script_text()) if not re.fullmatch(r"deploy/[\w-]+", p)}
    assert {"operator/Dockerfile", "job_image/Dockerfile", "kind-config.yaml", "charts/autolabel-operator",
            "deploy/kind-demo/values.yaml", "examples/digits-al.yaml"} <= paths, paths
    missing = sorted(p for p in paths if not (REPO_ROOT / p).exists())
    assert not missing, f"{SCRIPT.name} names files that do not exist: {missing}"
    make = (REPO_ROOT / "Makefile").read_text()
    assert re.search(r"^kind-demo:.*\n\tbash tools/kind-demo\.sh$", make, re.MULTILINE)


def test_every_demo_manifest_is_applied() -> None:
    files = {path for _, path in applied()}
    assert files == {DEMO_DIR / "minio.yaml", DEMO_DIR / "upload-digits-job.yaml",
                     REPO_ROOT / "examples" / "digits-al.yaml"}, files
    assert set(DEMO_DIR.glob("*.yaml")) - {VALUES} <= files, "a manifest in deploy/kind-demo/ is never applied"


# ----------------------------------------------------------------------------- names that agree
def test_the_pieces_agree_on_names() -> None:
    values = yaml.safe_load(VALUES.read_text())
    ns, demo_ns = script_var("NS"), script_var("DEMO_NS")
    minio = {d["kind"]: d for d in load(DEMO_DIR / "minio.yaml")}
    job = load(DEMO_DIR / "upload-digits-job.yaml")[0]
    alj = load(REPO_ROOT / "examples" / "digits-al.yaml")[0]
    bucket = alj["spec"]["dataset"]["manifest"].removeprefix("s3://").split("/")[0]

    assert values["defaultCredentials"] == {"namespaces": [demo_ns], "buckets": [bucket]}
    assert alj["spec"]["output"].startswith(f"s3://{bucket}/")
    assert values["s3"]["endpoint"] == f"http://{minio['Service']['metadata']['name']}.{ns}.svc.cluster.local:9000"
    assert values["s3"]["credentialsSecret"] == minio["Secret"]["metadata"]["name"]
    assert set(minio["Secret"]["stringData"]) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    images = {"operator": f"{values['image']['repository']}:{values['image']['tag']}",
              "worker": f"{values['worker']['image']['repository']}:{values['worker']['image']['tag']}"}
    assert images == {"operator": script_var("OPERATOR_IMAGE"), "worker": script_var("WORKER_IMAGE")}
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == images["worker"] and container["imagePullPolicy"] == "Never"
    assert container["envFrom"] == [{"secretRef": {"name": minio["Secret"]["metadata"]["name"]}}]
    assert f'"{bucket}"' in container["args"][0] and "ensure_digits_dataset" in container["args"][0]
    assert minio["Deployment"]["spec"]["template"]["spec"]["containers"][0]["image"].startswith(
        "quay.io/minio/minio:RELEASE.")


# ---------------------------------------------------------------------------- real API server
def test_static_manifests_are_accepted_by_the_api_server(cluster: LocalCluster, namespace: str) -> None:
    for _, path in applied():
        docs = load(path)
        # The script puts each file in its namespace with -n: an object naming its own would go elsewhere.
        assert all("namespace" not in d["metadata"] for d in docs), path
        out = dry_run(cluster, namespace, docs)
        assert out.count("(server dry run)") == len(docs), out


def test_chart_with_the_demo_values_is_accepted_by_the_api_server(
    helm_template: Any, cluster: LocalCluster, namespace: str
) -> None:
    docs = helm_template(namespace)
    kinds = sorted(d["kind"] for d in docs)
    # The CRD is in the chart (crds.install, as on a fresh kind cluster) and also already applied from crds/
    # by the cluster fixture: the dry run is then an update of the same object, which the server accepts.
    assert "CustomResourceDefinition" in kinds and "Deployment" in kinds, kinds
    out = dry_run(cluster, namespace, docs)
    assert out.count("(server dry run)") == len(docs), out

    deployment = next(d for d in docs if d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert container["image"] == script_var("OPERATOR_IMAGE") and container["imagePullPolicy"] == "Never"
    assert env["AUTOLABEL_WORKER_IMAGE"] == script_var("WORKER_IMAGE")
    assert env["AUTOLABEL_IMAGE_PULL_POLICY"] == "Never"
    assert env["AUTOLABEL_DEFAULT_CREDENTIALS_NAMESPACES"] == script_var("DEMO_NS")
    assert env["AUTOLABEL_ALLOWED_BUCKETS"] == "datasets"
    assert env["AUTOLABEL_S3_ENDPOINT"] == "http://minio.autolabel.svc.cluster.local:9000"
