# What users look at after training: heatmaps and QuPath files of the final model's patch scores,
# what each round mined, curves and tables as figures, and small copies of a bounded sample of
# per-slide images for the Snakemake report (`snakemake --report report.html`).


rule heatmaps:
    input:
        sheet="results/sheet_eval.tsv",  # with the annotations: outlines, patch truth
        predictions="results/final/predictions.csv",
        scores=FINAL_SCORES,
        tiles=tiles(EVAL_SLIDES),
        slides=[slide_file(s) for s in EVAL_SLIDES],
        tiles_list=file_list("tiles_eval", tiles(EVAL_SLIDES)),
        out_list=file_list(
            "heatmaps_png",
            expand("results/final/heatmaps/{slide}.png", slide=EVAL_SLIDES),
        ),
    output:
        expand("results/final/heatmaps/{slide}.png", slide=EVAL_SLIDES),
    log:
        "results/logs/viz/heatmaps.log",
    benchmark:
        "results/benchmarks/viz/heatmaps.tsv"
    conda:
        "../envs/viz.yaml"
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        settings=f"{evaluation_flags()} {flags('viz')}",
    shell:
        "python -m hnm heatmaps --sheet {input.sheet:q} --predictions {input.predictions:q} "
        "--scores {input.scores:q} --tiles @{input.tiles_list:q} --out @{input.out_list:q} "
        "{params.settings} "
        "> {log:q} 2>&1"


rule qupath:
    input:
        scores=FINAL_SCORES,
        tiles=tiles(),
        tiles_list=file_list("tiles_all", tiles()),
        out_list=file_list(
            "heatmaps_geojson",
            expand("results/final/heatmaps/{slide}.geojson", slide=SLIDES),
        ),
    output:
        expand("results/final/heatmaps/{slide}.geojson", slide=SLIDES),
    log:
        "results/logs/viz/qupath.log",
    benchmark:
        "results/benchmarks/viz/qupath.tsv"
    conda:
        "../envs/viz.yaml"
    resources:
        mem_mb=2000,
        runtime=30,
    shell:
        "python -m hnm qupath --scores {input.scores:q} --tiles @{input.tiles_list:q} "
        "--out @{input.out_list:q} "
        "> {log:q} 2>&1"


rule mined:
    input:
        sheet="results/sheet_eval.tsv",  # with the annotations: outlines, patch truth
        sets="results/r{round}/mining/sets.parquet",
        tiles=tiles(TRAIN_SLIDES),
        slides=[slide_file(s) for s in TRAIN_SLIDES],
        tiles_list=file_list("tiles_train", tiles(TRAIN_SLIDES)),
    output:
        overlay=report(
            "results/final/mined/r{round}.overlay.png",
            caption="../workflow/report/mined_overlay.rst",
            category="What was mined",
            subcategory="Round {round}",
            labels={"round": "{round}", "figure": "slides"},
        ),
        overlay_svg="results/final/mined/r{round}.overlay.svg",
        gallery=report(
            "results/final/mined/r{round}.gallery.png",
            caption="../workflow/report/mined_gallery.rst",
            category="What was mined",
            subcategory="Round {round}",
            labels={"round": "{round}", "figure": "gallery"},
        ),
        gallery_svg="results/final/mined/r{round}.gallery.svg",
    log:
        "results/logs/viz/mined_r{round}.log",
    benchmark:
        "results/benchmarks/viz/mined_r{round}.tsv"
    conda:
        "../envs/viz.yaml"
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        settings=f"{evaluation_flags()} {flags('viz')}",
    shell:
        "python -m hnm mined --sheet {input.sheet:q} --round {wildcards.round} "
        "--sets {input.sets:q} --tiles @{input.tiles_list:q} --out-overlay {output.overlay:q} "
        "--out-gallery {output.gallery:q} {params.settings} > {log:q} 2>&1"


rule figures:
    input:
        sheet="results/sheet_eval.tsv",  # with the annotations: outlines, patch truth
        predictions="results/final/predictions.csv",
        finetune="results/final/finetune_epochs.csv",
        mil_metrics=expand("results/r{round}/mil/metrics.json", round=range(ROUNDS + 1)),
        eval_metrics=expand(
            "results/r{round}/eval/metrics.json", round=range(ROUNDS + 1)
        ),
        mil_epochs=expand("results/r{round}/mil/epochs.csv", round=range(ROUNDS + 1)),
        test_scores=mil_outputs(ROUNDS)["test"],
        tiles=tiles(TEST_SLIDES),
        tiles_list=file_list("tiles_test", tiles(TEST_SLIDES)),
    output:
        roc=figure_output("roc", "Test performance", "ROC curves"),
        confusion=figure_output("confusion", "Test performance", "confusion matrix"),
        rounds=figure_output("rounds", "Rounds", "metrics per round"),
        finetune=figure_output("finetune", "Training", "fine-tuning loss"),
        mil=figure_output("mil", "Training", "MIL training"),
        svgs=expand("results/final/figures/{name}.svg", name=FIGURES),
    log:
        "results/logs/viz/figures.log",
    benchmark:
        "results/benchmarks/viz/figures.tsv"
    conda:
        "../envs/viz.yaml"
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        settings=f"{evaluation_flags()} {flags('viz')}",
    shell:
        "python -m hnm figures --sheet {input.sheet:q} --predictions {input.predictions:q} "
        "--mil-metrics {input.mil_metrics:q} --eval-metrics {input.eval_metrics:q} "
        "--mil-epochs {input.mil_epochs:q} --finetune-epochs {input.finetune:q} "
        "--test-scores {input.test_scores:q} --tiles @{input.tiles_list:q} --out-roc {output.roc:q} "
        "--out-rounds {output.rounds:q} --out-confusion {output.confusion:q} "
        "--out-finetune {output.finetune:q} --out-mil {output.mil:q} {params.settings} "
        "> {log:q} 2>&1"


rule report_sample:
    input:
        sheet="results/sheet_eval.tsv",  # with the annotations: outlines, patch truth
        predictions="results/final/predictions.csv",
        metrics="results/final/metrics.json",
        rounds="results/final/rounds.csv",
        # batched tiling keeps each slide's QC picture in its tiles file (one PNG per batch)
        qc=[] if TILE_BATCHES else expand("results/qc/{slide}.png", slide=SAMPLE_QC),
        tiles=tiles() if TILE_BATCHES else [],
        tiles_list=file_list("tiles_all", tiles()) if TILE_BATCHES else [],
        heatmaps=expand("results/final/heatmaps/{slide}.png", slide=SAMPLE_HEATMAPS),
    output:
        **{f"qc_{s}": sample_output("qc", s, "Tiling QC") for s in SAMPLE_QC},
        **{
            f"heatmap_{s}": sample_output("heatmaps", s, "Heatmaps")
            for s in SAMPLE_HEATMAPS
        },
        metrics=report(
            "results/report/metrics.html",
            caption="../workflow/report/metrics_table.rst",
            category="Results",
            labels={"table": "metrics"},
        ),
        index=report(
            "results/report/slides.csv",
            caption="../workflow/report/slides.rst",
            category="Slides (sample)",
            subcategory="Every slide",
            labels={"table": "slides"},
        ),
    log:
        "results/logs/viz/report_sample.log",
    benchmark:
        "results/benchmarks/viz/report_sample.tsv"
    conda:
        "../envs/viz.yaml"
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        small=sample_files,
        settings=flags("viz"),
        # batched tiling: the sample's QC pictures come from every slide's tiles files
        qc_from_tiles=(
            lambda wildcards, input: (
                f"--tiles @{shlex.quote(input.tiles_list)} --qc-slides {' '.join(SAMPLE_QC)}"
                if TILE_BATCHES
                else ""
            )
        ),
    shell:
        "python -m hnm report-sample {params.qc_from_tiles} "
        "--images {input.qc:q} {input.heatmaps:q} "
        "--out {params.small:q} --sheet {input.sheet:q} --predictions {input.predictions:q} "
        "--out-index {output.index:q} --metrics {input.metrics:q} --rounds {input.rounds:q} "
        "--out-metrics {output.metrics:q} {params.settings} > {log:q} 2>&1"
