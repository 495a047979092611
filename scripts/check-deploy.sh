#!/usr/bin/env bash
# Checks deploy/: every Kubernetes manifest, and the Secrets deploy/make-secrets.sh makes from a
# real `edgesync pki` directory, against the Kubernetes schemas (kubernetes-validate --strict,
# offline schemas); every configuration the manifests embed with `edgesync config check` under
# the environment the manifest gives it; the Dockerfile with the official parser; the Grafana
# dashboard against the metrics the node exports (scripts/check_deploy.py). The image itself
# cannot be built here: no container registry is reachable.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/edgesync-target}"
venv="$CARGO_TARGET_DIR/deploy-venv"
if [ ! -x "$venv/bin/kubernetes-validate" ] || ! "$venv/bin/python" -c 'import dockerfile, yaml' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q kubernetes-validate==1.37.0 dockerfile==3.4.0 pyyaml==6.0.3
fi
cargo build --locked -q --bin edgesync
bin="$CARGO_TARGET_DIR/debug/edgesync"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$bin" pki init --dir "$tmp/pki" >/dev/null
for n in edgesync-cloud-0 edgesync-cloud-1 edgesync-cloud-2; do
  "$bin" pki issue --dir "$tmp/pki" --name "$n" --role cloud >/dev/null
done
"$bin" pki issue --dir "$tmp/pki" --name gw-site-a --role gateway --site site-a >/dev/null
deploy/make-secrets.sh "$tmp/pki" edgesync-cloud edgesync-cloud-0 edgesync-cloud-1 edgesync-cloud-2 >"$tmp/cloud-secret.yaml"
deploy/make-secrets.sh "$tmp/pki" edgesync-gateway gw-site-a >"$tmp/gateway-secret.yaml"
# A node without a certificate, or a bad Secret name, is refused.
if deploy/make-secrets.sh "$tmp/pki" edgesync-x nobody >/dev/null 2>&1 \
  || deploy/make-secrets.sh "$tmp/pki" Bad_Name gw-site-a >/dev/null 2>&1; then
  echo "make-secrets.sh accepted a missing certificate or a bad name" >&2
  exit 1
fi
# The Secret holds exactly what the pods read.
"$venv/bin/python" - "$tmp/cloud-secret.yaml" "$tmp/pki" <<'PY'
import base64, sys, yaml
s = yaml.safe_load(open(sys.argv[1]))
want = {"ca.crt", "crl.pem"} | {f"edgesync-cloud-{i}.{x}" for i in range(3) for x in ("crt", "key")}
assert set(s["data"]) == want, sorted(s["data"])
for k, v in s["data"].items():
    assert base64.b64decode(v) == open(f"{sys.argv[2]}/{k}", "rb").read(), k
assert "ca.key" not in s["data"]
PY
"$venv/bin/kubernetes-validate" --strict --quiet deploy/k8s/*.yaml "$tmp"/*-secret.yaml
"$venv/bin/python" scripts/check_deploy.py "$bin" "$tmp/pki"
echo "deploy: manifests, secrets, embedded configurations, Dockerfile and dashboard checked"
