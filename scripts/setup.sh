#!/usr/bin/env bash
# Idempotently prepare a Debian 12 machine (as root) for zsnap: system packages + a venv in .venv.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  fuse3 libfuse3-dev pkg-config        # FUSE runtime and headers for pyfuse3
  docker-registry containerd runc       # the real registry and runtime the tests use
  skopeo stargz-snapshotter umoci       # peers: zstd:chunked producers (skopeo, ctr-remote)
  busybox-static zstd nginx-light       # demo image content, CLI round trips, range-quirk proxy
  apache2-utils openssl iproute2 psmisc # htpasswd + token keys for auth tests, netns shaping, fuser
  debootstrap curl                      # bench startup: Debian base image; readiness probes inside its netns
  python3-venv python3-dev gcc
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# Debian starts these services on install; zsnap's tests run their own instances on free ports.
for svc in docker-registry containerd; do
  systemctl disable --now "$svc" >/dev/null 2>&1 || true
done

PY=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.zsnap-installed
if [[ ! -f $stamp || pyproject.toml -nt $stamp ]]; then
  echo "setup: installing Python dependencies into .venv (log: .venv/install.log)"
  if ! { .venv/bin/pip install --upgrade pip && .venv/bin/pip install -e '.[test]'; } >.venv/install.log 2>&1; then
    tail -n 40 .venv/install.log
    exit 1
  fi
  touch "$stamp"
fi
