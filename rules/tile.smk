# Tissue detection and the patch grid: one job per slide, or one per batch of at most
# `tile.slides_per_job` slides (one rule with a `batch` wildcard, writing one tiles file and one
# stacked QC PNG per batch), a slide's batch following from its id alone (hnm.extract.batches).
# Skipped slides: rule failures.
TILE_SETTINGS = flags("tile", skip=["slides_per_job"])


def tiling_rule(name, slides, tiles_out, qc_out, mpp, log, benchmark, batches=None):
    """The one tiling rule, defined once per job shape: per slide (patterns with a `slide`
    wildcard), for training's slides and predict's (rules/predict.smk), or per batch (`batches`,
    {batch name: slides}; patterns with a `batch` wildcard, `slides` and `mpp` functions of it).
    The per-slide command is the one runs begun before batches existed recorded (Snakemake re-runs
    a job whose command template changed)."""
    per_slide = batches is None
    command = (
        "python -m hnm tile --slide {input.slide:q} --slide-id "
        + ("{wildcards.slide}" if per_slide else "{params.slide_ids} --batch")
        + " {params.mpp} {params.settings} --out {output.tiles:q} --qc {output.qc:q} "
        "> {log:q} 2>&1"
    )

    rule:
        name:
            name
        input:
            slide=slides,
        output:
            tiles=tiles_out,
            # not in the report itself: rule report_sample embeds small copies of a bounded sample
            qc=qc_out,
        log:
            log,
        benchmark:
            benchmark
        group:
            # SLURM bundles single-slide jobs (the profiles' group-components); a batch job
            # already holds its slides, and 50 of them in one submission would ask for days
            "per_slide" if per_slide else None
        conda:
            "../envs/slide.yaml"
        resources:
            mem_mb=retry_scaled("tile", "mem_mb"),
            # resources.tile.runtime is per slide
            runtime=retry_scaled("tile", "runtime", slides=1 if per_slide else batches),
        params:
            # per batch only: a per-slide job's params are the ones runs begun before batches
            # recorded (a changed set of params re-runs the job)
            **(
                {}
                if per_slide
                else {
                    "slide_ids": lambda wildcards: " ".join(batches[wildcards.batch])
                }
            ),
            mpp=mpp,
            settings=TILE_SETTINGS,
        shell:
            command


def batch_mpp_flag(rows):
    """--mpp for a batch: each slide's sheet value, or `metadata` where the sheet has none."""
    values = [mpp_value(row) for row in rows]
    if all(value is None for value in values):
        return ""
    return "--mpp " + " ".join("metadata" if v is None else str(v) for v in values)


if not TILE_BATCHES:
    tiling_rule(
        "tile",
        slides=slide_path,
        tiles_out="results/tiles/{slide}.h5",
        qc_out="results/qc/{slide}.png",
        mpp=slide_mpp_flag,
        log="results/logs/tile/{slide}.log",
        benchmark="results/benchmarks/tile/{slide}.tsv",
    )
else:
    tiling_rule(
        "tile",
        slides=lambda wildcards: [slide_file(s) for s in TILE_BATCHES[wildcards.batch]],
        tiles_out="results/tiles/batches/{batch}.h5",
        qc_out="results/qc/batches/{batch}.png",
        mpp=lambda wildcards: batch_mpp_flag(
            [SLIDE_ROWS[s] for s in TILE_BATCHES[wildcards.batch]]
        ),
        log="results/logs/tile/batches/{batch}.log",
        benchmark="results/benchmarks/tile/batches/{batch}.tsv",
        batches=TILE_BATCHES,
    )
