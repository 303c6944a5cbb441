# The normalised slide sheets later stages read (absolute paths, 0/1 labels), in two copies: the
# training sheet without annotations (tiling to fine-tuning) and the evaluation sheet with them, so
# an annotation changed in the sheet or edited in place re-runs evaluation and nothing upstream.


SHEET_SOURCE = (
    f"--demo-counts {shlex.quote(json.dumps(config['demo']['slides'], sort_keys=True))}"
    if DEMO
    else f"--sheet {shlex.quote(config['sheet'])} "
    f"--labels {shlex.quote(json.dumps(config['labels']))} "
    f"--annotation-classes {shlex.quote(json.dumps(ANNOTATION_CLASSES))}"
)
ONE_CLASS_FLAG = (
    "--allow-one-class-eval-splits" if config["allow_one_class_eval_splits"] else ""
)


rule check_sheet:
    # The user's sheet is not an input: its annotation column and mtime must not re-run training.
    # The digest of the training columns is a param, so a changed row re-runs what reads them.
    output:
        "results/sheet.tsv",
    log:
        "results/logs/sheet.log",
    conda:
        "../envs/slide.yaml"
    resources:
        mem_mb=500,
        runtime=5,
    params:
        source=SHEET_SOURCE,
        one_class=ONE_CLASS_FLAG,
        training_rows=TRAINING_SHEET_DIGEST,
    shell:
        "python -m hnm check-sheet {params.source} {params.one_class} --without-annotations "
        "--out {output:q} > {log:q} 2>&1"


rule eval_sheet:
    input:
        sheet=[] if DEMO else config["sheet"],
        annotations=annotation_files(),
    output:
        "results/sheet_eval.tsv",
    log:
        "results/logs/sheet_eval.log",
    conda:
        "../envs/slide.yaml"
    resources:
        mem_mb=500,
        runtime=5,
    params:
        source=SHEET_SOURCE,
        one_class=ONE_CLASS_FLAG,
    shell:
        "python -m hnm check-sheet {params.source} {params.one_class} --out {output:q} "
        "> {log:q} 2>&1"
