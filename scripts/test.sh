#!/usr/bin/env bash
# Set up .venv, then run the tests.
#   bash scripts/test.sh          the quick tier: every stage, no end-to-end workflow run and no
#                                 slow check (pytest -m "not workflow and not slow"); minutes
#   bash scripts/test.sh --all    everything, the workflow runs and the SLURM cluster included (CI)
# Other arguments go to pytest, e.g. `bash scripts/test.sh --all --durations=25`.
set -euo pipefail
cd "$(dirname "$0")/.."
tier=(-m "not workflow and not slow")
args=()
for arg in "$@"; do
    if [[ $arg == --all ]]; then
        tier=()
    else
        args+=("$arg")
    fi
done
bash scripts/setup-venv.sh
source .venv/bin/activate
exec python -m pytest -ra "${tier[@]}" "${args[@]}"
