# The built-in synthetic cohort, made by a rule so a fresh checkout does real work with no download.


rule synth:
    output:
        slide="results/demo/slides/{slide}.tiff",
        annotation="results/demo/annotations/{slide}.geojson",
    log:
        "results/logs/synth/{slide}.log",
    benchmark:
        "results/benchmarks/synth/{slide}.tsv"
    conda:
        "../envs/slide.yaml"
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        label=lambda wildcards: SLIDE_ROWS[wildcards.slide]["label"],
        settings=flags("demo", skip=["slides"]),
    shell:
        "python -m hnm synth --slide-id {wildcards.slide} --label {params.label} "
        "{params.settings} --out {output.slide:q} --annotation {output.annotation:q} > {log:q} 2>&1"
