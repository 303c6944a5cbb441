"""`hnm failures`: one table of every slide a stage skipped (on_slide_error: skip), and why.

With on_slide_error: skip a cohort run finishes even when some slides are unreadable; this report is
where the user finds out which ones, at which stage and why, instead of digging through job logs.
A slide can fail at tiling (the tiles file is marked failed), at extraction (the slide tiled, but
its features file of some round is marked failed: pixels that do not decode) or at fine-tuning
(the slide is listed in a fine-tuned encoder's skipped_slides). Each slide gets one row, at the
first stage it failed; a slide that failed at tiling is not listed again for its empty features.

A round whose features files are removed once used (extract.keep_rounds) is read from its MIL's
metrics.json instead, whose excluded_slides record what each failed features file said: this job
runs at the end of the chain, and reading the files themselves would keep every round's on disk
until then.
"""

from __future__ import annotations

import argparse
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("hnm.failures")

COLUMNS = ("slide_id", "path", "error", "stage")

# Tiles files written before the skip path stored the bare reason still carry the fail-mode hint,
# which tells the reader of this report to do what was already done.
_SKIP_HINT = re.compile(
    r"[;,.]?\s*(or )?set on_slide_error: skip to exclude (it|such slides)", re.IGNORECASE
)


@dataclass
class Failure:
    """One skipped slide: where it first failed, why, and in which rounds."""

    slide_id: str
    path: str
    error: str
    stage: str
    rounds: list[int] = field(default_factory=list)

    def stage_text(self) -> str:
        if not self.rounds:
            return self.stage
        word = "round" if len(self.rounds) == 1 else "rounds"
        return f"{self.stage} ({word} {', '.join(map(str, self.rounds))})"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tiles", nargs="+", required=True, help="tiles HDF5 files of all slides")
    parser.add_argument(
        "--features", nargs="*", default=[], help="features files of every round (r{r}/features)"
    )
    parser.add_argument(
        "--mil-metrics",
        nargs="*",
        default=[],
        help="MIL metrics.json of the rounds whose features files are removed once used "
        "(extract.keep_rounds): their excluded_slides say which features files were marked failed",
    )
    parser.add_argument(
        "--encoders", nargs="*", default=[], help="fine-tuned encoders (r1..rR/encoder.pt)"
    )
    parser.add_argument("--out", required=True, help="TSV to write (slide_id, path, error, stage)")


def run(args: argparse.Namespace) -> int:
    from hnm.core.atomic import write_text

    failures: dict[str, Failure] = {}
    tiled, slide_paths = _tiling(args.tiles)
    for failure in tiled:
        failures.setdefault(failure.slide_id, failure)
    # Removed rounds are the earliest (0..R-K): read first, the table keeps the rounds' order.
    extraction = [*_extraction_from_mil(args.mil_metrics), *_extraction(args.features)]
    for failure in [*extraction, *_finetuning(args.encoders)]:
        failure.path = failure.path or slide_paths.get(failure.slide_id, "")
        known = failures.get(failure.slide_id)
        if known is None:
            failures[failure.slide_id] = failure
        elif known.stage == failure.stage:
            known.rounds = sorted({*known.rounds, *failure.rounds})
    lines = ["\t".join(COLUMNS)]
    lines += [
        "\t".join(_clean(v) for v in (f.slide_id, f.path, f.error, f.stage_text()))
        for f in failures.values()
    ]
    write_text(args.out, "\n".join(lines) + "\n")
    if failures:
        log.warning(
            "%d of %d slides were skipped and are excluded: %s (see %s)",
            len(failures),
            len(slide_paths),
            ", ".join(failures),
            args.out,
        )
    else:
        log.info("no skipped slides among %d; wrote %s", len(slide_paths), args.out)
    return 0


def _tiling(paths: Iterable[str]) -> tuple[list[Failure], dict[str, str]]:
    """(the slides that failed at tiling, every slide's path as its tiles file gives it)."""
    from hnm.core.errors import HnmError
    from hnm.io.h5io import files_by_slide, read_tiles

    found = []
    slide_paths = {}
    for tiles in files_by_slide(paths, "tiles").values():
        try:
            _coords, attrs = read_tiles(tiles)
        except (OSError, KeyError) as error:
            raise HnmError(
                f"tiles file {tiles} cannot be read ({error}); rerun `hnm tile` for it"
            ) from error
        slide_paths[str(attrs.get("slide_id", ""))] = str(attrs.get("slide_path", ""))
        if bool(attrs.get("failed", False)):
            found.append(_failure(attrs, "tiling"))
    return found, slide_paths


def _extraction(paths: Iterable[str]) -> list[Failure]:
    from hnm.core.errors import HnmError
    from hnm.io.h5io import read_feature_attrs, slides_in

    found = []
    # every round's files: one slide appears once per round, so no mapping by slide
    for features in (slide for path in paths for slide in slides_in(path)):
        try:
            attrs = read_feature_attrs(features)
        except (OSError, KeyError) as error:
            raise HnmError(
                f"features file {features} cannot be read ({error}); rerun its extraction"
            ) from error
        if bool(attrs.get("failed", False)):
            found.append(_failure(attrs, "extraction", int(attrs.get("round", 0))))
    return found


def _extraction_from_mil(paths: Iterable[str]) -> list[Failure]:
    """The failed features files of removed rounds, as their MIL's metrics.json recorded them."""
    import json

    from hnm.core.errors import HnmError
    from hnm.mil.files import FAILED_UPSTREAM

    found = []
    for path in paths:
        try:
            excluded = json.loads(Path(path).read_text()).get("excluded_slides", [])
        except (OSError, ValueError, AttributeError) as error:
            raise HnmError(
                f"MIL metrics {path} cannot be read ({error}); rerun that round's `hnm mil`"
            ) from error
        folder_round = re.search(r"(?:^|/)r(\d+)/mil/[^/]+$", Path(path).as_posix())
        for item in excluded:
            reason = str(item.get("reason", ""))
            # MIL metrics written before the entries had `failed` and `error` say it in `reason`.
            failed = item.get("failed", reason.startswith(FAILED_UPSTREAM))
            if not failed:
                continue
            round_ = item.get("round")
            if round_ is None and folder_round:
                round_ = int(folder_round.group(1))
            attrs = {
                "slide_id": item.get("slide_id", ""),
                "slide_path": item.get("slide_path", ""),
                "error": item.get("error", reason.removeprefix(FAILED_UPSTREAM)),
            }
            found.append(_failure(attrs, "extraction", None if round_ is None else int(round_)))
    return found


def _finetuning(paths: Iterable[str]) -> list[Failure]:
    from hnm.encoders import read_encoder_meta

    found = []
    for encoder in paths:
        meta = read_encoder_meta(encoder)
        for slide_id, skipped in meta.extra.get("skipped_slides", {}).items():
            found.append(
                Failure(slide_id, skipped["path"], skipped["error"], "fine-tuning", [meta.round])
            )
    return found


def _failure(attrs: dict, stage: str, round_: int | None = None) -> Failure:
    return Failure(
        str(attrs.get("slide_id", "")),
        str(attrs.get("slide_path", "")),
        _SKIP_HINT.sub("", str(attrs.get("error", ""))),
        stage,
        [] if round_ is None else [round_],
    )


def _clean(value: str) -> str:
    """One TSV cell: tabs and line breaks in reader messages would break the table."""
    return " ".join(value.split())
