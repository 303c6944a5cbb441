# MIL aggregator training per round, and its evaluation on held-out slides.


rule train_mil:
    input:
        sheet="results/sheet.tsv",
        features=lambda wildcards: features(wildcards.round),
    output:
        **mil_outputs("{round}"),
    log:
        "results/logs/r{round}/train_mil.log",
    benchmark:
        "results/benchmarks/r{round}/train_mil.tsv"
    conda:
        "../envs/torch.yaml"
    threads: rule_threads("train_mil")
    resources:
        **gpu_resources(),
        mem_mb=retry_scaled("train_mil", "mem_mb"),
        runtime=retry_scaled("train_mil", "runtime"),
    params:
        settings=flags("mil"),
        folder="results/r{round}/mil",
        checkpoints="results/checkpoints/r{round}/mil",
        seed=config["seed"],
        device=config["device"],
        gpu_slot=GPU_SLOT,
    shell:
        "{params.gpu_slot}python -m hnm train-mil --sheet {input.sheet:q} --features {input.features:q} "
        "--out-dir {params.folder:q} --checkpoint-dir {params.checkpoints:q} --seed {params.seed} "
        "--device {params.device} --threads {threads} {params.settings} > {log:q} 2>&1"


rule evaluate:
    input:
        unpack(lambda wildcards: mil_outputs(wildcards.round)),
        sheet="results/sheet_eval.tsv",
        tiles=tiles(),
    output:
        metrics="results/r{round}/eval/metrics.json",
        predictions="results/r{round}/eval/predictions.csv",
    log:
        "results/logs/r{round}/evaluate.log",
    conda:
        "../envs/report.yaml"
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        settings=evaluation_flags(),
    shell:
        "python -m hnm evaluate --sheet {input.sheet:q} --mil-metrics {input.metrics:q} "
        "--mil-slides {input.slides:q} --train-scores {input.train:q} --val-scores {input.val:q} "
        "--test-scores {input.test:q} --tiles {input.tiles:q} --out {output.metrics:q} "
        "--predictions {output.predictions:q} {params.settings} > {log:q} 2>&1"
