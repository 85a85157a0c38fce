#!/usr/bin/env bash
# Builds Helm from its official source through the Go module proxy into $BIN_DIR (default .cache/bin).
# `go install helm.sh/helm/v3/cmd/helm@VERSION` works because Helm's go.mod has no replace directives.
# Built once: skipped when $BIN_DIR/helm already reports $HELM_VERSION.
#
# The ldflags mirror Helm's own Makefile: without them `helm version` says "v3.21" and the default
# Capabilities.KubeVersion (used by `helm template` and `helm lint`) is v1.20, not the client-go release
# Helm is built against.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
HELM_VERSION=${HELM_VERSION:-v3.21.4}
BIN_DIR=${BIN_DIR:-$root/.cache/bin}
mkdir -p "$BIN_DIR"

have=""
[ -x "$BIN_DIR/helm" ] && have=$("$BIN_DIR/helm" version --template '{{.Version}}' 2>/dev/null || true)
if [ "$have" = "$HELM_VERSION" ]; then echo "install-helm: helm $HELM_VERSION up to date"; exit 0; fi
command -v go >/dev/null || { echo "install-helm: Go is required (https://go.dev/dl)" >&2; exit 1; }

echo "install-helm: building helm $HELM_VERSION from source (takes a few minutes the first time)"
start=$SECONDS
export CGO_ENABLED=0 GOFLAGS=-mod=mod
# Kubernetes minor version Helm assumes by default = the client-go minor Helm is built against (as Helm's Makefile).
gomod=$(go mod download -json "helm.sh/helm/v3@$HELM_VERSION" | sed -n 's/^\s*"GoMod": "\(.*\)",\?$/\1/p')
client_go=$(awk '$1 == "k8s.io/client-go" {print $2}' "$gomod")
k8s_minor=$(echo "$client_go" | cut -d. -f2)
pkg=helm.sh/helm/v3
ldflags="-s -w -X $pkg/internal/version.version=$HELM_VERSION -X $pkg/internal/version.gitTreeState=clean \
 -X $pkg/pkg/lint/rules.k8sVersionMajor=1 -X $pkg/pkg/lint/rules.k8sVersionMinor=$k8s_minor \
 -X $pkg/pkg/chartutil.k8sVersionMajor=1 -X $pkg/pkg/chartutil.k8sVersionMinor=$k8s_minor"
GOBIN=$BIN_DIR go install -trimpath -ldflags "$ldflags" "$pkg/cmd/helm@$HELM_VERSION"
got=$("$BIN_DIR/helm" version --template '{{.Version}}')
[ "$got" = "$HELM_VERSION" ] || { echo "install-helm: built helm reports $got, expected $HELM_VERSION" >&2; exit 1; }
echo "install-helm: helm $HELM_VERSION built in $((SECONDS - start))s"
