#!/usr/bin/env bash
# Set up a virtualenv, then run the tests.
#   bash scripts/test.sh               the quick tier: every stage, no end-to-end workflow run and
#                                      no slow check (pytest -m "not workflow and not slow"); minutes
#   bash scripts/test.sh --all         everything, the workflow runs and the SLURM cluster included (CI)
#   bash scripts/test.sh --conda-pins  the quick tier and the CI-sized workflow run (tests marked
#                                      conda_pins) in .venv-conda-pins, the versions envs/*.yaml pin
#                                      (scripts/setup-venv-conda-pins.sh; docs/software.md)
# Other arguments go to pytest, e.g. `bash scripts/test.sh --all --durations=25`.
set -euo pipefail
cd "$(dirname "$0")/.."
tier=(-m "not workflow and not slow")
setup=scripts/setup-venv.sh
venv=.venv
args=()
for arg in "$@"; do
    if [[ $arg == --all ]]; then
        tier=()
    elif [[ $arg == --conda-pins ]]; then
        # The SLURM dry runs need the SLURM executor plugin, which the tier leaves out
        # (scripts/conda_pins.py, LEFT_OUT).
        tier=(-m "not slow and (not workflow or conda_pins)"
            --deselect "tests/test_workflow_static.py::test_dry_run_with_each_profile[slurm]"
            --deselect "tests/test_workflow_static.py::test_slurm_bundles_single_slide_tiling_jobs_only")
        setup=scripts/setup-venv-conda-pins.sh
        venv=.venv-conda-pins
    else
        args+=("$arg")
    fi
done
bash "$setup"
source "$venv/bin/activate"
if [[ $venv == .venv-conda-pins ]]; then
    python scripts/conda_pins.py verify   # the pins, not whatever was installed since
fi
exec python -m pytest -ra "${tier[@]}" "${args[@]}"
