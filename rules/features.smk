# Encoders and per-slide feature extraction for every round.


rule init_encoder:
    input:
        weights=config["encoder"]["weights"] or [],
    output:
        "results/r0/encoder.pt",
    log:
        "results/logs/r0/init_encoder.log",
    conda:
        "../envs/torch.yaml"
    resources:
        mem_mb=4000,
        runtime=10,
    params:
        settings=flags("encoder"),
        seed=config["seed"],
    shell:
        "python -m hnm init-encoder {params.settings} --seed {params.seed} --out {output} > {log} 2>&1"


rule extract:
    input:
        slide=slide_path,
        tiles="results/tiles/{slide}.h5",
        encoder="results/r{round}/encoder.pt",
    output:
        "results/r{round}/features/{slide}.h5",
    log:
        "results/logs/r{round}/extract/{slide}.log",
    benchmark:
        "results/benchmarks/r{round}/extract/{slide}.tsv"
    conda:
        "../envs/torch.yaml"
    threads: rule_threads("extract")
    resources:
        **gpu_resources(),
        mem_mb=retry_scaled("extract", "mem_mb"),
        runtime=retry_scaled("extract", "runtime"),
    params:
        settings=flags("extraction"),
        device=config["device"],
    shell:
        "python -m hnm extract --slide {input.slide} --slide-id {wildcards.slide} --tiles {input.tiles} "
        "--encoder {input.encoder} --round {wildcards.round} --device {params.device} "
        "{params.settings} --out {output} > {log} 2>&1"
