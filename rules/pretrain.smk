# Round 0's encoder. init_encoder writes the initial encoder (given weights, or random ones from
# `seed`); SimCLR pretraining on the training slides' patches then takes init_encoder's random
# weights to results/r0/encoder.pt. Pretraining is defined only when rules/common.smk chose it
# (PRETRAIN: no encoder.weights given and pretrain.epochs > 0); otherwise init_encoder writes
# results/r0/encoder.pt itself.


rule init_encoder:
    input:
        weights=config["encoder"]["weights"] or [],
    output:
        INITIAL_ENCODER,
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
        "python -m hnm init-encoder {params.settings} --seed {params.seed} --out {output:q} > {log:q} 2>&1"


if PRETRAIN:

    rule pretrain:
        input:
            sheet="results/sheet.tsv",
            encoder=INITIAL_ENCODER,
            tiles=tiles(TRAIN_SLIDES),
            tiles_list=file_list("tiles_train", tiles(TRAIN_SLIDES)),
        output:
            "results/r0/encoder.pt",
        log:
            "results/logs/r0/pretrain.log",
        benchmark:
            "results/benchmarks/r0/pretrain.tsv"
        conda:
            "../envs/torch.yaml"
        threads: rule_threads("pretrain")
        resources:
            **gpu_resources(),
            mem_mb=retry_scaled("pretrain", "mem_mb"),
            runtime=retry_scaled("pretrain", "runtime"),
        params:
            settings=flags("pretrain"),
            checkpoints="results/checkpoints/r0/pretrain",
            seed=config["seed"],
            device=config["device"],
            gpu_slot=GPU_SLOT,
        shell:
            "{params.gpu_slot}python -m hnm pretrain --sheet {input.sheet:q} --tiles @{input.tiles_list:q} "
            "--encoder-in {input.encoder:q} --out {output:q} --checkpoint-dir {params.checkpoints:q} "
            "--seed {params.seed} --device {params.device} --threads {threads} {params.settings} "
            "> {log:q} 2>&1"
