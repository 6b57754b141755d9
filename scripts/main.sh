#!/usr/bin/env bash
# The main job on the lab: all set-up, bring the lab up (or repair it), take a backup, run
# the backup-verification drill and print its measured RTO/RPO against the objectives.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export DR_CONFIG="$PWD/.lab/dr.yaml"
.venv/bin/dr lab up
.venv/bin/dr lab status
.venv/bin/dr backup --target lab
.venv/bin/dr drill backup-verification --target lab
