#!/usr/bin/env bash
# All set-up for DR pipelines on Debian 12 or 13, idempotent: system packages (as root, or
# with sudo), then the Python virtual environment in .venv/ at the repository root.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

# The distribution's PostgreSQL major (15 on Debian 12, 17 on Debian 13; any >= 14 works):
# an installed server first, else what the `postgresql` metapackage depends on, else the
# Debian release. The lab and the tools find it under /usr/lib/postgresql/*/bin.
pg_major() {
  local n
  n=$(dpkg-query -W -f='${Package} ${Status}\n' 'postgresql-[0-9]*' 2>/dev/null \
    | awk '$1 ~ /^postgresql-[0-9]+$/ && / installed$/ {
             sub("postgresql-", "", $1); if ($1 + 0 >= 14) print $1 }' \
    | sort -n | tail -1)
  if [ -z "$n" ]; then
    n=$(apt-cache depends postgresql 2>/dev/null \
      | sed -n 's/^ *Depends: postgresql-\([0-9][0-9]*\)$/\1/p' | head -1)
  fi
  if [ -z "$n" ]; then
    case "$(. "${OS_RELEASE:-/etc/os-release}" 2>/dev/null && echo "${VERSION_ID:-}")" in
      12) n=15 ;;
      13) n=17 ;;
    esac
  fi
  if [ -z "$n" ] || [ "$n" -lt 14 ]; then
    echo "setup: cannot tell which PostgreSQL (>= 14) to install; set PG_MAJOR=NN" >&2
    exit 1
  fi
  echo "$n"
}
PG_MAJOR=${PG_MAJOR:-$(pg_major)}

# PostgreSQL server and client binaries (the lab runs its own clusters; never the machine's
# 5432), Podman + runc + busybox-static (a Docker-API engine for the lab application),
# Chromium (the browser test of the Prefect UI).
# catatonit: the init binary Podman needs for containers created with init=True (a Recommends
# of podman, which --no-install-recommends leaves out).
# redis-server: the caches' tests start their own on a free port (never the machine's 6379;
# the package's own service is not used).
# prometheus, prometheus-alertmanager, prometheus-postgres-exporter: `dr lab up --monitoring`
# runs them on free loopback ports with their data in the lab folder (the alert receiver's
# test starts a real Alertmanager too). Their own Debian services are never used: disabled
# and stopped below.
# tests/unit/test_programs_installed.py checks that this list provides every program the
# code runs.
PKGS=(postgresql-${PG_MAJOR} postgresql-client-${PG_MAJOR}
      podman catatonit runc busybox-static chromium redis-server python3-venv
      prometheus-alertmanager prometheus prometheus-postgres-exporter)
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
# The monitoring packages enable system services (Prometheus on :9090, Alertmanager on :9093,
# the exporter on :9187): the lab starts its own on free ports, so keep those off.
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
  for unit in prometheus prometheus-alertmanager prometheus-postgres-exporter; do
    if systemctl is-enabled --quiet "$unit" 2>/dev/null || systemctl is-active --quiet "$unit"; then
      $SUDO systemctl disable --now "$unit" >/dev/null 2>&1 || true
    fi
  done
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
