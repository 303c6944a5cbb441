#!/usr/bin/env bash
# Set up .venv, then run the whole workflow on the built-in synthetic cohort (results/ in the repo).
# Extra arguments go to snakemake, e.g. `bash scripts/demo.sh --dry-run`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh
source .venv/bin/activate
exec snakemake --cores all --rerun-incomplete "$@"
