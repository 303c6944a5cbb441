#!/usr/bin/env bash
# Set up .venv, then run the whole workflow on the built-in synthetic cohort (results/ in the repo)
# and build the report (results/report.html). Extra arguments go to snakemake, e.g.
# `bash scripts/demo.sh --dry-run`. HNM_DEMO_VERBOSE=1 shows Snakemake's full output.
#
# The console gets one line per finished job ("12 of 180 steps (7%) done: tile") and, at the end,
# the final metrics and where the results are (the Snakefile's onsuccess handler). Snakemake's own
# per-job blocks list every input of the job (all 48 slides for the jobs that gather them), which
# buried the progress in about 1,900 lines. They are filtered out here rather than with
# `--quiet rules`, which would also hide a failed job's error block and log.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh
source .venv/bin/activate

started=$(mktemp)
trap 'rm -f "$started"' EXIT

# Drops Snakemake's job-start blocks ("rule x:", "localrule x:" or "Group job ...:" and the
# indented and blank lines after them), blank lines, timestamps and scheduler chatter; folds "Finished jobid: n (Rule: x)" into the
# next progress line. Error blocks ("Error in rule x:"), warnings and the summary pass unchanged.
quiet() {
    trap '' INT # Ctrl-C stops snakemake, which still prints why; the filter outlives it
    exec awk '
        /^ *\[(Mon|Tue|Wed|Thu|Fri|Sat|Sun) [^]]*\]/ {
            if ($0 ~ /Group job .*:$/) in_job = 1
            next
        }
        /^ *(local)?rule [A-Za-z0-9_]+:$/ { in_job = 1; next }
        in_job && (/^[ \t]/ || /^$/) { next }
        { in_job = 0 }
        /^$/ { next }
        /^Select jobs to execute\.\.\.$/ || /^Execute [0-9]+ jobs\.\.\.$/ { next }
        /^Finished jobid: [0-9]+ \(Rule: [A-Za-z0-9_]+\)$/ {
            rule = $NF; sub(/\)$/, "", rule); next
        }
        /^[0-9]+ of [0-9]+ steps \([0-9.]+%\) done$/ && rule != "" {
            print $0 ": " rule; rule = ""; fflush(); next
        }
        { print; fflush() }
    '
}

# The run's closing summary names the report that is built after it (hnm.evaluate.summary).
export HNM_REPORT=results/report.html
if [[ ${HNM_DEMO_VERBOSE:-} == 1 ]]; then
    snakemake --cores all --rerun-incomplete "$@"
else
    snakemake --cores all --rerun-incomplete --quiet reason host "$@" 2>&1 | quiet
fi

# A run that (re)made the final metrics also gets its report; dry runs, --unlock and runs with
# nothing to do leave it as it was.
if [[ results/final/metrics.json -nt $started ]]; then
    if snakemake --cores all --quiet all --report "$HNM_REPORT" "$@"; then
        echo "Report written: $HNM_REPORT (one HTML file; open it in a browser)" >&2
    else
        echo "The report could not be built; see: snakemake --report $HNM_REPORT" >&2
    fi
fi
