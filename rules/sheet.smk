# The normalised slide sheet every later stage reads (absolute paths, 0/1 labels).


rule sheet:
    input:
        [] if DEMO else config["sheet"],
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
        source=(
            f"--demo-counts {shlex.quote(json.dumps(config['demo']['slides']))}"
            if DEMO
            else f"--sheet {shlex.quote(config['sheet'])} "
            f"--labels {shlex.quote(json.dumps(config['labels']))} "
            f"--annotation-classes {shlex.quote(json.dumps(ANNOTATION_CLASSES))}"
        ),
        one_class=(
            "--allow-one-class-eval-splits"
            if config["allow_one_class_eval_splits"]
            else ""
        ),
    shell:
        "python -m hnm check-sheet {params.source} {params.one_class} --out {output:q} "
        "> {log:q} 2>&1"
