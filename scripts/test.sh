#!/usr/bin/env bash
# All set-up, then the whole test suite: lint, unit and integration tests against real
# local services (PostgreSQL clusters, Podman, moto, a Prefect server) that the tests start.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/pytest "$@"
