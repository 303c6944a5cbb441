"""`hnm extract`: patch features of one or more slides with one round's encoder.

Several slides per call (`--slide A B --slide-id a b ...`) pay the interpreter, torch and device
start-up once: on small slides that start-up costs more than the extraction itself. `--tiles` are
the files that hold the slides' tiles (one per slide, or batch files); with `--batch` the features
go into one file, a group per slide.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hnm.core.cliflags import add_job_arguments
from hnm.extract.settings import ExtractSettings
from hnm.io.h5io import SlideData


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--slide", nargs="+", required=True, help="slide file(s)")
    parser.add_argument("--slide-id", nargs="+", required=True, help="one id per slide")
    parser.add_argument(
        "--tiles",
        nargs="+",
        required=True,
        help="the files holding the slides' tiles: one per slide (results/tiles/{slide}.h5) or "
        "batch files",
    )
    parser.add_argument(
        "--encoder", required=True, help="encoder file (results/r{round}/encoder.pt)"
    )
    parser.add_argument("--round", type=int, required=True)
    parser.add_argument(
        "--out",
        nargs="+",
        required=True,
        help="features file to write per slide, or with --batch one for all",
    )
    parser.add_argument(
        "--batch",
        action="store_true",
        help="write one features file holding every slide (a group each)",
    )
    add_job_arguments(parser, "device", "threads")
    ExtractSettings.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from hnm.core.errors import ConfigError
    from hnm.extract.stage import extract_batch, extract_slides

    names = ("slide", "slide_id") if args.batch else ("slide", "slide_id", "out")
    counts = {name: len(getattr(args, name)) for name in names}
    if len(set(counts.values())) != 1:
        listed = ", ".join(f"--{name.replace('_', '-')} {n}" for name, n in counts.items())
        raise ConfigError(f"give one value per slide to each of these options (got {listed})")
    if args.batch and len(args.out) != 1:
        raise ConfigError(f"--batch writes one features file; got {len(args.out)} --out")
    settings = ExtractSettings.from_args(args, device=args.device, threads=args.threads)
    slides = list(zip(args.slide, args.slide_id, _tiles_of(args.tiles, args.slide_id)))
    if args.batch:
        extract_batch(slides, args.encoder, args.round, args.out[0], settings)
        return 0
    jobs = [(*slide, out) for slide, out in zip(slides, args.out)]
    extract_slides(jobs, args.encoder, args.round, settings)
    return 0


def _tiles_of(paths: list[str], slide_ids: list[str]) -> list[SlideData]:
    """Each slide's tiles: files of one slide each pair with the slides in order, whatever their
    names (as before batch files); otherwise each slide is looked up in the files by its id."""
    from hnm.io.h5io import slide_file, slides_by_id, slides_in

    found = [slides_in(path) for path in paths]
    if len(paths) == len(slide_ids) and all(len(s) == 1 and not s[0].group for s in found):
        return [SlideData(Path(path), slide_id) for path, slide_id in zip(paths, slide_ids)]
    tiles = slides_by_id((slide for slides in found for slide in slides), "tiles")
    return [slide_file(tiles, slide_id, "tiles") for slide_id in slide_ids]
