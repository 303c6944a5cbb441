# MIL aggregator training per round, and its evaluation on held-out slides.


rule mil:
    input:
        sheet="results/sheet.tsv",
        features=lambda wildcards: features(wildcards.round),
        features_list=lambda wildcards: features_list(wildcards.round),
    output:
        **mil_outputs("{round}"),
    log:
        "results/logs/r{round}/mil.log",
    benchmark:
        "results/benchmarks/r{round}/mil.tsv"
    conda:
        "../envs/torch.yaml"
    threads: rule_threads("mil")
    resources:
        **gpu_resources(),
        mem_mb=retry_scaled("mil", "mem_mb"),
        runtime=retry_scaled("mil", "runtime"),
    params:
        settings=flags("mil"),
        folder="results/r{round}/mil",
        checkpoints="results/checkpoints/r{round}/mil",
        seed=config["seed"],
        device=config["device"],
        gpu_slot=GPU_SLOT,
    shell:
        "{params.gpu_slot}python -m hnm mil --sheet {input.sheet:q} --features @{input.features_list:q} "
        "--out-dir {params.folder:q} --checkpoint-dir {params.checkpoints:q} --seed {params.seed} "
        "--device {params.device} --threads {threads} {params.settings} > {log:q} 2>&1"
