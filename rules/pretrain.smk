# SimCLR pretraining of round 0's encoder on the training slides' patches: init_encoder's random
# weights -> results/r0/encoder.pt. Defined only when rules/common.smk chose it (PRETRAIN: no
# encoder.weights given and pretrain.epochs > 0); otherwise init_encoder writes that file itself.

if PRETRAIN:

    rule pretrain:
        input:
            sheet="results/sheet.tsv",
            encoder=INITIAL_ENCODER,
            tiles=tiles(TRAIN_SLIDES),
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
            "{params.gpu_slot}python -m hnm pretrain --sheet {input.sheet:q} --tiles {input.tiles:q} "
            "--encoder-in {input.encoder:q} --out {output:q} --checkpoint-dir {params.checkpoints:q} "
            "--seed {params.seed} --device {params.device} --threads {threads} {params.settings} "
            "> {log:q} 2>&1"
