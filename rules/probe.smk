# Feature quality per round, where annotations exist (evaluation only): a linear probe on the
# round's features and the round's MIL trained again at `evaluation.mil_seeds`.


rule probe:
    input:
        sheet="results/sheet.tsv",
        eval_sheet="results/sheet_eval.tsv",
        features=lambda wildcards: features(wildcards.round),
        tiles=tiles(),
        evaluation="results/r{round}/eval/metrics.json",
    output:
        "results/r{round}/eval/probe.json",
    log:
        "results/logs/r{round}/probe.log",
    benchmark:
        "results/benchmarks/r{round}/probe.tsv"
    conda:
        "../envs/torch.yaml"
    threads: rule_threads("train_mil")
    resources:
        # One MIL training after another: train_mil's memory, its runtime once per extra seed.
        **(gpu_resources() if MIL_SEEDS else {}),
        mem_mb=retry_scaled("train_mil", "mem_mb"),
        runtime=retry_scaled("train_mil", "runtime", max(1, len(MIL_SEEDS))),
    params:
        mil=flags("mil"),
        evaluation=flags("evaluation"),
        seed=config["seed"],
        device=config["device"],
        gpu_slot=GPU_SLOT if MIL_SEEDS else "",
    shell:
        "{params.gpu_slot}python -m hnm probe --sheet {input.sheet:q} --eval-sheet "
        "{input.eval_sheet:q} --features {input.features:q} --tiles {input.tiles:q} "
        "--eval-metrics {input.evaluation:q} --out {output:q} --seed {params.seed} "
        "--device {params.device} --threads {threads} {params.mil} {params.evaluation} "
        "> {log:q} 2>&1"
