"""The files `hnm mil` writes into a round's MIL folder, named once.

Torch-free on purpose: the workflow's rules (rules/common.smk) read these names at parse time,
and the training stage writes by them, so the two can never drift apart.
"""

from __future__ import annotations

from pathlib import Path

from hnm.io.sheet import SPLITS

MIL_FILES: dict[str, str] = {
    "model": "model.pt",
    "metrics": "metrics.json",
    "epochs": "epochs.csv",
    "slides": "slides.parquet",
    **{split: f"scores/{split}.parquet" for split in SPLITS},
}


def mil_file(folder: str | Path, name: str) -> Path:
    """The path of file `name` (a key of MIL_FILES) in MIL folder `folder`."""
    return Path(folder) / MIL_FILES[name]


# How metrics.json's excluded_slides words a slide whose features file is marked failed (a skip at
# tiling or extraction), before the error itself; `hnm failures` reads it back from MIL metrics
# written before the entries carried `failed` and `error` as fields of their own.
FAILED_UPSTREAM = "marked failed upstream: "
