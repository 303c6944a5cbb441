# Pseudo-labels and hard-negative mining from a round's patch scores.


rule mine:
    input:
        unpack(previous_mining),
        sheet="results/sheet.tsv",
        scores="results/r{round}/mil/scores/train.parquet",
        metrics="results/r{round}/mil/metrics.json",
    output:
        sets="results/r{round}/mining/sets.parquet",
        summary="results/r{round}/mining/summary.json",
    log:
        "results/logs/r{round}/mine.log",
    conda:
        "../envs/report.yaml"
    resources:
        mem_mb=4000,
        runtime=15,
    params:
        settings=flags("mine"),
        previous=previous_mining_flags,
        # The encoder's epoch schedule (finetune section) fixes the curriculum r(t); its total
        # length is computed by the stage from these (hnm.mine.schedule.EncoderSchedule).
        schedule=(
            f"--epochs-per-round {config['finetune']['epochs_per_round']} "
            f"--warmup {config['finetune']['warmup']} "
            f"--refresh-offset {config['finetune']['refresh_offset']} --rounds {ROUNDS}"
        ),
    shell:
        "python -m hnm mine --sheet {input.sheet:q} --scores {input.scores:q} --metrics {input.metrics:q} "
        "--round {wildcards.round} {params.previous} {params.schedule} {params.settings} "
        "--out {output.sets:q} --summary {output.summary:q} > {log:q} 2>&1"
