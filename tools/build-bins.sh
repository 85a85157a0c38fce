#!/usr/bin/env bash
# Builds the local control plane (kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, etcd),
# the MinIO S3 server and Kueue's controller manager from their official sources through the Go module proxy.
# Output: $BIN_DIR (default .cache/bin). Each group is rebuilt only when its pinned go.mod changes.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
BIN_DIR=${BIN_DIR:-$root/.cache/bin}
mkdir -p "$BIN_DIR"
export CGO_ENABLED=0 GOFLAGS=-mod=mod
command -v go >/dev/null || { echo "build-bins: Go is required (https://go.dev/dl)" >&2; exit 1; }

# stamp GROUP: a hash of the group's go.mod/go.sum (the pinned versions), to know when to rebuild.
stamp() { cat "$here/$1/go.mod" "$here/$1/go.sum" | sha256sum | cut -c1-16; }

build_group() {  # build_group GROUP "BINARIES" LDFLAGS PACKAGE...
  local group=$1 bins=$2 ldflags=$3; shift 3
  local want; want=$(stamp "$group")
  local have=""; [ -f "$BIN_DIR/.$group.stamp" ] && have=$(cat "$BIN_DIR/.$group.stamp")
  local missing=0; for b in $bins; do [ -x "$BIN_DIR/$b" ] || missing=1; done
  if [ "$want" = "$have" ] && [ $missing = 0 ]; then echo "build-bins: $group up to date"; return; fi
  echo "build-bins: building $group ($bins); the first build takes several minutes"
  local start=$SECONDS
  local out="$BIN_DIR/"; [ "$*" = "." ] && out="$BIN_DIR/$bins"
  (cd "$here/$group" && go build -trimpath -ldflags "$ldflags" -o "$out" "$@")
  echo "$want" > "$BIN_DIR/.$group.stamp"
  echo "build-bins: $group built in $((SECONDS - start))s"
}

kube_version=$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" {print $3}' "$here/kube-bins/go.mod")
kube_ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$kube_version \
 -X k8s.io/component-base/version.gitMajor=$(echo "$kube_version" | cut -d. -f1 | tr -d v) \
 -X k8s.io/component-base/version.gitMinor=$(echo "$kube_version" | cut -d. -f2) \
 -X k8s.io/component-base/version.gitTreeState=clean \
 -X k8s.io/client-go/pkg/version.gitVersion=$kube_version"

groups=${*:-kube etcd minio kueue}
for g in $groups; do
  case $g in
    kube) build_group kube-bins "kube-apiserver kube-controller-manager kube-scheduler kubectl" "$kube_ldflags" \
            k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
            k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl ;;
    etcd) build_group etcd-bin "etcd" "-s -w" . ;;
    minio) build_group minio-bin "minio" "-s -w" github.com/minio/minio ;;
    kueue) build_group kueue-bin "kueue" "-s -w" sigs.k8s.io/kueue/cmd/kueue ;;
    *) echo "build-bins: unknown group $g" >&2; exit 2 ;;
  esac
done
