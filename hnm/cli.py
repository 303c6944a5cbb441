"""`python -m hnm <stage>`: one subcommand per pipeline stage.

Each stage's argparse definition and heavy imports live in hnm/commands/<stage>.py and are imported
only when that stage runs, so `--help` is instant and a stage never pays for another's imports.
Errors the user can fix (HnmError) print as one line without a traceback and exit with status 2.
Run as a program (not called from Python with an argument list), a stage ends when its parent
dies (hnm.core.lifetime), so a killed Snakemake leaves no orphaned jobs behind.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from types import ModuleType

from hnm import __version__
from hnm.core.arglists import PREFIX
from hnm.core.errors import HnmError
from hnm.core.lifetime import exit_with_parent
from hnm.core.renames import RENAMED_COMMANDS

# stage name -> (module under hnm.commands, one-line help)
STAGES: dict[str, tuple[str, str]] = {
    "synth": ("synth", "write one synthetic demo slide (pyramidal JPEG TIFF) and its ground truth"),
    "check-sheet": ("check_sheet", "validate a slide sheet and report every problem at once"),
    "sheet": ("sheet", "write the slide sheet of a public dataset (camelyon16) as distributed"),
    "tile": ("tile", "detect tissue and write the patch grid of one slide"),
    "failures": ("failures", "gather per-slide failures into one report"),
    "init-encoder": ("init_encoder", "write the round-0 encoder from local weights or a seed"),
    "pretrain": ("pretrain", "SimCLR-pretrain the round-0 encoder on the train slides' patches"),
    "extract": ("extract", "extract patch features of one slide with an encoder"),
    "mil": ("mil", "train a MIL aggregator on one round's features"),
    "mine": ("mine", "mine hard negatives and pseudo-positive sets from patch scores"),
    "finetune": ("finetune", "fine-tune the encoder with SupCon on the mined sets"),
    "evaluate": ("evaluate", "slide- and patch-level metrics on held-out slides"),
    "probe": ("probe", "one round's feature quality: linear probe and the MIL over seeds"),
    "report": ("report", "gather per-round metrics into rounds.csv"),
    "heatmaps": ("heatmaps", "draw the final model's patch scores over slide thumbnails"),
    "qupath": ("qupath", "export patch scores as GeoJSON tiles for QuPath"),
    "mined": ("mined", "draw what a round mined: slide overlays and patch galleries"),
    "figures": ("figures", "ROC curves, per-round metrics, confusion matrix, training curves"),
    "report-sample": ("report_sample", "small per-slide images and the slide index for the report"),
    "predict": ("predict", "score new slides with a finished run's model at its val threshold"),
    "compare": ("compare", "run several methods over several seeds and tabulate them"),
    "regroup": ("regroup", "move a run's per-slide tiles and features into batch files"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hnm", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"hnm {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for name, (_module, summary) in STAGES.items():
        sub.add_parser(name, help=summary, add_help=False)
    return parser


def stage_parser(stage: str) -> tuple[ModuleType, argparse.ArgumentParser]:
    """The stage's module and its parser. `@FILE` stands for the arguments listed in FILE, one
    per line (hnm.core.arglists): the workflow passes per-slide file lists that way, since a
    shell command longer than 128 KiB cannot start."""
    module = importlib.import_module(f"hnm.commands.{STAGES[stage][0]}")
    parser = argparse.ArgumentParser(
        prog=f"hnm {stage}", description=STAGES[stage][1], fromfile_prefix_chars=PREFIX
    )
    module.add_arguments(parser)
    return module, parser


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        exit_with_parent()
    argv = list(sys.argv[1:] if argv is None else argv)
    renamed = [token for token in argv if token in RENAMED_COMMANDS]
    if renamed:
        print(
            f"hnm: error: `hnm {renamed[0]}` is now `hnm {RENAMED_COMMANDS[renamed[0]]}` "
            "(same flags)",
            file=sys.stderr,
        )
        return 2
    parser = build_parser()
    known, rest = parser.parse_known_args(argv[: _stage_position(argv) + 1])
    module, parser_of_stage = stage_parser(known.stage)
    args = parser_of_stage.parse_args(argv[_stage_position(argv) + 1 :])
    logging.basicConfig(
        level=logging.DEBUG if known.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(module.run(args) or 0)
    except HnmError as error:
        print(f"hnm {known.stage}: error: {error}", file=sys.stderr)
        return 2


def _stage_position(argv: list[str]) -> int:
    """Index of the stage name: everything before it is global, everything after is the stage's."""
    for index, token in enumerate(argv):
        if token in STAGES:
            return index
    return len(argv) - 1
