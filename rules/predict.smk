# Applying the finished run's model to new slides (docs/usage.md, "Predicting new slides"):
#   snakemake predict --config 'predict={sheet: /data/new_slides.tsv}'
# The sheet (slide_id, path[, mpp]) -> tiles -> features with the final round's encoder -> slide
# probability and decision at the val threshold (the final MIL's metrics.json), patch scores,
# heatmaps and QuPath files, all in results/predict/<name>/. Every file of the training run is an
# input as it stands (encoder, MIL model, metrics), and the stages are the training run's own
# (tile, extract, the scoring of hnm.mil.outputs, heatmaps, qupath), with the same settings.


rule predict:
    input:
        predict_outputs,


if PREDICT.sheet:

    rule predict_sheet:
        # The sheet's rows, not its file, re-run what follows (as rule check_sheet does for training).
        output:
            f"{PREDICT_DIR}/sheet.tsv",
        log:
            f"{PREDICT_DIR}/logs/sheet.log",
        conda:
            "../envs/slide.yaml"
        resources:
            mem_mb=500,
            runtime=5,
        params:
            sheet=PREDICT.sheet,
            rows=hashlib.sha256(PREDICT_SHEET.to_csv(sep="\t").encode()).hexdigest(),
        shell:
            "python -m hnm check-sheet --new-slides {params.sheet:q} --out {output:q} > {log:q} 2>&1"

    use rule file_list as predict_file_list with:
        output:
            f"{PREDICT_DIR}/lists/{{name}}.txt",
        log:
            f"{PREDICT_DIR}/logs/lists/{{name}}.log",
        params:
            digest=list_digest_of(PREDICT_DIR),

    tiling_rule(
        "predict_tile",
        slides=lambda wildcards: PREDICT_ROWS[wildcards.slide]["path"],
        tiles_out=predict_file("tiles", "{slide}", "h5"),
        qc_out=predict_file("qc", "{slide}", "png"),
        mpp=predict_mpp_flag,
        log=f"{PREDICT_DIR}/logs/tile/{{slide}}.log",
        benchmark=f"{PREDICT_DIR}/benchmarks/tile/{{slide}}.tsv",
    )
    # Extraction with the final round's encoder, cut into jobs as training's (rules/extract.smk).
    PREDICT_BATCHES = (
        extraction_batches(PREDICT_SLIDES, config["extract"]["slides_per_job"])
        if config["extract"]["slides_per_job"] > 1
        else {}
    )
    if PREDICT_BATCHES:
        extraction_rule(
            "predict_extract",
            slides=lambda wildcards: [
                PREDICT_ROWS[s]["path"] for s in PREDICT_BATCHES[wildcards.batch]
            ],
            tiles=lambda wildcards: predict_files(
                "tiles", "h5", PREDICT_BATCHES[wildcards.batch]
            ),
            encoder=FINAL_ENCODER,
            outputs=predict_file("features", "batches/{batch}", "h5"),
            log=f"{PREDICT_DIR}/logs/extract/batches/{{batch}}.log",
            benchmark=f"{PREDICT_DIR}/benchmarks/extract/batches/{{batch}}.tsv",
            slide_ids=lambda wildcards: " ".join(PREDICT_BATCHES[wildcards.batch]),
            round_=ROUNDS,
            batches=PREDICT_BATCHES,
        )
        PREDICT_FEATURES = [
            predict_file("features", f"batches/{batch}", "h5")
            for batch in sorted(PREDICT_BATCHES)
        ]
    else:
        extraction_rule(
            "predict_extract",
            slides=lambda wildcards: PREDICT_ROWS[wildcards.slide]["path"],
            tiles=predict_file("tiles", "{slide}", "h5"),
            encoder=FINAL_ENCODER,
            outputs=predict_file("features", "{slide}", "h5"),
            log=f"{PREDICT_DIR}/logs/extract/{{slide}}.log",
            benchmark=f"{PREDICT_DIR}/benchmarks/extract/{{slide}}.tsv",
            slide_ids=lambda wildcards: wildcards.slide,
            round_=ROUNDS,
        )
        PREDICT_FEATURES = predict_files("features", "h5")

    rule predict_score:
        input:
            sheet=f"{PREDICT_DIR}/sheet.tsv",
            features=PREDICT_FEATURES,
            features_list=predict_list("features", PREDICT_FEATURES),
            model=mil_outputs(ROUNDS)["model"],
            metrics=mil_outputs(ROUNDS)["metrics"],
        output:
            predictions=f"{PREDICT_DIR}/predictions.csv",
            scores=f"{PREDICT_DIR}/scores.parquet",
            summary=f"{PREDICT_DIR}/summary.json",
        log:
            f"{PREDICT_DIR}/logs/score.log",
        benchmark:
            f"{PREDICT_DIR}/benchmarks/score.tsv"
        conda:
            "../envs/torch.yaml"
        threads: rule_threads("mil")
        resources:
            **gpu_resources(),
            mem_mb=retry_scaled("mil", "mem_mb"),
            runtime=30,
        params:
            device=config["device"],
            gpu_slot=GPU_SLOT,
        shell:
            "{params.gpu_slot}python -m hnm predict --sheet {input.sheet:q} --features "
            "@{input.features_list:q} --model {input.model:q} --mil-metrics {input.metrics:q} "
            "--out-predictions {output.predictions:q} --out-scores {output.scores:q} "
            "--out-summary {output.summary:q} --device {params.device} --threads {threads} "
            "> {log:q} 2>&1"

    use rule heatmaps as predict_heatmaps with:
        input:
            sheet=f"{PREDICT_DIR}/sheet.tsv",
            predictions=f"{PREDICT_DIR}/predictions.csv",
            scores=f"{PREDICT_DIR}/scores.parquet",
            tiles=predict_files("tiles", "h5"),
            slides=[PREDICT_ROWS[slide]["path"] for slide in PREDICT_SLIDES],
            tiles_list=predict_list("tiles", predict_files("tiles", "h5")),
            out_list=predict_list("heatmaps_png", predict_files("heatmaps", "png")),
        output:
            predict_files("heatmaps", "png"),
        log:
            f"{PREDICT_DIR}/logs/heatmaps.log",
        benchmark:
            f"{PREDICT_DIR}/benchmarks/heatmaps.tsv"

    use rule qupath as predict_qupath with:
        input:
            scores=f"{PREDICT_DIR}/scores.parquet",
            tiles=predict_files("tiles", "h5"),
            tiles_list=predict_list("tiles", predict_files("tiles", "h5")),
            out_list=predict_list(
                "heatmaps_geojson", predict_files("heatmaps", "geojson")
            ),
        output:
            predict_files("heatmaps", "geojson"),
        log:
            f"{PREDICT_DIR}/logs/qupath.log",
        benchmark:
            f"{PREDICT_DIR}/benchmarks/qupath.tsv"
