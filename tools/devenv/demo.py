"""`make demo`: the whole loop on the local control plane.

Starts the dev environment (control plane, MinIO, local node runner, operator), writes the bundled
digits sample dataset (scikit-learn's 1,797 8x8 images; 5 labeled per class) and uploads it to
``s3://datasets/digits/``, applies ``examples/digits-al.yaml``, follows the AutoLabelJob to completion and
shows what a person reviewing the results would look at: ``autolabel results``, then ``autolabel confirm``
writes the accepted proposals into a new manifest version beside the original. Then it stops everything it
started, unless ``KEEP=1`` (then ``make dev-down`` stops it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from devenv.dev import DevEnv
from devenv.procs import REPO_ROOT

NAMESPACE = "autolabel-demo"
JOB_FILE = REPO_ROOT / "examples" / "digits-al.yaml"
BUCKET, PREFIX = "datasets", "digits/"
TIMEOUT_SECONDS = 900


def upload_dataset(env: DevEnv, data_dir: Path) -> str:
    from autolabel_worker.data import ensure_digits_dataset

    manifest = ensure_digits_dataset(data_dir)
    env.s3.make_bucket(BUCKET)
    client = env.s3.client()
    files = [p for p in sorted(data_dir.rglob("*")) if p.is_file() and p.name != "ground_truth.json"]
    for path in files:
        client.upload_file(str(path), BUCKET, PREFIX + path.relative_to(data_dir).as_posix())
    labeled = sum(1 for line in manifest.read_text().splitlines() if '"annotation"' in line)
    print(f"dataset: {len(files) - 1} images ({labeled} labeled) uploaded to s3://{BUCKET}/{PREFIX}")
    return f"s3://{BUCKET}/{PREFIX}{manifest.name}"


def follow(env: DevEnv, name: str) -> dict[str, Any]:
    """Prints each change of phase, stage and progress until the job ends; returns the final object."""
    deadline = time.monotonic() + TIMEOUT_SECONDS
    last = None
    while time.monotonic() < deadline:
        obj = json.loads(env.cluster.kubectl("get", "alj", name, "-n", NAMESPACE, "-o", "json").stdout)
        status = obj.get("status") or {}
        progress = status.get("progress") or {}
        line = (f"  {status.get('phase', 'Pending'):<10} stage={progress.get('stage', '-'):<10} "
                f"{progress.get('processed', 0)}/{progress.get('total', 0)} ({progress.get('percent', 0)}%)")
        if line != last:
            print(f"{time.strftime('%H:%M:%S')} {line}", flush=True)
            last = line
        if status.get("phase") in ("Succeeded", "Failed"):
            return obj
        time.sleep(2)
    raise TimeoutError(f"AutoLabelJob {name} did not finish within {TIMEOUT_SECONDS}s")


def show_results(env: DevEnv, obj: dict[str, Any]) -> None:
    status = obj["status"]
    print()
    print(env.cluster.kubectl("get", "alj", "-n", NAMESPACE, "-o", "wide").stdout)
    result = status.get("result") or {}
    uri = result.get("uri", "")
    if not uri.startswith("s3://"):
        print(f"no results recorded: {status.get('message', '')}")
        return
    bucket, _, key = uri[5:].partition("/")
    client = env.s3.client()
    summary = json.loads(client.get_object(Bucket=bucket, Key=key.rstrip("/") + "/summary.json")["Body"].read())
    print(f"results in {uri}")
    for field in ("total", "autoLabeled", "hardExamples", "targetPrecision", "estimatedPrecision",
                  "targetVerifiable", "durationSeconds"):
        print(f"  {field:<19} {summary.get(field)}")
    body = client.get_object(Bucket=bucket, Key=key.rstrip("/") + "/result.manifest")["Body"]
    print("first lines of result.manifest:")
    for raw, _ in zip(body.iter_lines(), range(3), strict=False):
        print("  " + raw.decode())
    truth_file = REPO_ROOT / ".dev" / "demo-data" / "ground_truth.json"
    if truth_file.exists():
        truth = json.loads(truth_file.read_text())
        body = client.get_object(Bucket=bucket, Key=key.rstrip("/") + "/result.manifest")["Body"]
        right = accepted = 0
        for raw in body.iter_lines():
            line = json.loads(raw)
            if line.get("hard"):
                continue
            accepted += 1
            source = line["source"]
            truth_label = truth.get(source.removeprefix(f"s3://{BUCKET}/{PREFIX}"), truth.get(source))
            right += truth_label == line["annotation"][0]["name"]
        if accepted:
            print(f"checked against the ground truth kept aside: {right}/{accepted} auto-labels correct "
                  f"({right / accepted:.3f})")


def review(env: DevEnv) -> int:
    """What a reviewer runs next: the results, then confirm (the CLI, as a person would run it)."""
    cli_env = {**os.environ, "KUBECONFIG": str(env.cluster.kubeconfig), **env.s3.env()}
    code = 0
    for args in (["results", "digits-al", "--top", "5"], ["confirm", "digits-al"]):
        print(f"\n$ autolabel {' '.join(args)} -n {NAMESPACE}", flush=True)
        argv = [str(Path(sys.executable).parent / "autolabel"), *args, "-n", NAMESPACE]
        code = code or subprocess.run(argv, env=cli_env, check=False).returncode
    return code


def main() -> int:
    env = DevEnv(REPO_ROOT / ".dev")
    keep = os.environ.get("KEEP", "") not in ("", "0")
    if env.up() != 0:
        print("demo: the dev environment is incomplete (see above)", file=sys.stderr)
        env.down()
        return 1
    try:
        manifest_uri = upload_dataset(env, REPO_ROOT / ".dev" / "demo-data")
        env.cluster.kubectl("create", "namespace", NAMESPACE, check=False)
        env.cluster.kubectl("delete", "alj", "digits-al", "-n", NAMESPACE, "--ignore-not-found", "--wait=true")
        print(f"applying {JOB_FILE.relative_to(REPO_ROOT)} (dataset {manifest_uri})")
        env.cluster.kubectl("apply", "-n", NAMESPACE, "-f", str(JOB_FILE))
        final = follow(env, "digits-al")
        show_results(env, final)
        succeeded = final["status"]["phase"] == "Succeeded"
        reviewed = review(env) if succeeded else 1
    finally:
        if keep:
            print(f"\nKEEP=1: still running. Explore: source .dev/env; kubectl get alj -n {NAMESPACE} -o yaml; "
                  "autolabel status -n autolabel-demo. Stop: make dev-down")
        else:
            print("\nstopping what the demo started (KEEP=1 keeps it up)")
            env.down()
    return 0 if succeeded and reviewed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
