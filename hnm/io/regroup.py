"""Move a run's per-slide tiles and features files into batch files, so that Snakemake carries on.

Runs begun before batch files, with `tile.slides_per_job` or `extract.slides_per_job` above 1, hold
one file per slide where the workflow now expects one per batch (hnm.io.h5io). Snakemake would make
them again, and everything after them: every round's extraction, MIL, mining and fine-tuning. This
writes each batch's file from its slides' files instead, byte for byte the same datasets and
attributes, and gives it the newest modification time among them, so the files made from them
stay newer and Snakemake finds nothing to redo. A batch whose slides are not all there (a run
stopped part way, or a round whose features keep_rounds removed) is left as it is: Snakemake makes
it as usual. The per-slide files are removed once their batch file is in place.

Snakemake also re-runs a job whose recorded inputs differ from its inputs now (its rerun trigger
`input`), and every job that read the per-slide files now reads batch files instead. So this
removes Snakemake's record (.snakemake/metadata) of each file whose job read a regrouped file, and
of the regrouped files themselves: a file without a record is judged by its modification time
alone, and the next run that makes it again records it anew.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from hnm.core.errors import HnmError
from hnm.extract.batches import batches_by_split
from hnm.io.h5io import BATCH_FOLDER, BATCH_LAYOUT, batch_file, slide_output
from hnm.io.sheet import read_normalised_sheet

log = logging.getLogger(__name__)


@dataclass
class Regrouped:
    """What a regroup did (or, dry, would do): batch files written, batches left to Snakemake."""

    written: list[Path] = field(default_factory=list)
    incomplete: list[Path] = field(default_factory=list)
    removed: list[Path] = field(default_factory=list)
    forgotten: int = 0


def regroup_run(
    results: Path, tile_per_job: int, extract_per_job: int, dry_run: bool = False
) -> Regrouped:
    """Regroup `results` (a run's results folder) for the given slides_per_job settings."""
    sheet_path = results / "sheet.tsv"
    if not sheet_path.exists():
        raise HnmError(
            f"{sheet_path} is missing: regroup reads the run's slides from it; give the results "
            "folder of a run that has started"
        )
    sheet = read_normalised_sheet(sheet_path)
    split_of = dict(zip(sheet["slide_id"].astype(str), sheet["split"].astype(str)))
    done = Regrouped()
    if tile_per_job > 1:
        for batch, members in batches_by_split(split_of, tile_per_job).items():
            _regroup(
                results / "tiles",
                batch,
                members,
                done,
                dry_run,
                qc=results / "qc",
            )
    if extract_per_job > 1:
        batches = batches_by_split(split_of, extract_per_job)
        for folder in sorted(results.glob("r*/features")):
            for batch, members in batches.items():
                _regroup(folder, batch, members, done, dry_run)
    if not dry_run and done.removed:
        done.forgotten = forget_records(results.resolve().parent, done.removed)
    return done


def forget_records(workdir: Path, removed: list[Path]) -> int:
    """Remove Snakemake's records of the removed files and of every file whose job read one;
    returns how many. Records name paths relative to the run's folder, `workdir`."""
    folder = workdir / ".snakemake" / "metadata"
    if not folder.is_dir():
        return 0
    gone = {os.path.relpath(path.resolve(), workdir) for path in removed}
    forgotten = 0
    for record in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            data = json.loads(record.read_text())
        except (OSError, ValueError):
            continue  # not a record Snakemake can read either
        inputs = data.get("input") or []
        if _record_path(record, folder) in gone or gone.intersection(inputs):
            record.unlink()
            forgotten += 1
    return forgotten


def _record_path(record: Path, folder: Path) -> str:
    """The file a record is of: its name (in parts, for a long one) is the path, urlsafe base64."""
    import base64

    encoded = "".join(record.relative_to(folder).parts)
    try:
        return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        return ""


def _regroup(
    folder: Path,
    batch: str,
    members: list[str],
    done: Regrouped,
    dry_run: bool,
    qc: Path | None = None,
) -> None:
    target = folder / BATCH_FOLDER / f"{batch}.h5"
    sources = [folder / f"{slide}.h5" for slide in members]
    pictures = [qc / f"{slide}.png" for slide in members] if qc is not None else []
    if target.exists() or not any(path.exists() for path in sources):
        return
    if not all(path.exists() for path in [*sources, *pictures]):
        done.incomplete.append(target)
        return
    done.written.append(target)
    if dry_run:
        return
    newest = max(path.stat().st_mtime_ns for path in [*sources, *pictures])
    picture_path = qc / BATCH_FOLDER / f"{batch}.png" if qc is not None else None
    if picture_path is not None:
        _stack_pictures(pictures, picture_path)
        os.utime(picture_path, ns=(newest, newest))
    with batch_file(target) as batch:
        for slide, source in zip(members, sources):
            with slide_output(batch.slide(slide)) as group, h5py.File(source, "r") as handle:
                if handle.attrs.get("layout") == BATCH_LAYOUT:
                    raise HnmError(f"{source} is a batch file already; leave it where it is")
                for name in handle:
                    handle.copy(handle[name], group, name=name)
                if qc is not None:
                    png = (qc / f"{slide}.png").read_bytes()
                    group.create_dataset("qc_png", data=np.frombuffer(png, dtype=np.uint8))
    os.utime(target, ns=(newest, newest))
    for path in [*sources, *pictures]:
        path.unlink()
        done.removed.append(path)
    log.info("%s: %d slides", target, len(members))


def _stack_pictures(pictures: list[Path], out: Path) -> None:
    from PIL import Image

    from hnm.tile.qc import stack, write_png

    images = []
    for path in pictures:
        with Image.open(path) as picture:
            images.append(picture.convert("RGB"))
    write_png(out, stack(images))
