"""Checks deploy/ beyond the Kubernetes schemas (scripts/check-deploy.sh runs it):

1. every configuration a manifest embeds (a ConfigMap's `edgesync.toml`) is valid for the node
   that mounts it: `edgesync config check` with the environment the StatefulSet gives its first
   replica, and the name it ends with has a certificate in the test PKI;
2. the Dockerfile, read with the official parser: a multi-stage build whose last stage runs as
   a non-root user, keeps data on a volume, checks health and runs `edgesync run`;
3. the Grafana dashboard: panels at the top level, each with queries, and every metric a query
   names is one the node exports.

usage: check_deploy.py EDGESYNC_BINARY PKI_DIR
"""

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import dockerfile
import yaml

ROOT = Path(__file__).resolve().parent.parent
failures = []


def fail(msg):
    failures.append(msg)
    print(f"FAIL {msg}", file=sys.stderr)


def expand(value, env):
    """Kubernetes' $(VAR) expansion of an env value."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), value)


def check_configs(binary, pki):
    docs = []
    for f in sorted((ROOT / "deploy" / "k8s").glob("*.yaml")):
        docs += [(f, d) for d in yaml.safe_load_all(f.read_text()) if d]
    maps = {d["metadata"]["name"]: d for _, d in docs if d["kind"] == "ConfigMap"}
    checked = 0
    for f, d in docs:
        if d["kind"] != "StatefulSet":
            continue
        spec = d["spec"]["template"]["spec"]
        pod = f"{d['metadata']['name']}-0"
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for c in spec["containers"]:
            env = {}
            for e in c.get("env", []):
                if "value" in e:
                    env[e["name"]] = expand(e["value"], env)
                elif e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name":
                    env[e["name"]] = pod
                else:
                    fail(f"{f.name}: {e['name']}: only values and the pod name are checked")
            args = c.get("args", [])
            if "--config" not in args:
                continue
            path = args[args.index("--config") + 1]
            mount = next(m for m in c["volumeMounts"] if path.startswith(m["mountPath"] + "/"))
            cm = maps[volumes[mount["name"]]["configMap"]["name"]]
            text = cm["data"][path[len(mount["mountPath"]) + 1:]]
            with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as t:
                t.write(text)
            clean = {k: v for k, v in os.environ.items() if not k.startswith("EDGESYNC_")}
            out = subprocess.run(
                [binary, "config", "check", "--config", t.name],
                env={**clean, **env},
                capture_output=True,
                text=True,
            )
            os.unlink(t.name)
            if out.returncode != 0:
                fail(f"{f.name}: {cm['metadata']['name']} for {pod}: {out.stderr.strip()}")
                continue
            settings = json.loads(out.stdout)
            name = settings["name"]
            if not (Path(pki) / f"{name}.crt").exists():
                fail(f"{f.name}: {pod} runs as {name}, which has no certificate in the test PKI")
            if settings["api_token_file"] is None:
                fail(f"{f.name}: {pod} serves its API on {settings['api']} without a token")
            print(f"ok {f.name}: {cm['metadata']['name']} as {name} ({len(settings['peers'])} peers)")
            checked += 1
    if checked == 0:
        fail("no embedded configuration was checked")


def check_dockerfile():
    cmds = dockerfile.parse_file(str(ROOT / "deploy" / "Dockerfile"))
    froms = [i for i, c in enumerate(cmds) if c.cmd == "FROM"]
    if len(froms) < 2:
        fail("Dockerfile: not a multi-stage build")
        return
    last = cmds[froms[-1]:]
    by = {}
    for c in last:
        by.setdefault(c.cmd, []).append(c)
    user = by.get("USER", [None])[-1]
    if user is None or user.value[0].split(":")[0] in ("root", "0"):
        fail("Dockerfile: the runtime stage does not switch to a non-root user")
    if "VOLUME" not in by:
        fail("Dockerfile: no data volume")
    hc = by.get("HEALTHCHECK", [None])[-1]
    if hc is None or "health" not in hc.value:
        fail("Dockerfile: no health check running `edgesync health`")
    ep = by.get("ENTRYPOINT", [None])[-1]
    if ep is None or list(ep.value) != ["edgesync", "run"]:
        fail("Dockerfile: the entrypoint is not `edgesync run`")
    if not any("--from=" in f for c in by.get("COPY", []) for f in c.flags):
        fail("Dockerfile: the runtime stage copies nothing from the build stage")
    print("ok Dockerfile")


def exported_metrics():
    names = set()
    for f in (ROOT / "src").rglob("*.rs"):
        names |= set(re.findall(r'"(edgesync_[a-z0-9_]+)"', f.read_text()))
    return names


def check_dashboard():
    d = json.loads((ROOT / "deploy" / "grafana" / "edgesync.json").read_text())
    metrics = exported_metrics()
    panels = d.get("panels", [])
    if not panels:
        fail("dashboard: no panels")
    for p in panels:
        if p.get("type") == "row" or "panels" in p:
            fail(f"dashboard: panel {p.get('title')} nests panels")
        targets = p.get("targets", [])
        if not targets:
            fail(f"dashboard: panel {p.get('title')} has no queries")
        for t in targets:
            for m in re.findall(r"\b(edgesync_[a-z0-9_]+)", t["expr"]):
                if m not in metrics:
                    fail(f"dashboard: panel {p['title']} reads {m}, which no node exports")
    print(f"ok dashboard: {len(panels)} panels")


if __name__ == "__main__":
    binary, pki = sys.argv[1], sys.argv[2]
    check_configs(binary, pki)
    check_dockerfile()
    check_dashboard()
    sys.exit(1 if failures else 0)
