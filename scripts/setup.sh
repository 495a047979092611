#!/usr/bin/env bash
# Installs what the build needs on a fresh Debian machine (idempotent), and exports the shared
# target directory. Sourced by the other scripts.
set -euo pipefail
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/edgesync-target}"
need=()
command -v clang >/dev/null 2>&1 || need+=(clang)
dpkg -s libclang-dev >/dev/null 2>&1 || need+=(libclang-dev)
# The power-loss test records writes and syncs with strace.
command -v strace >/dev/null 2>&1 || need+=(strace)
# The PostgreSQL sink's end-to-end test runs a real server (Debian's, in a temporary directory).
compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null || need+=(postgresql)
command -v psql >/dev/null 2>&1 || need+=(postgresql-client)
if [ "${#need[@]}" -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
