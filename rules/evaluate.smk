# Scoring each round on held-out slides: the MIL's slide and patch metrics (rule evaluate)
# and, where annotations exist, the round's feature quality (rule probe).


rule evaluate:
    input:
        unpack(lambda wildcards: mil_outputs(wildcards.round)),
        sheet="results/sheet_eval.tsv",
        tiles=tiles(),
        tiles_list=file_list("tiles_all", tiles()),
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
        "--test-scores {input.test:q} --tiles @{input.tiles_list:q} --out {output.metrics:q} "
        "--predictions {output.predictions:q} {params.settings} > {log:q} 2>&1"


# Feature quality per round, where annotations exist (evaluation only): a linear probe on the
# round's features and the round's MIL trained again at `evaluate.mil_seeds`.


rule probe:
    input:
        sheet="results/sheet.tsv",
        eval_sheet="results/sheet_eval.tsv",
        features=lambda wildcards: features(wildcards.round),
        features_list=lambda wildcards: features_list(wildcards.round),
        tiles=tiles(),
        tiles_list=file_list("tiles_all", tiles()),
        evaluation="results/r{round}/eval/metrics.json",
    output:
        "results/r{round}/eval/probe.json",
    log:
        "results/logs/r{round}/probe.log",
    benchmark:
        "results/benchmarks/r{round}/probe.tsv"
    conda:
        "../envs/torch.yaml"
    threads: rule_threads("mil")
    resources:
        # One MIL training after another: mil's memory, its runtime once per extra seed.
        **(gpu_resources() if MIL_SEEDS else {}),
        mem_mb=retry_scaled("mil", "mem_mb"),
        runtime=retry_scaled("mil", "runtime", max(1, len(MIL_SEEDS))),
    params:
        mil=flags("mil"),
        evaluation=flags("evaluate"),
        seed=config["seed"],
        device=config["device"],
        gpu_slot=GPU_SLOT if MIL_SEEDS else "",
    shell:
        "{params.gpu_slot}python -m hnm probe --sheet {input.sheet:q} --eval-sheet "
        "{input.eval_sheet:q} --features @{input.features_list:q} --tiles @{input.tiles_list:q} "
        "--eval-metrics {input.evaluation:q} --out {output:q} --seed {params.seed} "
        "--device {params.device} --threads {threads} {params.mil} {params.evaluation} "
        "> {log:q} 2>&1"
