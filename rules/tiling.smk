# Tissue detection and the patch grid, one job per slide; failures gathered into one report.


rule tile:
    input:
        slide=slide_path,
    output:
        tiles="results/tiles/{slide}.h5",
        # not in the report itself: rule report_sample embeds small copies of a bounded sample
        qc="results/qc/{slide}.png",
    log:
        "results/logs/tile/{slide}.log",
    benchmark:
        "results/benchmarks/tile/{slide}.tsv"
    group:
        "per_slide"
    conda:
        "../envs/slide.yaml"
    resources:
        mem_mb=retry_scaled("tile", "mem_mb"),
        runtime=retry_scaled("tile", "runtime"),
    params:
        mpp=slide_mpp_flag,
        settings=flags("tiling"),
    shell:
        "python -m hnm tile --slide {input.slide:q} --slide-id {wildcards.slide} {params.mpp} "
        "{params.settings} --out {output.tiles:q} --qc {output.qc:q} > {log:q} 2>&1"


rule failures:
    input:
        tiles(),
    output:
        "results/qc/failed_slides.tsv",
    log:
        "results/logs/failures.log",
    conda:
        "../envs/slide.yaml"
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "python -m hnm failures --tiles {input:q} --out {output:q} > {log:q} 2>&1"
