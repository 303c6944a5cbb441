#!/usr/bin/env bash
# Lint and format checks of the whole repository, without changing a file:
#   ruff check                         Python lint (rules in pyproject.toml)
#   ruff format --check, import order  Python formatting (ruff format does not sort imports, so
#                                      `ruff check --select I` is the other half of it)
#   snakefmt --check                   Snakefile and rules/
#   snakemake --lint                   the workflow's own lint, in a scratch working directory so
#                                      that nothing (.snakemake/, results/) is written into the repo
# Every check runs even when an earlier one fails; the exit status is 1 if any failed. To fix the
# formatting (see the changes first with `ruff format --diff .`):
#   ruff format . && ruff check --select I --fix . && snakefmt Snakefile rules
set -uo pipefail
cd "$(dirname "$0")/.."
if [[ -z ${VIRTUAL_ENV:-} && -f .venv/bin/activate ]]; then
    source .venv/bin/activate
fi

failed=()
check() {
    local name=$1
    shift
    echo "== $name"
    if "$@"; then
        echo "ok"
    else
        failed+=("$name")
    fi
}

snakemake_lint() {
    local scratch status
    scratch=$(mktemp -d)
    python -m snakemake --snakefile "$PWD/Snakefile" --directory "$scratch" --lint
    status=$?
    rm -rf "$scratch"
    return "$status"
}

check "ruff check" python -m ruff check .
check "ruff format --check" python -m ruff format --check --output-format concise .
check "import order (ruff check --select I)" python -m ruff check --select I --output-format concise .
check "snakefmt --check" python -m snakefmt --check Snakefile rules
check "snakemake --lint" snakemake_lint

if ((${#failed[@]})); then
    printf 'failed: %s\n' "${failed[@]}" >&2
    exit 1
fi
echo "all checks passed"
