"""`hnm check-sheet`: validate a slide sheet (or lay out the demo cohort, or check a sheet of new
slides to predict) and write the normalised copy."""

from __future__ import annotations

import argparse
import json
import logging

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--sheet", help="slide sheet (TSV/CSV)")
    source.add_argument(
        "--demo-counts",
        help="JSON counts of the demo cohort (the demo settings' slides), e.g. "
        '\'{"train": {"tumor": 3, "normal": 3}, "val": ..., "test": ...}\'',
    )
    source.add_argument(
        "--new-slides",
        help="sheet of new slides to predict (slide_id, path[, mpp]; no label or split)",
    )
    parser.add_argument("--demo-slides-dir", default="results/demo/slides")
    parser.add_argument("--demo-annotations-dir", default="results/demo/annotations")
    parser.add_argument("--labels", default="", help="JSON map of label names to 0/1")
    parser.add_argument(
        "--annotation-classes",
        default="",
        help='JSON list of the class names annotation files may use (default ["Tumor"])',
    )
    parser.add_argument(
        "--allow-one-class-eval-splits",
        action="store_true",
        help="warn instead of failing when the val or test split lacks a class",
    )
    parser.add_argument(
        "--without-annotations",
        action="store_true",
        help="write the sheet without its annotation column (checked all the same): the training "
        "stages' copy, which an edited annotation must not change",
    )
    parser.add_argument("--out", help="where to write the normalised sheet (TSV)")


def run(args: argparse.Namespace) -> int:
    from hnm.demo.settings import DemoSettings
    from hnm.io.sheet import demo_sheet, validate_sheet, write_normalised_sheet
    from hnm.io.slide import level0_dimensions

    if args.new_slides:
        from hnm.predict.sheet import validate_new_slides

        sheet = validate_new_slides(args.new_slides)
        log.info("sheet of new slides is valid: %d slides", len(sheet))
        if args.out:
            write_normalised_sheet(sheet, args.out)
        return 0
    if args.sheet:
        labels = json.loads(args.labels) if args.labels else None
        classes = json.loads(args.annotation_classes) if args.annotation_classes else None
        sheet = validate_sheet(
            args.sheet,
            labels=labels,
            annotation_classes=classes,
            allow_one_class_eval_splits=args.allow_one_class_eval_splits,
            slide_dimensions=level0_dimensions,
        )
    else:
        counts = DemoSettings(slides=json.loads(args.demo_counts)).slides
        sheet = demo_sheet(
            counts,
            args.demo_slides_dir,
            args.demo_annotations_dir,
            allow_one_class_eval_splits=args.allow_one_class_eval_splits,
        )
    summary = sheet.groupby(["split", "label"]).size().to_dict()
    log.info("sheet is valid: %d slides; (split, label) counts %s", len(sheet), summary)
    if args.out:
        if args.without_annotations:
            sheet = sheet.drop(columns="annotation")
        write_normalised_sheet(sheet, args.out)
    return 0
