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
            f"--demo-counts '{json.dumps(config['demo']['slides'])}'"
            if DEMO
            else f"--sheet {config['sheet']} --labels '{json.dumps(config['labels'])}'"
        ),
    shell:
        "python -m hnm check-sheet {params.source} --out {output} > {log} 2>&1"
