# The end of the chain: every skipped slide in one table, round R's model evaluated on test, and
# the per-round table.


# A round whose features are removed once used (extract.keep_rounds) is read from its MIL's
# metrics.json, which records the failed features files: reading the files would keep them until
# this job, at the end of the run. Only then does the command name the MIL metrics, so that a run
# without keep_rounds keeps its command (a rerun trigger).
FAILURES_MIL_FLAG = "--mil-metrics {input.mil_metrics:q} " if PRUNED_ROUNDS else ""


rule failures:
    # Skip mode (on_slide_error: skip) can drop a slide at tiling, extraction or fine-tuning: the
    # tiles file, a round's features file or a fine-tuned encoder records it, so all are read.
    input:
        tiles=tiles(),
        tiles_list=file_list("tiles_all", tiles()),
        features=[path for r in KEPT_ROUNDS for path in features(r)],
        features_list=file_list(
            "features_kept", [path for r in KEPT_ROUNDS for path in features(r)]
        ),
        mil_metrics=[mil_outputs(r)["metrics"] for r in PRUNED_ROUNDS],
        encoders=expand("results/r{round}/encoder.pt", round=range(1, ROUNDS + 1)),
    output:
        "results/qc/failed_slides.tsv",
    log:
        "results/logs/failures.log",
    conda:
        "../envs/torch.yaml"
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "python -m hnm failures --tiles @{input.tiles_list:q} --features @{input.features_list:q} "
        + FAILURES_MIL_FLAG
        + "--encoders {input.encoders:q} --out {output:q} > {log:q} 2>&1"


rule report:
    input:
        rounds_eval=expand(
            "results/r{round}/eval/metrics.json", round=range(ROUNDS + 1)
        ),
        rounds_mil=expand("results/r{round}/mil/metrics.json", round=range(ROUNDS + 1)),
        mining=expand("results/r{round}/mining/summary.json", round=range(ROUNDS)),
        encoders=expand("results/r{round}/encoder.pt", round=range(1, ROUNDS + 1)),
        predictions=f"results/r{ROUNDS}/eval/predictions.csv",
        probe=probe_outputs(),
        failures="results/qc/failed_slides.tsv",
    output:
        metrics=report(
            "results/final/metrics.json",
            caption="../workflow/report/metrics.rst",
            category="Results",
        ),
        predictions="results/final/predictions.csv",
        finetune="results/final/finetune_epochs.csv",
        rounds=report(
            "results/final/rounds.csv",
            caption="../workflow/report/rounds.rst",
            category="Results",
        ),
        timing="results/final/timing.csv",
    log:
        "results/logs/report.log",
    conda:
        "../envs/torch.yaml"
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "python -m hnm report --mil-metrics {input.rounds_mil:q} --eval-metrics "
        "{input.rounds_eval:q} --mining-summaries {input.mining:q} --encoders {input.encoders:q} "
        "--predictions {input.predictions:q} --probe-metrics {input.probe:q} "
        "--failures {input.failures:q} "
        "--out-metrics {output.metrics:q} --out-predictions {output.predictions:q} "
        "--out-rounds {output.rounds:q} --out-timing {output.timing:q} --out-finetune {output.finetune:q} > {log:q} 2>&1"
