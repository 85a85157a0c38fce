"""The operator's rights are not the users' rights (issue 10): RBAC and secrets on the real local control plane.

- The operator's ServiceAccount as the Helm chart installs it may do what the operator needs and no more
  (``kubectl auth can-i --as``); the worker pods' ServiceAccount (the job namespace's ``default``, with no
  token mounted) may do nothing against the API.
- A user in namespace A (a ServiceAccount with a Role on Secrets and pods in A only), where the operator's
  credentials are not allowed, cannot get at the operator's keys: a job there without its own Secret fails
  with ``CredentialsRequired`` and leaves no copy of them in A, and the user cannot read Secrets in the
  operator's namespace.
- After a full fake-worker run in an allowed namespace (and refused endpoint and bucket), no status, no
  Event and no line of the operator's (debug) log contains the keys.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions
import pytest
import yaml
from devenv.cluster import LocalCluster
from devenv.s3 import MinioServer

from .operator_fixtures import (
    BUCKET,
    OperatorProcess,
    Process,
    apply,
    condition,
    dataset,
    get,
    job_manifest,
    manifest_lines,
    put,
    wait_phase,
)
from .test_helm_chart import CHART, NEVER_SCHEDULED, _values_file
from .test_helm_chart import helm as helm  # the fixture: builds/runs the pinned Helm

pytestmark = [pytest.mark.needs_cluster, pytest.mark.needs_s3]

FAST = {"fakeworker.autolabel.dev/seconds": "0.3"}


def can_i(cluster: LocalCluster, who: str, verb: str, resource: str, *where: str) -> bool:
    """``kubectl auth can-i VERB RESOURCE --as WHO`` (impersonating a ServiceAccount adds its groups); for
    a resource this cluster does not serve (Kueue's), a SubjectAccessReview, since kubectl cannot map it."""
    result = cluster.kubectl("auth", "can-i", verb, resource, "--as", who, *where, check=False)
    if "doesn't have a resource type" in result.stderr:
        return access_review(cluster, who, verb, resource, *where)
    answer = result.stdout.strip()
    assert answer in ("yes", "no"), f"kubectl auth can-i {verb} {resource} {where}: {result.stdout}{result.stderr}"
    return answer == "yes"


def access_review(cluster: LocalCluster, who: str, verb: str, resource: str, *where: str) -> bool:
    """RBAC's answer for ServiceAccount ``who`` (``system:serviceaccount:NS:NAME``) on ``plural.group`` in
    the namespace of ``-n NS`` (the groups are those the API server gives a ServiceAccount)."""
    plural, group = resource.split(".", 1)
    namespace = where[where.index("-n") + 1] if "-n" in where else ""
    sa_namespace = who.split(":")[2]
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {
            "user": who,
            "groups": ["system:serviceaccounts", f"system:serviceaccounts:{sa_namespace}", "system:authenticated"],
            "resourceAttributes": {"verb": verb, "group": group, "resource": plural, "namespace": namespace},
        },
    }
    out = cluster.kubectl("create", "-f", "-", "-o", "json", input=json.dumps(review))
    return bool(json.loads(out.stdout)["status"].get("allowed"))


def denied(cluster: LocalCluster, who: str, checks: list[tuple[str, ...]]) -> list[tuple[str, ...]]:
    return [c for c in checks if can_i(cluster, who, *c)]


def allowed(cluster: LocalCluster, who: str, checks: list[tuple[str, ...]]) -> list[tuple[str, ...]]:
    return [c for c in checks if not can_i(cluster, who, *c)]


@pytest.fixture
def more_namespaces(cluster: LocalCluster) -> Iterator[Any]:
    made: list[str] = []

    def make(prefix: str) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        cluster.kubectl("create", "namespace", name)
        made.append(name)
        return name

    yield make
    for name in made:
        cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


# ------------------------------------------------------------------------- the chart's ServiceAccount
def test_the_charts_operator_account_may_do_what_the_operator_needs_and_no_more(
    helm: Any, tmp_path: Path, cluster: LocalCluster, namespace: str, more_namespaces: Any
) -> None:
    team = more_namespaces("team")
    release = f"r{uuid.uuid4().hex[:6]}"
    kube = ["--kubeconfig", str(cluster.kubeconfig), "--namespace", namespace]
    values = {"crds": {"install": False}, "s3": {"credentialsSecret": "s3-credentials"},
              "defaultCredentials": {"namespaces": [team], "buckets": [BUCKET]}, **NEVER_SCHEDULED}  # fmt: skip
    helm("install", release, str(CHART), *kube, *_values_file(tmp_path, values), "--timeout", "60s")
    try:
        sa = f"system:serviceaccount:{namespace}:{release}-autolabel-operator"
        in_team = ("-n", team)
        needs = [
            ("patch", "autolabeljobs.autolabel.dev", "--subresource=status", *in_team),
            ("patch", "autolabeljobs.autolabel.dev", *in_team),
            ("watch", "autolabeljobs.autolabel.dev", "-A"),
            ("create", "jobs.batch", *in_team),
            ("delete", "jobs.batch", *in_team),
            ("get", "leases.coordination.k8s.io", *in_team),
            ("create", "leases.coordination.k8s.io", *in_team),
            ("update", "leases.coordination.k8s.io", *in_team),
            ("create", "configmaps", *in_team),
            ("create", "events", *in_team),
            ("list", "workloads.kueue.x-k8s.io", *in_team),
            ("patch", "workloads.kueue.x-k8s.io", *in_team),
            ("watch", "pods", "-A"),
            # Intended (charts/autolabel-operator/README.md, RBAC): it reads the Secret a job names in
            # spec.storage.secretRef, by name, and creates the per-job copy in allowed namespaces.
            ("get", "secrets", *in_team),
            ("create", "secrets", *in_team),
        ]
        assert not allowed(cluster, sa, needs), f"the operator may not: {allowed(cluster, sa, needs)}"
        never = [
            ("delete", "namespaces"),
            ("create", "namespaces"),
            ("list", "secrets", "-A"),  # no reading Secrets cluster-wide: by name only
            ("watch", "secrets", "-A"),
            ("list", "secrets", *in_team),
            ("delete", "secrets", *in_team),
            ("create", "pods", *in_team),
            ("create", "pods", "--subresource=exec", *in_team),
            ("get", "pods", "--subresource=log", *in_team),
            ("delete", "autolabeljobs.autolabel.dev", *in_team),
            ("update", "jobs.batch", *in_team),
            ("delete", "leases.coordination.k8s.io", *in_team),
            ("create", "serviceaccounts", "--subresource=token", *in_team),
            ("impersonate", "serviceaccounts"),
            ("create", "rolebindings.rbac.authorization.k8s.io", *in_team),
            ("create", "clusterrolebindings.rbac.authorization.k8s.io"),
            ("bind", "clusterroles.rbac.authorization.k8s.io"),
            ("escalate", "roles.rbac.authorization.k8s.io", *in_team),
            ("get", "nodes"),
            ("create", "customresourcedefinitions.apiextensions.k8s.io"),
        ]
        assert not denied(cluster, sa, never), f"the operator may, but should not: {denied(cluster, sa, never)}"
        # What the Deployment gives the operator process: the allow lists, as the operator reads them.
        docs = yaml.safe_load_all(helm("get", "manifest", release, *kube).stdout)
        deploy = next(d for d in docs if d and d["kind"] == "Deployment")
        env = {e["name"]: e.get("value") for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["AUTOLABEL_DEFAULT_CREDENTIALS_NAMESPACES"] == team and env["AUTOLABEL_ALLOWED_BUCKETS"] == BUCKET
    finally:
        helm("uninstall", release, *kube, "--timeout", "60s")


def test_a_job_namespaces_default_account_which_the_worker_pods_run_as_may_do_nothing(
    cluster: LocalCluster, namespace: str
) -> None:
    worker = f"system:serviceaccount:{namespace}:default"
    anything = [
        (verb, resource, "-n", namespace)
        for resource in ("pods", "secrets", "configmaps", "leases.coordination.k8s.io", "jobs.batch",
                         "autolabeljobs.autolabel.dev", "events", "serviceaccounts")
        for verb in ("get", "list", "create", "update", "delete")
    ] + [("create", "serviceaccounts", "--subresource=token", "-n", namespace), ("list", "secrets", "-A"),
         ("get", "nodes"), ("list", "namespaces")]  # fmt: skip
    assert not denied(cluster, worker, anything), f"the worker's account may: {denied(cluster, worker, anything)}"


# --------------------------------------------------------------- users, and the operator's keys in a real run
def _secret_values(cluster: LocalCluster, namespace: str, *as_user: str) -> list[str]:
    result = cluster.kubectl("get", "secrets", "-n", namespace, "-o", "json", *as_user)
    return [base64.b64decode(v).decode(errors="replace")
            for item in json.loads(result.stdout)["items"] for v in (item.get("data") or {}).values()]  # fmt: skip


def test_a_user_where_the_operators_keys_are_not_allowed_cannot_get_them_and_no_run_leaks_them(
    cluster: LocalCluster,
    namespace: str,
    more_namespaces: Any,
    s3_server: MinioServer,
    s3_bucket: str,
    operator_node_runner: Process,
    tmp_path: Path,
) -> None:
    keys = (s3_server.access_key, s3_server.secret_key)
    user_ns, allowed_ns, operator_ns = namespace, more_namespaces("allowed"), more_namespaces("operator")
    # The operator's keys where the chart keeps them (s3.credentialsSecret), in the operator's namespace.
    cluster.kubectl(
        "create",
        "secret",
        "generic",
        "s3-credentials",
        "-n",
        operator_ns,
        f"--from-literal=AWS_ACCESS_KEY_ID={keys[0]}",
        f"--from-literal=AWS_SECRET_ACCESS_KEY={keys[1]}",
    )
    # A user of namespace A: Secrets and pods in A, and AutoLabelJobs there; nothing elsewhere.
    user = f"system:serviceaccount:{user_ns}:alice"
    cluster.kubectl("create", "serviceaccount", "alice", "-n", user_ns)
    cluster.kubectl("create", "role", "alice", "-n", user_ns, "--verb=*", "--resource=secrets,pods,pods/log",
                    "--resource=autolabeljobs.autolabel.dev")  # fmt: skip
    cluster.kubectl("create", "rolebinding", "alice", "-n", user_ns, "--role=alice",
                    f"--serviceaccount={user_ns}:alice")  # fmt: skip

    op = OperatorProcess(cluster, s3_server, tmp_path)
    op.argv.append("--verbose")  # the log at its most talkative: debug lines too must not carry the keys
    op.env.update({
        "AUTOLABEL_NAMESPACES": f"{user_ns},{allowed_ns}",
        "AUTOLABEL_DEFAULT_CREDENTIALS_NAMESPACES": allowed_ns,
        "AUTOLABEL_ALLOWED_BUCKETS": s3_bucket,
    })  # fmt: skip
    op.start()
    try:
        manifest = dataset(s3_server)
        # In A: no secretRef, so no credentials at all for it.
        cluster.kubectl("apply", "-n", user_ns, "-f", "-", "--as", user, input=job_manifest("mine", manifest, FAST))
        obj = wait_phase(cluster, user_ns, "mine", {"Failed", "Succeeded"}, timeout=60)
        cond = condition(obj, "PreconditionsMet")
        assert obj["status"]["phase"] == "Failed" and cond["reason"] == "CredentialsRequired", obj["status"]
        assert "spec.storage.secretRef" in cond["message"] and repr(user_ns) in cond["message"], cond["message"]
        assert not (get(cluster, user_ns, "jobs") or {}).get("items"), "a worker Job was created in A"
        # Nothing in A carries the operator's keys: not as the admin sees it, not as the user sees it.
        for values in (_secret_values(cluster, user_ns), _secret_values(cluster, user_ns, "--as", user)):
            assert not [v for v in values if any(k in v for k in keys)], "the operator's keys are in a Secret of A"
        assert can_i(cluster, user, "get", "secrets", "-n", user_ns)  # the user's Role works...
        where_keys_live = [("get", "secrets", "-n", operator_ns), ("list", "secrets", "-n", operator_ns),
                           ("get", "secrets", "-n", allowed_ns), ("create", "pods", "-n", allowed_ns),
                           ("create", "pods", "-n", operator_ns), ("list", "secrets", "-A")]  # fmt: skip
        assert not denied(cluster, user, where_keys_live), denied(cluster, user, where_keys_live)  # ...in A only
        refused = cluster.kubectl("get", "secret", "s3-credentials", "-n", operator_ns, "--as", user, check=False)
        assert refused.returncode != 0 and "forbidden" in refused.stderr, refused.stderr

        # In the allowed namespace: a full run on the operator's keys, and the endpoint and bucket refusals.
        foreign_line = put(
            s3_server,
            f"x-{uuid.uuid4().hex[:6]}/data.manifest",
            "\n".join(
                [*manifest_lines({"cat": 5, "dog": 5}, 1), '{"source": "s3://other-bucket/secret.png"}']
            ).encode(),
        )
        apply(cluster, allowed_ns, "---\n".join([
            job_manifest("runs", manifest, FAST),
            job_manifest("elsewhere", manifest, FAST, storage={"endpoint": "http://127.0.0.1:9"}),
            job_manifest("other-bucket", foreign_line, FAST),
        ]))  # fmt: skip
        done = wait_phase(cluster, allowed_ns, "runs", {"Failed", "Succeeded"}, timeout=120)
        assert done["status"]["phase"] == "Succeeded", done["status"]
        expected = {
            "elsewhere": ("EndpointNotAllowed", "spec.storage.endpoint 'http://127.0.0.1:9'"),
            "other-bucket": ("BucketNotAllowed", 'line 12: "source" s3://other-bucket/secret.png'),
        }
        for name, (reason, words) in expected.items():
            obj = wait_phase(cluster, allowed_ns, name, {"Failed", "Succeeded"}, timeout=60)
            assert condition(obj, "PreconditionsMet")["reason"] == reason, obj["status"]
            assert words in obj["status"]["message"], obj["status"]["message"]
        # There the worker gets scoped temporary credentials issued by the store's STS (never the operator's
        # keys), by reference to a Secret owned by the job, and runs under the namespace's default account
        # without a token.
        (job,) = get(cluster, allowed_ns, "jobs")["items"]
        pod = job["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False and pod.get("serviceAccountName", "default") == "default"
        refs = {e["valueFrom"]["secretKeyRef"]["name"] for e in pod["containers"][0]["env"]
                if "secretKeyRef" in e.get("valueFrom", {})}  # fmt: skip
        (copy_name,) = refs
        copy = get(cluster, allowed_ns, "secret", copy_name)
        assert copy["metadata"]["ownerReferences"][0]["name"] == "runs"
        issued = {k: base64.b64decode(v).decode() for k, v in copy["data"].items()}
        assert set(issued) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}
        assert not set(issued.values()) & set(keys), "the operator's keys were copied into the job's namespace"
        assert not set(_secret_values(cluster, allowed_ns)) & set(keys)  # no Secret there holds them
        # The scoped credentials read the dataset but cannot write outside the job's results.
        scoped = boto3.client("s3", endpoint_url=s3_server.endpoint_url, region_name="us-east-1",
                              aws_access_key_id=issued["AWS_ACCESS_KEY_ID"],
                              aws_secret_access_key=issued["AWS_SECRET_ACCESS_KEY"],
                              aws_session_token=issued["AWS_SESSION_TOKEN"])  # fmt: skip
        bucket, key = manifest.removeprefix("s3://").split("/", 1)
        assert scoped.get_object(Bucket=bucket, Key=key)["Body"].read()
        with pytest.raises(botocore.exceptions.ClientError, match="AccessDenied"):
            scoped.put_object(Bucket=bucket, Key=key, Body=b"overwritten")
        statuses = json.dumps([o.get("status") for ns in (user_ns, allowed_ns)
                               for o in get(cluster, ns, "autolabeljobs")["items"]])  # fmt: skip
    finally:
        for ns in (user_ns, allowed_ns):  # while the operator runs: it removes its finalizer
            cluster.kubectl("delete", "autolabeljobs", "--all", "-n", ns, "--timeout=60s", check=False)
        op.stop()

    # The keys appear in no status, no Event and no line of the operator's log.
    events = cluster.kubectl("get", "events", "-A", "-o", "json").stdout
    log = op.log.read_text(errors="replace")
    assert "CredentialsRequired" in statuses and "Succeeded" in statuses and "JobCreated" in events
    assert "DEBUG" in log and "runs" in log  # the log is the real, verbose one
    for where, text in (("a status", statuses), ("an Event", events), ("the operator's log", log)):
        for key in keys:
            assert key not in text, f"the operator's key {key[:4]}... appears in {where}"
