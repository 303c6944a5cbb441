# Feature extraction for every round: one job per slide, or one per batch of at most
# `extract.slides_per_job` slides (one rule with a `batch` wildcard, writing one features file per
# batch, a group per slide), so small slides do not each pay the interpreter and device start-up,
# and ten thousand slides make a plan of thousands of files rather than hundreds of thousands. A
# slide's batch follows from its id alone (hnm.extract.batches), so a grown cohort re-extracts
# only the batches its new slides join.


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
    batches=None,
):
    """The one extraction rule, defined once per job shape: per slide (wildcard `slide`), or per
    batch (`batches`, {batch name: slides}; wildcard `batch`, one output file holding every slide
    of the batch), for training's slides and predict's (rules/predict.smk). `slides`, `tiles` and
    `outputs` are patterns, lists or functions; `slide_ids` and `round_` are what the command gets
    for --slide-id and --round (strings, or functions of the wildcards).

    `prune` (training's shapes, whose outputs have a `round` wildcard): with extract.keep_rounds
    the shape is two rules told apart by their `rounds` constraint, `name` for KEPT_ROUNDS and
    `{name}_pruned` for PRUNED_ROUNDS, whose outputs are `temporary` (temp())."""
    if prune and PRUNED_ROUNDS:
        shape = (slides, tiles, encoder, outputs, log, benchmark, slide_ids, round_)
        extraction_rule(
            name, *shape, rounds=round_pattern(KEPT_ROUNDS), batches=batches
        )
        extraction_rule(
            f"{name}_pruned",
            *shape,
            rounds=round_pattern(PRUNED_ROUNDS),
            temporary=True,
            batches=batches,
        )
        return
    if batches is not None:
        per_job = batches
    else:
        per_job = 1 if isinstance(slides, str) or callable(slides) else len(slides)
    # The per-slide command is the one runs begun before batch files recorded (Snakemake re-runs
    # a job whose command changed).
    out_flag = "--batch --out {output:q}" if batches is not None else "--out {output:q}"
    # A batch job's slide files are not inputs: its tiles files, made from them, already are (a
    # changed slide is tiled again, and its batch extracted again). Each input file costs
    # Snakemake a lookup while it plans: at 10,000 slides x 21 rounds, 210,000 of them.
    slide_inputs = {} if batches is not None else {"slides": slides}
    slide_flag = "{params.slide_paths}" if batches is not None else "{input.slides:q}"
    slide_params = (
        {}
        if batches is None
        else {
            "slide_paths": lambda wildcards: " ".join(
                shlex.quote(str(path)) for path in slides(wildcards)
            )
        }
    )

    rule:
        name:
            name
        input:
            **slide_inputs,
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
            **slide_params,
            slide_ids=slide_ids,
            round=round_,
            settings=EXTRACT_SETTINGS,
            device=config["device"],
            gpu_slot=GPU_SLOT,
        shell:
            "{params.gpu_slot}python -m hnm extract --slide "
            + slide_flag
            + " --slide-id {params.slide_ids} --tiles {input.tiles:q} --encoder {input.encoder:q} --round "
            "{params.round} --device {params.device} --threads {threads} {params.settings} "
            + out_flag
            + " > {log:q} 2>&1"


if config["extract"]["slides_per_job"] == 1:
    extraction_rule(
        "extract",
        slides=slide_path,
        tiles=(
            (lambda wildcards: tiles([wildcards.slide]))
            if TILE_BATCHES
            else "results/tiles/{slide}.h5"
        ),
        encoder="results/r{round}/encoder.pt",
        outputs="results/r{round}/features/{slide}.h5",
        log="results/logs/r{round}/extract/{slide}.log",
        benchmark="results/benchmarks/r{round}/extract/{slide}.tsv",
        slide_ids=lambda wildcards: wildcards.slide,
        round_=lambda wildcards: wildcards.round,
        prune=True,
    )
else:
    extraction_rule(
        "extract",
        slides=lambda wildcards: [
            slide_file(s) for s in EXTRACT_BATCHES[wildcards.batch]
        ],
        tiles=lambda wildcards: tiles(EXTRACT_BATCHES[wildcards.batch]),
        encoder="results/r{round}/encoder.pt",
        outputs="results/r{round}/features/batches/{batch}.h5",
        log="results/logs/r{round}/extract/batches/{batch}.log",
        benchmark="results/benchmarks/r{round}/extract/batches/{batch}.tsv",
        slide_ids=lambda wildcards: " ".join(EXTRACT_BATCHES[wildcards.batch]),
        round_=lambda wildcards: wildcards.round,
        prune=True,
        batches=EXTRACT_BATCHES,
    )
