# The initial encoder (round 0's, or pretraining's starting point: rules/common.smk) and feature
# extraction for every round: one job per slide, or one per batch of at most
# `extraction.slides_per_job` slides (each batch its own rule, since a rule's outputs cannot vary
# with a wildcard), so small slides do not each pay the interpreter and device start-up. A slide's
# batch follows from its id alone (hnm.extract.batches), so a grown cohort re-extracts only the
# batches its new slides join.


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


EXTRACT_SETTINGS = flags("extraction", skip=["slides_per_job"])
EXTRACT_SHELL = (
    "{params.gpu_slot}python -m hnm extract --slide {input.slides:q} --slide-id {params.slide_ids} "
    "--tiles {input.tiles:q} --encoder {input.encoder:q} --round {wildcards.round} "
    "--device {params.device} --threads {threads} {params.settings} --out {output:q} "
    "> {log:q} 2>&1"
)


if config["extraction"]["slides_per_job"] == 1:

    rule extract:
        input:
            slides=slide_path,
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
            slide_ids=lambda wildcards: wildcards.slide,
            settings=EXTRACT_SETTINGS,
            device=config["device"],
            gpu_slot=GPU_SLOT,
        shell:
            EXTRACT_SHELL

else:
    for batch, members in slide_batches(config["extraction"]["slides_per_job"]).items():

        rule:
            name:
                f"extract_{batch}"
            input:
                slides=[slide_file(slide) for slide in members],
                tiles=tiles(members),
                encoder="results/r{round}/encoder.pt",
            output:
                expand("results/r{{round}}/features/{slide}.h5", slide=members),
            log:
                f"results/logs/r{{round}}/extract/{batch}.log",
            benchmark:
                f"results/benchmarks/r{{round}}/extract/{batch}.tsv"
            conda:
                "../envs/torch.yaml"
            threads: rule_threads("extract")
            resources:
                **gpu_resources(),
                mem_mb=retry_scaled("extract", "mem_mb"),
                # resources.extract.runtime is per slide
                runtime=retry_scaled("extract", "runtime", slides=len(members)),
            params:
                slide_ids=" ".join(members),
                settings=EXTRACT_SETTINGS,
                device=config["device"],
                gpu_slot=GPU_SLOT,
            shell:
                EXTRACT_SHELL
