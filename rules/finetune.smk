# SupCon fine-tuning of the encoder on round r's mined sets: encoder r -> encoder r+1.


rule finetune:
    input:
        sheet="results/sheet.tsv",
        encoder=lambda wildcards: f"results/r{int(wildcards.round) - 1}/encoder.pt",
        sets=lambda wildcards: f"results/r{int(wildcards.round) - 1}/mining/sets.parquet",
        tiles=tiles(TRAIN_SLIDES),
        tiles_list=file_list("tiles_train", tiles(TRAIN_SLIDES)),
    output:
        "results/r{round}/encoder.pt",
    log:
        "results/logs/r{round}/finetune.log",
    benchmark:
        "results/benchmarks/r{round}/finetune.tsv"
    wildcard_constraints:
        round=r"[1-9]\d*",
    conda:
        "../envs/torch.yaml"
    threads: rule_threads("finetune")
    resources:
        **gpu_resources(),
        mem_mb=retry_scaled("finetune", "mem_mb"),
        runtime=retry_scaled("finetune", "runtime"),
    params:
        settings=flags("finetune"),
        rounds=ROUNDS,
        checkpoints="results/checkpoints/r{round}/finetune",
        seed=config["seed"],
        device=config["device"],
        gpu_slot=GPU_SLOT,
    shell:
        "{params.gpu_slot}python -m hnm finetune --sheet {input.sheet:q} --sets {input.sets:q} --tiles @{input.tiles_list:q} "
        "--encoder-in {input.encoder:q} --out {output:q} --checkpoint-dir {params.checkpoints:q} "
        "--rounds {params.rounds} --seed {params.seed} "
        "--device {params.device} --threads {threads} {params.settings} > {log:q} 2>&1"
