"""The `predict` config section: which new slides to score and where their outputs go.

Both are read by the workflow only (rules/predict.smk): the stages it runs take files, not these
settings, so no command has flags for them. No torch here: the Snakefile reads this while parsing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from hnm.core.settings import StageSettings, setting

# A folder name that is also a safe path component: what slide ids may be (hnm.io.sheet.SAFE_ID).
NAME_PATTERN = r"^([A-Za-z0-9][A-Za-z0-9._-]{0,127})?$"


@dataclass(frozen=True)
class PredictSettings(StageSettings):
    """Predictions of each sheet go to results/predict/<name>/, so two sheets never mix and the
    training run's own results/final/ is never touched."""

    section = "predict"

    sheet: str = setting(
        "",
        "sheet of new slides to score with the finished run's model (columns slide_id, path and "
        "optionally mpp; TSV or CSV); empty: no prediction. `snakemake predict --config "
        "'predict={sheet: /data/new.tsv}'`",
        cli=False,
    )
    name: str = setting(
        "",
        "output folder results/predict/<name>/; empty: the sheet's file name without extension",
        pattern=NAME_PATTERN,
        cli=False,
    )

    def folder_name(self) -> str:
        """`name`, or one made from the sheet's file name (characters a path may not hold as '_')."""
        if self.name:
            return self.name
        stem = re.sub(r"[^A-Za-z0-9._-]", "_", Path(self.sheet).stem).lstrip("._-")
        return stem[:128] or "predict"

    def out_dir(self) -> str:
        return f"results/predict/{self.folder_name()}"
