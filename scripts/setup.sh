#!/usr/bin/env bash
# All set-up for DR pipelines on Debian 12, idempotent: system packages (as root, or with
# sudo), then the Python virtual environment in .venv/ at the repository root.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

# PostgreSQL server binaries (the lab runs its own clusters; never the machine's 5432),
# Podman + runc + busybox-static (a Docker-API engine for the lab application),
# Chromium (the browser test of the Prefect UI).
# catatonit: the init binary Podman needs for containers created with init=True (a Recommends
# of podman, which --no-install-recommends leaves out).
PKGS=(postgresql-15 postgresql-client-15 podman catatonit runc busybox-static chromium python3-venv)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  # Do not let the package create and start a 'main' cluster on port 5432: the lab and the
  # tests start their own servers.
  $SUDO mkdir -p /etc/postgresql-common/createcluster.d
  echo "create_main_cluster = false" | $SUDO tee /etc/postgresql-common/createcluster.d/dr-pipelines.conf >/dev/null
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

PY=${PYTHON:-python3}
"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
  || { echo "setup: Python >= 3.11 is required (found $("$PY" --version))" >&2; exit 1; }

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.dr-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[dev,dask]"
  echo "$want" > "$stamp"
fi
echo "setup: ready (.venv/bin/dr)"
