#!/usr/bin/env bash
# All set-up, then the whole test suite: lint, unit and integration tests against real
# local services (PostgreSQL clusters, Podman, moto, a Prefect server) that the tests start.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
# Two workers (pytest-xdist): one folder's tests stay together, the lab's drills split over
# two labs (tests/conftest.py). DR_TEST_WORKERS=0 runs everything in this process.
.venv/bin/pytest -n "${DR_TEST_WORKERS:-2}" --dist loadgroup "$@"
