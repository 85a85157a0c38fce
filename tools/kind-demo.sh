#!/usr/bin/env bash
# `make kind-demo`: what `make demo` does, on a kind cluster (needs docker, kind, kubectl and helm).
#
#   1. the kind cluster of kind-config.yaml (created unless it exists; KIND_CLUSTER names another one)
#   2. docker build of the operator and worker images, `kind load docker-image` of both
#   3. MinIO in namespace autolabel (deploy/kind-demo/minio.yaml), the digits dataset uploaded to
#      s3://datasets/digits/ by a Job in the worker image (deploy/kind-demo/upload-digits-job.yaml)
#   4. the chart with deploy/kind-demo/values.yaml (the loaded images, MinIO as default storage, jobs in
#      namespace autolabel-demo allowed on its credentials for bucket datasets)
#   5. examples/digits-al.yaml in namespace autolabel-demo, waited for until Succeeded
#
# It leaves everything running: `kubectl get alj -n autolabel-demo -o wide`; `make kind-down` removes it.
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER=${KIND_CLUSTER:-autolabel}
NS=autolabel
DEMO_NS=autolabel-demo
OPERATOR_IMAGE=autolabel-operator:kind-demo   # the names in deploy/kind-demo/values.yaml
WORKER_IMAGE=autolabel-worker:kind-demo
TIMEOUT=${TIMEOUT:-900s}
HELM=helm
[[ -x .cache/bin/helm ]] && HELM=.cache/bin/helm

for tool in docker kind kubectl; do
  command -v "$tool" >/dev/null || { echo "kind-demo: $tool is not installed" >&2; exit 1; }
done
command -v "$HELM" >/dev/null || { echo "kind-demo: helm is not installed (or run: make bins)" >&2; exit 1; }

step() { printf '\n== %s\n' "$*"; }
k() { kubectl --context "kind-$CLUSTER" "$@"; }

step "kind cluster $CLUSTER"
if ! kind get clusters | grep -qx "$CLUSTER"; then
  kind create cluster --name "$CLUSTER" --config kind-config.yaml
fi

step "images"
docker build -f operator/Dockerfile -t "$OPERATOR_IMAGE" .
docker build -f job_image/Dockerfile -t "$WORKER_IMAGE" .
kind load docker-image --name "$CLUSTER" "$OPERATOR_IMAGE" "$WORKER_IMAGE"

step "namespaces $NS, $DEMO_NS"
for ns in "$NS" "$DEMO_NS"; do
  k create namespace "$ns" --dry-run=client -o yaml | k apply -f -
done

step "MinIO and the digits dataset"
k apply -n "$NS" -f deploy/kind-demo/minio.yaml
k -n "$NS" rollout status deploy/minio --timeout=300s
k -n "$NS" delete job upload-digits --ignore-not-found --wait=true   # a Job's pod template is immutable
k apply -n "$NS" -f deploy/kind-demo/upload-digits-job.yaml
if ! k -n "$NS" wait --for=condition=Complete job/upload-digits --timeout=900s; then
  k -n "$NS" logs job/upload-digits --tail=50 || true
  exit 1
fi
k -n "$NS" logs job/upload-digits --tail=1

step "operator (Helm chart)"
crd_args=()
if k get crd autolabeljobs.autolabel.dev >/dev/null 2>&1 \
    && [[ -z "$(k get crd autolabeljobs.autolabel.dev -o jsonpath='{.metadata.annotations.meta\.helm\.sh/release-name}')" ]]; then
  crd_args=(--set crds.install=false)   # applied from crds/ before: Helm refuses to adopt it
fi
"$HELM" upgrade --install autolabel charts/autolabel-operator --kube-context "kind-$CLUSTER" -n "$NS" \
  -f deploy/kind-demo/values.yaml "${crd_args[@]}" --wait --timeout 5m
k wait --for=condition=Established crd/autolabeljobs.autolabel.dev --timeout=60s

step "AutoLabelJob digits-al in $DEMO_NS"
k -n "$DEMO_NS" delete alj digits-al --ignore-not-found --wait=true
k apply -n "$DEMO_NS" -f examples/digits-al.yaml
if ! k -n "$DEMO_NS" wait alj/digits-al --for=jsonpath='{.status.phase}'=Succeeded --timeout="$TIMEOUT"; then
  k -n "$DEMO_NS" get alj digits-al -o wide || true
  k -n "$DEMO_NS" get alj digits-al -o jsonpath='{.status}{"\n"}' || true
  exit 1
fi
k -n "$DEMO_NS" get alj digits-al -o wide
echo
echo "Done. Results: s3://datasets/digits/autolabel/ on the in-cluster MinIO; make kind-down removes the cluster."
