#!/usr/bin/env bash
# Create or refresh .venv-conda-pins, the conda-pins tier's virtualenv: the versions envs/*.yaml pin
# (what `snakemake --use-conda` gets), installed with pip, and requirements.txt's versions of
# everything the envs do not name (snakemake, pytest, ...). scripts/conda_pins.py derives the list;
# a no-op when it has not changed since the last set-up.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
venv=.venv-conda-pins
requirements=$(mktemp)
trap 'rm -f "$requirements"' EXIT
"$python" scripts/conda_pins.py requirements > "$requirements"
stamp=$venv/.requirements.sha256
wanted=$(sha256sum "$requirements" | cut -d' ' -f1)
if [[ -f $stamp && $(cat "$stamp") == "$wanted" ]]; then
    exit 0
fi
echo "setting up $venv from envs/*.yaml's pins (about a minute)" >&2
# a fresh virtualenv each time: pip would leave a package that left the list installed
rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet -r "$requirements"
"$venv/bin/python" -m pip check
"$venv/bin/python" scripts/conda_pins.py verify
cp "$requirements" "$venv/requirements.txt"   # what was installed, for reading
echo "$wanted" > "$stamp"
