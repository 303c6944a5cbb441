# Feature extraction for every round: one job per slide, or one per batch of at most
# `extract.slides_per_job` slides (each batch its own rule, since a rule's outputs cannot vary
# with a wildcard), so small slides do not each pay the interpreter and device start-up. A slide's
# batch follows from its id alone (hnm.extract.batches), so a grown cohort re-extracts only the
# batches its new slides join.


# slides_per_job is the workflow's. feature_dtype goes on the command line only where it is not the
# stage's default (float32): the command is a rerun trigger, and runs begun before the setting
# existed must not re-extract every round for a flag that changes nothing.
DEFAULT_FEATURE_DTYPE = config["extract"]["feature_dtype"] == "float32"
EXTRACT_SETTINGS = flags(
    "extract",
    skip=[
        "slides_per_job",
        "keep_rounds",
        *(["feature_dtype"] if DEFAULT_FEATURE_DTYPE else []),
    ],
)


def extraction_rule(
    name,
    slides,
    tiles,
    encoder,
    outputs,
    log,
    benchmark,
    slide_ids,
    round_,
    prune=False,
    rounds=r"\d+",
    temporary=False,
):
    """The one extraction rule, defined once per job shape: training's per-slide rule (wildcard
    `slide`) or each batch of training's or predict's slides (rules/predict.smk). `slides`,
    `tiles` and `outputs` are patterns or lists; `slide_ids` and `round_` are what the command
    gets for --slide-id and --round (strings, or functions of the wildcards).

    `prune` (training's shapes, whose outputs have a `round` wildcard): with extract.keep_rounds
    the shape is two rules told apart by their `rounds` constraint, `name` for KEPT_ROUNDS and
    `{name}_pruned` for PRUNED_ROUNDS, whose outputs are `temporary` (temp())."""
    if prune and PRUNED_ROUNDS:
        shape = (slides, tiles, encoder, outputs, log, benchmark, slide_ids, round_)
        extraction_rule(name, *shape, rounds=round_pattern(KEPT_ROUNDS))
        extraction_rule(
            f"{name}_pruned",
            *shape,
            rounds=round_pattern(PRUNED_ROUNDS),
            temporary=True,
        )
        return
    per_job = 1 if isinstance(slides, str) or callable(slides) else len(slides)

    rule:
        name:
            name
        input:
            slides=slides,
            tiles=tiles,
            encoder=encoder,
        output:
            temp(outputs) if temporary else outputs,
        log:
            log,
        benchmark:
            benchmark
        wildcard_constraints:
            round=rounds,
        conda:
            "../envs/torch.yaml"
        threads: rule_threads("extract")
        resources:
            **gpu_resources(),
            mem_mb=retry_scaled("extract", "mem_mb"),
            # resources.extract.runtime is per slide
            runtime=retry_scaled("extract", "runtime", slides=per_job),
        params:
            slide_ids=slide_ids,
            round=round_,
            settings=EXTRACT_SETTINGS,
            device=config["device"],
            gpu_slot=GPU_SLOT,
        shell:
            "{params.gpu_slot}python -m hnm extract --slide {input.slides:q} --slide-id "
            "{params.slide_ids} --tiles {input.tiles:q} --encoder {input.encoder:q} --round "
            "{params.round} --device {params.device} --threads {threads} {params.settings} "
            "--out {output:q} > {log:q} 2>&1"


if config["extract"]["slides_per_job"] == 1:
    extraction_rule(
        "extract",
        slides=slide_path,
        tiles="results/tiles/{slide}.h5",
        encoder="results/r{round}/encoder.pt",
        outputs="results/r{round}/features/{slide}.h5",
        log="results/logs/r{round}/extract/{slide}.log",
        benchmark="results/benchmarks/r{round}/extract/{slide}.tsv",
        slide_ids=lambda wildcards: wildcards.slide,
        round_=lambda wildcards: wildcards.round,
        prune=True,
    )
else:
    for batch, members in slide_batches(config["extract"]["slides_per_job"]).items():
        extraction_rule(
            f"extract_{batch}",
            slides=[slide_file(slide) for slide in members],
            tiles=tiles(members),
            encoder="results/r{round}/encoder.pt",
            outputs=expand("results/r{{round}}/features/{slide}.h5", slide=members),
            log=f"results/logs/r{{round}}/extract/{batch}.log",
            benchmark=f"results/benchmarks/r{{round}}/extract/{batch}.tsv",
            slide_ids=" ".join(members),
            round_=lambda wildcards: wildcards.round,
            prune=True,
        )
