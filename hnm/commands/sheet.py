"""`python -m hnm sheet <dataset>`: write the slide sheet of a public dataset as distributed.

    python -m hnm sheet camelyon16 --data /data/CAMELYON16 --out /data/camelyon16.tsv

The sheet is then checked as the workflow checks it (hnm check-sheet), so a sheet that would not
run is known here, not at the workflow's start.
"""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from hnm.evaluate.settings import EvaluateSettings

    datasets = parser.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    camelyon16 = datasets.add_parser(
        "camelyon16",
        help="Camelyon16 with the authors' split (216 train, 54 val, 129 test slides)",
        description="Camelyon16 with the split of Huang et al. (their train/val/test lists), "
        "labels from the folder names and testing/reference.csv, and the lesion XMLs as GeoJSON.",
    )
    camelyon16.add_argument(
        "--data",
        required=True,
        help="the CAMELYON16 folder (holding training/ and testing/)",
    )
    camelyon16.add_argument("--out", required=True, help="the sheet to write (TSV)")
    camelyon16.add_argument(
        "--annotations-out",
        default=None,
        help="folder of the GeoJSON annotations (default: <sheet name>_annotations beside it)",
    )
    camelyon16.add_argument(
        "--annotation-class",
        default=EvaluateSettings().annotation_class,
        help="class name of the tumor polygons; the run's evaluate.annotation_class "
        "(default: %(default)s)",
    )
    camelyon16.add_argument(
        "--allow-missing",
        action="store_true",
        help="leave out, with a warning, slides of the split that are not on disk (a partial "
        "download) instead of failing",
    )


def run(args: argparse.Namespace) -> int:
    from hnm.io.camelyon16 import build_sheet
    from hnm.io.sheet import validate_sheet
    from hnm.io.slide import level0_dimensions

    build_sheet(
        args.data,
        args.out,
        annotations_out=args.annotations_out,
        class_name=args.annotation_class,
        allow_missing=args.allow_missing,
    )
    sheet = validate_sheet(
        args.out, annotation_classes=[args.annotation_class], slide_dimensions=level0_dimensions
    )
    log.info("%s passes the workflow's sheet check (%d slides)", args.out, len(sheet))
    return 0
