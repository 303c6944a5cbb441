#!/usr/bin/env bash
# Set up .venv, then run the test suite. Extra arguments go to pytest, e.g. `-m "not workflow"`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh
source .venv/bin/activate
exec python -m pytest -ra "$@"
