# Tissue detection and the patch grid, one job per slide (skipped slides: rule failures).


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
        settings=flags("tile"),
    shell:
        "python -m hnm tile --slide {input.slide:q} --slide-id {wildcards.slide} {params.mpp} "
        "{params.settings} --out {output.tiles:q} --qc {output.qc:q} > {log:q} 2>&1"
