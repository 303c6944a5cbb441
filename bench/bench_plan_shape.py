"""What a DAG's shape costs Snakemake to plan, before the workflow is rewritten to that shape.

bench_plan.py times the real workflow. This times skeletons of it: generated Snakefiles whose
jobs only `touch` their outputs but whose rules, wildcards and file lists have the shape of hnm's,
so a layout can be priced at 10,000 slides without building it first. Per round r (0..R):
extraction jobs (one per batch), then MIL, evaluation and mining jobs that each name the round's
features, then the next round's encoder; a report and a failures job name every round's features.

Three shapes:
- `slide`: today's. A tiling job per slide; an extraction rule per batch, each writing one
  features file per slide (`r{round}/features/SLIDE.h5`: every batch's outputs share the constant
  prefix `r`); consumers name one file per slide.
- `features`: tiling as today (a job and a file per slide); one extraction rule with a `batch`
  wildcard writing one features file per batch; consumers name one features file per batch.
- `batch`: one tiling rule and one extraction rule with a `batch` wildcard, each writing one file
  per batch (`tiles/{batch}.h5`, `r{round}/features/{batch}.h5`); consumers name one file per batch.

    python bench/bench_plan_shape.py --slides 1000 10000 --rounds 20 --batch 4 32

Batches are hnm's (hnm.extract.batches: a trie over the slide ids' hashes, at most `--batch`
slides each). CPU = user + system of the `snakemake -n` process; peak = its largest resident memory.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_plan import measure, row_text  # noqa: E402

from hnm.extract.batches import extraction_batches  # noqa: E402

# The rules every shape shares: a round's consumers and the chain from one round to the next.
COMMON_RULES = """
rule all:
    input: "report.done", "failures.done"

rule encoder0:
    output: "r0/encoder.pt"
    shell: "touch {output}"

rule encoder:
    input: lambda w: f"r{int(w.round) - 1}/mining.done"
    output: "r{round}/encoder.pt"
    wildcard_constraints: round=r"[1-9]\\d*"
    shell: "touch {output}"

rule mil:
    input: features=lambda w: features(w.round)
    output: "r{round}/mil.done"
    shell: "touch {output}"

rule evaluate:
    input: features=lambda w: features(w.round), tiles=TILES
    output: "r{round}/evaluate.done"
    shell: "touch {output}"

rule mining:
    input: "r{round}/mil.done"
    output: "r{round}/mining.done"
    shell: "touch {output}"

rule report:
    input: [f for r in ROUNDS for f in features(r)], expand("r{r}/evaluate.done", r=ROUNDS)
    output: "report.done"
    shell: "touch {output}"

rule failures:
    input: [f for r in ROUNDS for f in features(r)], expand("r{r}/mil.done", r=ROUNDS)
    output: "failures.done"
    shell: "touch {output}"
"""

# The pieces each shape is made of.
SLIDE_TILES = """
TILES = expand("tiles/{slide}.h5", slide=SLIDES)

rule tile:
    input: "slides/{slide}.svs"
    output: "tiles/{slide}.h5"
    shell: "touch {output}"
"""

BATCH_TILES = """
TILES = expand("tiles/{batch}.h5", batch=BATCHES)

rule tile:
    input: lambda w: expand("slides/{slide}.svs", slide=BATCHES[w.batch])
    output: "tiles/{batch}.h5"
    shell: "touch {output}"
"""

SLIDE_FEATURES = """
def features(r):
    return expand("r{r}/features/{slide}.h5", r=r, slide=SLIDES)

for batch, members in BATCHES.items():
    rule:
        name: f"extract_{batch}"
        input:
            slides=expand("slides/{slide}.svs", slide=members),
            tiles=expand("tiles/{slide}.h5", slide=members),
            encoder="r{round}/encoder.pt",
        output: expand("r{{round}}/features/{slide}.h5", slide=members)
        shell: "touch {output}"
"""

# TILES_OF_BATCH: the batch's tiles, one file per slide or the batch's one file.
BATCH_FEATURES = """
def features(r):
    return expand("r{r}/features/{batch}.h5", r=r, batch=BATCHES)

rule extract:
    input: tiles=TILES_OF_BATCH, encoder="r{round}/encoder.pt"
    output: "r{round}/features/{batch}.h5"
    shell: "touch {output}"
"""
TILES_OF_SLIDES = 'lambda w: expand("tiles/{slide}.h5", slide=BATCHES[w.batch])'

SHAPES = {
    "slide": SLIDE_TILES + SLIDE_FEATURES,
    "features": SLIDE_TILES + BATCH_FEATURES.replace("TILES_OF_BATCH", TILES_OF_SLIDES),
    "batch": BATCH_TILES + BATCH_FEATURES.replace("TILES_OF_BATCH", '"tiles/{batch}.h5"'),
}


def write_skeleton(folder: Path, shape: str, slides: int, rounds: int, batch: int) -> Path:
    """The skeleton Snakefile of `shape` for `slides` slides (their files created empty)."""
    ids = [f"slide_{index:05d}" for index in range(slides)]
    data = folder / "slides"
    data.mkdir(parents=True, exist_ok=True)
    for slide in ids:
        (data / f"{slide}.svs").touch()
    batches = extraction_batches(ids, batch)
    header = (
        f"SLIDES = {ids!r}\n"
        f"BATCHES = {batches!r}\n"
        f"ROUNDS = list(range({rounds + 1}))\n"
        "wildcard_constraints:\n"
        '    round=r"\\d+",\n'
        '    slide=r"slide_\\d+",\n'
        '    batch=r"b[01]*",\n'
    )
    snakefile = folder / f"Snakefile_{shape}"
    snakefile.write_text(header + SHAPES[shape] + COMMON_RULES)
    return snakefile


COLUMNS = [
    ("slides", ">7"), ("batch", ">5"), ("shape", ">8"), ("jobs", ">7"),
    ("CPU s", ">7.1f"), ("peak GB", ">8.2f"), ("ms/job", ">7.2f"),
]  # fmt: skip


def plan_command(snakefile: Path, folder: Path) -> list[str]:
    return [
        sys.executable, "-m", "snakemake", "--snakefile", str(snakefile),
        "--directory", str(folder), "all", "-n", "--cores", "1", "--quiet", "rules",
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slides", type=int, nargs="+", default=[1000])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--batch", type=int, nargs="+", default=[4, 32])
    parser.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=["slide", "batch"])
    args = parser.parse_args()
    print(
        "skeleton DAGs; snakemake -n; CPU = user + system, peak = resident memory, of its process"
    )
    print(row_text(COLUMNS, [name for name, _ in COLUMNS]))
    for slides in args.slides:
        for batch in args.batch:
            for shape in args.shapes:
                with tempfile.TemporaryDirectory(prefix="hnm-shape-") as tmp:
                    folder = Path(tmp)
                    snakefile = write_skeleton(folder, shape, slides, args.rounds, batch)
                    row = measure(plan_command(snakefile, folder))
                per_job = 1000 * row["cpu_s"] / max(row["jobs"], 1)
                values = [slides, batch, shape, row["jobs"], row["cpu_s"], row["peak_gb"], per_job]
                print(row_text(COLUMNS, values), flush=True)


if __name__ == "__main__":
    main()
