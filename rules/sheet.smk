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
            f"--labels {shlex.quote(json.dumps(config['labels']))}"
        ),
    shell:
        "python -m hnm check-sheet {params.source} --out {output:q} > {log:q} 2>&1"
