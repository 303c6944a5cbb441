"""`hnm extract`: patch features of one or more slides with one round's encoder.

Several slides per call (`--slide A B --slide-id a b ...`) pay the interpreter, torch and device
start-up once: on small slides that start-up costs more than the extraction itself.
"""

from __future__ import annotations

import argparse

from hnm.core.cliflags import add_job_arguments
from hnm.extract.settings import ExtractSettings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--slide", nargs="+", required=True, help="slide file(s)")
    parser.add_argument("--slide-id", nargs="+", required=True, help="one id per slide")
    parser.add_argument(
        "--tiles", nargs="+", required=True, help="tiles file per slide (results/tiles/{slide}.h5)"
    )
    parser.add_argument(
        "--encoder", required=True, help="encoder file (results/r{round}/encoder.pt)"
    )
    parser.add_argument("--round", type=int, required=True)
    parser.add_argument("--out", nargs="+", required=True, help="features file to write per slide")
    add_job_arguments(parser, "device", "threads")
    ExtractSettings.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from hnm.core.errors import ConfigError
    from hnm.extract.stage import extract_slides

    counts = {name: len(getattr(args, name)) for name in ("slide", "slide_id", "tiles", "out")}
    if len(set(counts.values())) != 1:
        listed = ", ".join(f"--{name.replace('_', '-')} {n}" for name, n in counts.items())
        raise ConfigError(f"give one value per slide to each of these options (got {listed})")
    settings = ExtractSettings.from_args(args, device=args.device, threads=args.threads)
    jobs = list(zip(args.slide, args.slide_id, args.tiles, args.out))
    extract_slides(jobs, args.encoder, args.round, settings)
    return 0
