# hnm: hard-negative mining for whole-slide image classification (Huang et al., MICCAI 2024).
#
#   snakemake --cores 8 --use-conda                       # demo cohort, or set `sheet` in the config
#   snakemake --workflow-profile workflow/profiles/slurm  # the same on SLURM
#   snakemake predict --config 'predict={sheet: new.tsv}'  # the finished model on new slides
#
# Round 0's encoder: init_encoder -> pretrain (SimCLR on the train slides' patches) unless weights
# are given.
# Chain per round r = 0..R: tile -> extract (encoder r) -> mil -> mine -> finetune (r -> r+1);
# the last round's MIL is evaluated on test in results/final/.

import os
import sys
import time

from snakemake.utils import min_version

min_version("9.0")


# When this run started: the onerror handler reads the job logs written since (hnm.core.failed_logs).
RUN_STARTED = time.time()


# Found beside this file, so `snakemake -s path/to/Snakefile -d my_run` works from any folder.
configfile: os.path.join(workflow.basedir, "config", "config.yaml")


report: "workflow/report/workflow.rst"


include: "rules/common.smk"
include: "rules/lists.smk"
include: "rules/sheet.smk"
include: "rules/demo.smk"
include: "rules/tile.smk"
include: "rules/pretrain.smk"
include: "rules/extract.smk"
include: "rules/mil.smk"
include: "rules/evaluate.smk"
include: "rules/mine.smk"
include: "rules/finetune.smk"
include: "rules/report.smk"
include: "rules/viz.smk"
include: "rules/predict.smk"


onsuccess:
    # A run must not end on "100% done" alone: say what came out and where it is, then what was
    # skipped or degraded (last, where it is seen).
    from hnm.evaluate.summary import results_summary
    from hnm.evaluate.warnings import end_of_run_summary

    for summary in (results_summary("results"), end_of_run_summary("results")):
        if summary:
            print(summary, file=sys.stderr)


onerror:
    # Snakemake names a failed job's log; hnm's own error line in it says what to do.
    from hnm.core.failed_logs import failure_summary

    summary = failure_summary(log, since=RUN_STARTED)
    if summary:
        print(summary, file=sys.stderr)


rule all:
    input:
        "results/final/metrics.json",
        "results/final/rounds.csv",
        qc_pictures(),
        viz_outputs(),


rule tiles:
    input:
        tiles(),


rule features_round0:
    input:
        features(0),
