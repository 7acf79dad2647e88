#!/usr/bin/env bash
# Validates every Kubernetes manifest in deploy/k8s against the Kubernetes API schemas in
# strict mode (unknown fields are errors), with `kubernetes-validate` from PyPI (an exact
# version, below) installed into a virtualenv under target/ (created once).
# kustomization.yaml is kustomize's, not a Kubernetes resource, and is checked only for
# naming every manifest.
#   K8S_VERSION  the Kubernetes version to validate against [kubernetes-validate's default,
#                1.37 for the pinned release]
set -euo pipefail
cd "$(dirname "$0")/.."

# Exactly pinned, so every run validates against the same schemas: a new release of
# kubernetes-validate brings a new default Kubernetes version and can turn a passing
# manifest into a failing one with no change here. 1.37.0 (default Kubernetes 1.37) is the
# release this script installed when it was pinned; change it on purpose. The virtualenv's
# name carries the version, so a new pin installs into a fresh one.
kubernetes_validate_version=1.37.0
venv="target/k8s-venv-$kubernetes_validate_version"
if [ ! -x "$venv/bin/kubernetes-validate" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
        "kubernetes-validate==$kubernetes_validate_version"
fi

manifests=()
for file in deploy/k8s/*.yaml; do
    [ "$(basename "$file")" = kustomization.yaml ] && continue
    manifests+=("$file")
    if ! grep -qx "  - $(basename "$file")" deploy/k8s/kustomization.yaml; then
        echo "error: deploy/k8s/kustomization.yaml does not list $(basename "$file")" >&2
        exit 1
    fi
done

"$venv/bin/kubernetes-validate" --strict ${K8S_VERSION:+--kubernetes-version "$K8S_VERSION"} \
    "${manifests[@]}"
