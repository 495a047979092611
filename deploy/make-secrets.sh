#!/usr/bin/env bash
# Turns an `edgesync pki` directory into a Kubernetes Secret manifest on stdout: the fleet CA
# certificate (ca.crt), the revocation list (crl.pem) and the certificate and key of every node
# named (NODE.crt, NODE.key), under those keys. The CA's private key never leaves the directory.
#
#   deploy/make-secrets.sh PKI_DIR SECRET_NAME NODE [NODE ...] > secret.yaml
#   deploy/make-secrets.sh pki edgesync-cloud edgesync-cloud-0 edgesync-cloud-1 edgesync-cloud-2 | kubectl apply -f -
set -euo pipefail

usage() {
  echo "usage: $0 PKI_DIR SECRET_NAME NODE [NODE ...]" >&2
  exit 2
}
[ "$#" -ge 3 ] || usage
dir=$1
name=$2
shift 2
if ! [[ "$name" =~ ^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$ ]] || [ "${#name}" -gt 253 ]; then
  echo "$0: $name is not a valid Secret name (lower-case letters, digits, '-' and '.')" >&2
  exit 2
fi

files=("ca.crt" "crl.pem")
for node in "$@"; do
  if ! [[ "$node" =~ ^[A-Za-z0-9._-]+$ ]]; then
    echo "$0: $node is not a node name" >&2
    exit 2
  fi
  files+=("$node.crt" "$node.key")
done
for f in "${files[@]}"; do
  if [ ! -f "$dir/$f" ]; then
    echo "$0: $dir/$f is missing (make it with: edgesync pki init / issue --dir $dir ...)" >&2
    exit 1
  fi
done

echo "# Made by deploy/make-secrets.sh from $dir: ${files[*]}"
echo "apiVersion: v1"
echo "kind: Secret"
echo "metadata:"
echo "  name: $name"
echo "  labels:"
echo "    app.kubernetes.io/name: edgesync"
echo "type: Opaque"
echo "data:"
for f in "${files[@]}"; do
  printf '  %s: %s\n' "$f" "$(base64 -w0 < "$dir/$f")"
done
