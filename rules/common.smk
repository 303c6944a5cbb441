# Config and sheet loading, wildcard constraints, path helpers and input functions shared by all
# rule files. The sheet is validated here, while the DAG is built, so a bad sheet stops the run
# before any job starts and lists every problem at once.

import hashlib
import json
import shlex
import sys
from pathlib import Path

import yaml
from snakemake.utils import validate

sys.path.insert(0, workflow.basedir)

from hnm.core.arglists import list_digest, write_list
from hnm.core.cliflags import to_flags
from hnm.core.errors import SheetError
from hnm.core.gpu_slots import command_prefix
from hnm.core.overrides import typed_overrides
from hnm.core.plan_size import planning_note
from hnm.core.renames import check_section_names
from hnm.core.reproducible import job_environment
from hnm.encoders.presets import workflow_problems
from hnm.evaluate.settings import PROBE_SETTINGS
from hnm.extract.batches import batches_by_split, extraction_batches
from hnm.extract.keep import kept_rounds, pruned_rounds, round_pattern
from hnm.io.sheet import demo_sheet, validate_sheet
from hnm.mil.files import MIL_FILES
from hnm.predict.settings import PredictSettings
from hnm.predict.sheet import validate_new_slides
from hnm.pretrain.start import round0_start

check_section_names(config, "the config")
CONFIG_SCHEMA = Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml"
config.update(typed_overrides(config, yaml.safe_load(CONFIG_SCHEMA.read_text())))
validate(config, schema=str(CONFIG_SCHEMA))

REPO = Path(workflow.basedir).resolve()
# Rules run `python -m hnm`; rule conda envs do not contain the package (and Snakemake drops an
# inherited PYTHONPATH in them), so every shell command puts the repository on the path itself.
# A reproducible run (hnm.core.reproducible) pins every job's math libraries the same way.
PINS = "".join(
    f"export {name}={shlex.quote(value)}; "
    for name, value in (job_environment().items() if config["reproducible"] else ())
)
shell.prefix(
    f"set -euo pipefail; export PYTHONPATH={shlex.quote(str(REPO))}${{{{PYTHONPATH:+:$PYTHONPATH}}}}; "
    + PINS
)
DEMO = not config["sheet"]
# Classes annotation files may use: the tumor class and those scored against it.
ANNOTATION_CLASSES = [
    config["evaluate"]["annotation_class"],
    *config["evaluate"]["versus_classes"],
]
# Workstation GPU slots (resources.gpus): each GPU job takes one GPU's lock for its lifetime.
GPU_SLOT = command_prefix(config["resources"]["gpus"])
ROUNDS = int(config["rounds"])
# extract.keep_rounds: the features of PRUNED_ROUNDS are temp() outputs, deleted by Snakemake once
# the jobs that read them (that round's mil and probe) are done; KEPT_ROUNDS' stay (hnm.extract.keep).
PRUNED_ROUNDS = pruned_rounds(ROUNDS, int(config["extract"]["keep_rounds"]))
KEPT_ROUNDS = kept_rounds(ROUNDS, int(config["extract"]["keep_rounds"]))
# Round 0's encoder (results/r0/encoder.pt): SimCLR-pretrained on the training slides' patches
# (rule pretrain) when no weights file is given and pretrain.epochs > 0, starting from
# init_encoder's random weights, which then go to INITIAL_ENCODER; otherwise init_encoder's file
# (the given weights, or random ones) is round 0's encoder itself.
# A foundation-model preset (encoder.preset, docs/foundation.md) starts from its published
# weights: no SimCLR pretraining; its weights file and the tiling are checked here, before any job.
PRESET = config["encoder"]["preset"]
PRESET_CHECK = workflow_problems(config)
if PRESET_CHECK.problems:
    raise WorkflowError("; ".join(PRESET_CHECK.problems))
PRETRAIN = (
    not PRESET
    and not config["encoder"]["weights"]
    and int(config["pretrain"]["epochs"]) > 0
)
INITIAL_ENCODER = (
    "results/pretrain/initial_encoder.pt" if PRETRAIN else "results/r0/encoder.pt"
)
# Said once, while the DAG is built (dry runs too), and not again by each cluster job's own parse,
# nor under `--quiet all` (demo.sh's report step parses the workflow a second time).
SAY_NOTES = workflow.is_main_process and not any(
    q.name == "ALL" for q in getattr(workflow.output_settings, "quiet", None) or ()
)
if SAY_NOTES:
    print(
        round0_start(
            config["encoder"]["weights"],
            0 if PRESET else int(config["pretrain"]["epochs"]),
            PRESET or config["encoder"]["arch"],
        )[1],
        file=sys.stderr,
    )
    for note in PRESET_CHECK.notes:
        print(f"hnm: {note}", file=sys.stderr)

try:
    if DEMO:
        SHEET = demo_sheet(
            config["demo"]["slides"],
            "results/demo/slides",
            "results/demo/annotations",
            allow_one_class_eval_splits=config["allow_one_class_eval_splits"],
        )
    else:
        SHEET = validate_sheet(
            config["sheet"],
            labels=config["labels"],
            annotation_classes=ANNOTATION_CLASSES,
            allow_one_class_eval_splits=config["allow_one_class_eval_splits"],
        )
except SheetError as error:
    raise WorkflowError(str(error)) from None

validate(
    SHEET.astype(object).where(SHEET.notna(), None),
    schema="../workflow/schemas/sheet.schema.yaml",
)
SLIDES = list(SHEET["slide_id"])
SLIDE_ROWS = SHEET.set_index("slide_id").to_dict("index")
TRAIN_SLIDES = [s for s in SLIDES if SLIDE_ROWS[s]["split"] == "train"]
PLANNING_NOTE = planning_note(len(SLIDES), ROUNDS)
if SAY_NOTES and PLANNING_NOTE:
    print(PLANNING_NOTE, file=sys.stderr)


wildcard_constraints:
    slide=r"[A-Za-z0-9][A-Za-z0-9._-]*",
    round=r"\d+",


def slide_file(slide):
    # Demo slides are outputs of rule synth, which Snakemake matches by relative path.
    if DEMO:
        return f"results/demo/slides/{slide}.tiff"
    return SLIDE_ROWS[slide]["path"]


def annotation_files():
    """The sheet's annotation files: inputs of the evaluation sheet, and of nothing upstream."""
    if DEMO:  # outputs of rule synth, matched by relative path
        return [f"results/demo/annotations/{slide}.geojson" for slide in SLIDES]
    return [path for path in SHEET["annotation"] if path]


# Feature quality (rules/evaluate.smk) needs patch truth: it runs where the sheet names annotations.
PROBE = bool(annotation_files())
MIL_SEEDS = list(config["evaluate"]["mil_seeds"])


def probe_outputs():
    """Every round's probe.json, or none without annotations."""
    if not PROBE:
        return []
    return expand("results/r{round}/eval/probe.json", round=range(ROUNDS + 1))


# What the training sheet (results/sheet.tsv) holds: every column but the annotations. Demo slides
# count by their path in the run folder, so a run folder started from another's files (hnm compare)
# or moved elsewhere keeps its sheet.
TRAINING_SHEET_DIGEST = hashlib.sha256(
    SHEET.drop(columns="annotation")
    .assign(path=[slide_file(slide) for slide in SHEET["slide_id"]])
    .to_csv(sep="\t", index=False)
    .encode()
).hexdigest()


def slide_path(wildcards):
    return slide_file(wildcards.slide)


def mpp_value(row):
    """A sheet row's mpp, or None where the column is empty (None or NaN)."""
    mpp = row["mpp"]
    return None if mpp is None or mpp != mpp else mpp


def mpp_flag(row):
    """--mpp from a sheet row's mpp column, or nothing where it is empty."""
    mpp = mpp_value(row)
    return "" if mpp is None else f"--mpp {mpp}"


def slide_mpp_flag(wildcards):
    return mpp_flag(SLIDE_ROWS[wildcards.slide])


# Batched stages (tile.slides_per_job or extract.slides_per_job above 1) write one file per batch
# of slides, a group per slide (hnm.io.h5io), under batches/: {batch name: slides}. A slide's batch
# follows from its id within its split (hnm.extract.batches.batches_by_split): a validation or test
# slide added later never rewrites a file of train slides, which pretraining and fine-tuning read,
# and with the two settings equal a tiling batch is an extraction batch, so a rewritten tiles file
# re-extracts its own batch and no other.
SPLIT_OF = {s: SLIDE_ROWS[s]["split"] for s in SLIDES}
TILE_BATCHES = (
    batches_by_split(SPLIT_OF, config["tile"]["slides_per_job"])
    if config["tile"]["slides_per_job"] > 1
    else {}
)
EXTRACT_BATCHES = (
    batches_by_split(SPLIT_OF, config["extract"]["slides_per_job"])
    if config["extract"]["slides_per_job"] > 1
    else {}
)
TILE_BATCH_OF = {s: batch for batch, members in TILE_BATCHES.items() for s in members}


wildcard_constraints:
    batch=r"(?:(?:train|val|test)_)?b[01]*",


def tiles(slides=None):
    """The tiles files of `slides` (all by default): one per slide, or their batches' files, each
    once, in name order. Each extraction job asks for its slides' (an input function): a lookup
    per slide, not a search of every batch, or planning grows with batches x jobs."""
    slides = SLIDES if slides is None else slides
    if TILE_BATCHES:
        batches = sorted({TILE_BATCH_OF[slide] for slide in slides})
        return [f"results/tiles/batches/{batch}.h5" for batch in batches]
    return expand("results/tiles/{slide}.h5", slide=slides)


def qc_pictures():
    """Every QC picture tiling makes: one per slide, or one per batch (the slides' stacked)."""
    if TILE_BATCHES:
        return expand("results/qc/batches/{batch}.png", batch=sorted(TILE_BATCHES))
    return expand("results/qc/{slide}.png", slide=SLIDES)


# A stage that takes one file per slide gets the paths as `@results/lists/NAME.txt`, one per line
# (hnm.core.arglists; written by the file_list rule): a job's shell command longer than 128 KiB cannot
# start, and one path per slide passes that at a few thousand slides. The consuming rule still
# declares the files themselves (what it waits for, and what temp() removes after it); its list is
# ancient(), so a rewritten list re-runs nothing that the files themselves would not.
FILE_LISTS = {}


def file_list(name, paths, folder="results"):
    """Register `paths` as the list file `folder`/lists/`name`.txt; that file, for a rule's input."""
    path = f"{folder}/lists/{name}.txt"
    FILE_LISTS[path] = [str(each) for each in paths]
    return ancient(path)


def list_digest_of(folder):
    """The file_list rules' digest param for lists in `folder`/lists (a wildcards function)."""
    return lambda wildcards: list_digest(
        listed_paths(f"{folder}/lists/{wildcards.name}.txt")
    )


def listed_paths(path):
    if path not in FILE_LISTS:
        raise WorkflowError(f"{path} is not a list this workflow writes")
    return FILE_LISTS[path]


def write_file_list(path, log):
    """Rule file_list's job: the list, and in its log how many paths it holds."""
    paths = listed_paths(path)
    write_list(path, paths)
    Path(log).write_text(f"{len(paths)} paths, sha256 {list_digest(paths)}\n")


def features(round_):
    """Round `round_`'s features files: one per slide, or one per extraction batch."""
    if EXTRACT_BATCHES:
        return expand(
            "results/r{round}/features/batches/{batch}.h5",
            round=round_,
            batch=sorted(EXTRACT_BATCHES),
        )
    return expand("results/r{round}/features/{slide}.h5", round=round_, slide=SLIDES)


for _round in range(ROUNDS + 1):
    file_list(f"features_r{_round}", features(_round))


def features_list(round_):
    """Round `round_`'s features as a list file (every round's is registered above)."""
    return ancient(f"results/lists/features_r{round_}.txt")


def mil_outputs(round_):
    folder = f"results/r{round_}/mil"
    return {name: f"{folder}/{path}" for name, path in MIL_FILES.items()}


def gpu_resources():
    """SLURM GPU request for GPU-capable rules; the local executor ignores unknown resources.

    resources.gpu_slurm adds the GPU rules' partition, constraint or other flags. It lives in the
    config, not in the profile's set-resources, so that every GPU rule (extract, pretrain, finetune,
    mil, probe, predict's) gets them from one place. A `gres` there replaces gpu=1: the SLURM
    plugin refuses a job that asks for both.
    """
    settings = {"gpu": 1}
    if config["resources"]["gpu_model"]:
        settings["gpu_model"] = config["resources"]["gpu_model"]
    extra = dict(config["resources"].get("gpu_slurm") or {})
    if "gres" in extra:
        settings = {}
    return {**settings, **extra}


def retry_scaled(rule_name, key, slides=1):
    """mem_mb / runtime that grow with the retry attempt, so a retry after OOM or timeout can pass;
    `slides` scales a per-slide amount to a job of several slides: a number, or for a batch rule
    {batch name: slides} (the job's batch wildcard picks its count)."""
    base = config["resources"][rule_name][key]
    if isinstance(slides, dict):
        return lambda wildcards, attempt: base * len(slides[wildcards.batch]) * attempt
    return lambda wildcards, attempt: base * slides * attempt


def rule_threads(rule_name):
    """The job's CPU budget; one thread in a reproducible run (hnm.core.reproducible)."""
    if config["reproducible"]:
        return 1
    return config["resources"][rule_name].get("threads", 1)


def flags(section, skip=()):
    return to_flags(config[section], skip=skip)


def evaluation_flags():
    """The evaluation settings but the probe's (PROBE_SETTINGS, read by the probe job alone), so
    that changing those does not re-run the evaluation and pictures."""
    return flags("evaluate", skip=PROBE_SETTINGS)


def previous_mining(wildcards):
    round_ = int(wildcards.round)
    if round_ == 0:
        return {}
    return {
        "previous_sets": f"results/r{round_ - 1}/mining/sets.parquet",
        "previous_summary": f"results/r{round_ - 1}/mining/summary.json",
    }


def previous_mining_flags(wildcards, input):
    if int(wildcards.round) == 0:
        return ""
    return (
        f"--previous-sets {shlex.quote(input.previous_sets)} "
        f"--previous-summary {shlex.quote(input.previous_summary)}"
    )


# Pictures (rules/viz.smk): which slides get heatmaps and which go into the report.
EVAL_SLIDES = [s for s in SLIDES if SLIDE_ROWS[s]["split"] in ("val", "test")]
TEST_SLIDES = [s for s in SLIDES if SLIDE_ROWS[s]["split"] == "test"]
FINAL_SCORES = [mil_outputs(ROUNDS)[split] for split in ("train", "val", "test")]
FIGURES = ["roc", "rounds", "confusion", "finetune", "mil"]


def report_sample(slides, size):
    """A deterministic sample of `size` slides: the smallest SHA-1 of their ids, so adding slides
    keeps most of the sample and the choice does not follow the sheet's order."""
    return sorted(slides, key=lambda s: hashlib.sha1(s.encode()).hexdigest())[:size]


SAMPLE_QC = report_sample(SLIDES, config["viz"]["report_sample"])
SAMPLE_HEATMAPS = report_sample(EVAL_SLIDES, config["viz"]["report_sample"])


def viz_outputs():
    """Every file of this rule file, for rule all."""
    return [
        *expand("results/final/heatmaps/{slide}.png", slide=EVAL_SLIDES),
        *expand("results/final/heatmaps/{slide}.geojson", slide=SLIDES),
        *expand("results/final/figures/{name}.{ext}", name=FIGURES, ext=("png", "svg")),
        *expand(
            "results/final/mined/r{round}.{kind}.png",
            round=range(ROUNDS),
            kind=("overlay", "gallery"),
        ),
        "results/report/slides.csv",
        "results/report/metrics.html",
    ]


def figure_output(name, subcategory, label):
    return report(
        f"results/final/figures/{name}.png",
        caption=f"../workflow/report/figure_{name}.rst",
        category="Figures",
        subcategory=subcategory,
        labels={"figure": label},
    )


def sample_output(kind, slide, subcategory):
    return report(
        f"results/report/{kind}/{slide}.jpg",
        caption=f"../workflow/report/sample_{kind}.rst",
        category="Slides (sample)",
        subcategory=subcategory,
        labels={"slide": slide, "split": SLIDE_ROWS[slide]["split"]},
    )


def sample_files(wildcards, output):
    """The report_sample job's small images, in the order of its --images."""
    return [output[f"qc_{s}"] for s in SAMPLE_QC] + [
        output[f"heatmap_{s}"] for s in SAMPLE_HEATMAPS
    ]


# Predicting new slides (rules/predict.smk): their sheet, checked while the DAG is built, and paths.
PREDICT = PredictSettings.from_config(config["predict"])
PREDICT_DIR = PREDICT.out_dir()
FINAL_ENCODER = f"results/r{ROUNDS}/encoder.pt"
PREDICT_SLIDES = []
if PREDICT.sheet:
    try:
        PREDICT_SHEET = validate_new_slides(PREDICT.sheet)
    except SheetError as error:
        raise WorkflowError(str(error)) from None
    PREDICT_SLIDES = list(PREDICT_SHEET["slide_id"])
    PREDICT_ROWS = PREDICT_SHEET.set_index("slide_id").to_dict("index")


def predict_file(kind, slide, extension):
    return f"{PREDICT_DIR}/{kind}/{slide}.{extension}"


def predict_files(kind, extension, slides=None):
    slides = PREDICT_SLIDES if slides is None else slides
    return [predict_file(kind, slide, extension) for slide in slides]


def predict_list(kind, paths):
    """A list file (file_list) in the prediction's own folder."""
    return file_list(kind, paths, folder=PREDICT_DIR)


def predict_mpp_flag(wildcards):
    return mpp_flag(PREDICT_ROWS[wildcards.slide])


def predict_outputs(wildcards):
    """Everything `snakemake predict` makes; asked for without a sheet, say how to give one."""
    if not PREDICT.sheet:
        raise WorkflowError(
            "the predict target needs a sheet of new slides (columns slide_id, path and "
            "optionally mpp): snakemake predict --config 'predict={sheet: /data/new_slides.tsv}' "
            "(setting predict.sheet; see docs/usage.md, 'Predicting new slides')"
        )
    return [
        f"{PREDICT_DIR}/predictions.csv",
        f"{PREDICT_DIR}/scores.parquet",
        *predict_files("heatmaps", "png"),
        *predict_files("heatmaps", "geojson"),
    ]
