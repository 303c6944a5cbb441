"""`hnm extract`: patch features of one or more slides with one round's encoder.

Several slides per call (`--slide A B --slide-id a b ...`) pay the interpreter, torch and device
start-up once: on small slides that start-up costs more than the extraction itself.
"""

from __future__ import annotations

import argparse


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
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        help="reader processes (cpu path) / byte-reader threads (gpu path)",
    )
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16"],
        help="auto = bf16 autocast on CUDA, fp32 on the CPU",
    )
    parser.add_argument(
        "--decode",
        default="auto",
        choices=["auto", "gpu", "cpu", "openslide"],
        help="auto: JPEG tiles decoded on the GPU where the slide and machine allow, "
        "else on the CPU; cpu: JPEG tiles on the CPU where the level is "
        "JPEG-tiled, else openslide; openslide: always openslide",
    )
    parser.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="channels_last memory format (faster on CUDA and on the CPU)",
    )
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="torch.compile the encoder (pays off on large slides on a GPU)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="CPU threads for the encoder; 0 = all cores this job may use",
    )
    parser.add_argument("--prefetch", type=int, default=4, help="batches read ahead per worker")
    parser.add_argument(
        "--on-slide-error",
        default="fail",
        choices=["fail", "skip"],
        help="a slide whose pixels cannot be read: fail the job, or write an empty "
        "features file marked failed",
    )
    parser.add_argument(
        "--max-patches",
        type=int,
        default=0,
        help="benchmarks/debugging only: extract just the first N patches (0 = all)",
    )


def run(args: argparse.Namespace) -> int:
    from hnm.core.errors import ConfigError
    from hnm.extract.stage import ExtractSettings, extract_slides

    counts = {name: len(getattr(args, name)) for name in ("slide", "slide_id", "tiles", "out")}
    if len(set(counts.values())) != 1:
        listed = ", ".join(f"--{name.replace('_', '-')} {n}" for name, n in counts.items())
        raise ConfigError(f"give one value per slide to each of these options (got {listed})")
    settings = ExtractSettings(
        batch_size=args.batch_size,
        workers=args.workers,
        device=args.device,
        precision=args.precision,
        decode=args.decode,
        channels_last=args.channels_last,
        compile=args.compile,
        threads=args.threads,
        prefetch=args.prefetch,
        on_slide_error=args.on_slide_error,
        max_patches=args.max_patches,
    )
    jobs = list(zip(args.slide, args.slide_id, args.tiles, args.out))
    extract_slides(jobs, args.encoder, args.round, settings)
    return 0
