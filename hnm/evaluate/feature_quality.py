"""`hnm probe`'s job: one round's feature quality measured two ways, into eval/probe.json.

The linear probe (hnm.evaluate.probe) scores the features with no MIL in between; the MIL
trained at several seeds (hnm.evaluate.mil_seeds) shows how far one MIL training's test AUCs
move when only its seed changes. Together they tell a round whose features got worse from a round
whose MIL drew badly. Both are evaluation only: nothing the pipeline trains reads probe.json.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hnm import __version__
from hnm.core.atomic import write_json
from hnm.core.errors import CheckpointError
from hnm.core.formatting import fmt_metric
from hnm.evaluate.mil_seeds import mil_seed_runs
from hnm.evaluate.probe import linear_probe
from hnm.evaluate.settings import EvaluateSettings
from hnm.io.h5io import files_by_slide
from hnm.io.sheet import read_normalised_sheet
from hnm.mil.settings import MilSettings

log = logging.getLogger(__name__)


def feature_quality(
    sheet_path: str | os.PathLike[str],
    eval_sheet_path: str | os.PathLike[str],
    feature_files: Sequence[str | os.PathLike[str]],
    tiles: Sequence[str | os.PathLike[str]],
    eval_metrics_path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    mil: MilSettings,
    evaluation: EvaluateSettings,
    device: str = "auto",
    threads: int = 0,
) -> dict[str, Any]:
    """Write `out` (probe.json): {"probe": linear_probe's result, "mil_seeds": mil_seed_runs'
    (None when evaluate.mil_seeds is empty)}. The MILs train on the training sheet, as the
    round's own did; patch truth comes from the evaluation sheet; the probe's sample uses
    `mil.seed`, the run's seed."""
    eval_sheet = read_normalised_sheet(eval_sheet_path)
    features_by_slide = files_by_slide(feature_files, "features")
    tiles_by_slide = files_by_slide(tiles, "tiles")
    own_evaluation = _read_evaluation(Path(eval_metrics_path))
    probe = linear_probe(
        eval_sheet, features_by_slide, tiles_by_slide, evaluation, mil.seed, threads=threads
    )
    log.info(
        "linear probe: test AUC %s%s (%.1f s)",
        fmt_metric(probe["auc"]),
        "".join(
            f", vs {name} {fmt_metric(summary.get('auc'))}"
            for name, summary in probe["versus"].items()
        ),
        probe.get("seconds", 0.0),
    )
    seeds = mil_seed_runs(
        sheet_path,
        feature_files,
        eval_sheet,
        tiles_by_slide,
        own_evaluation,
        mil,
        evaluation,
        device=device,
        threads=threads,
    )
    if seeds is not None:
        log.info(
            "MIL over seeds %s: test patch AUC %s +- %s, test slide AUC %s +- %s",
            seeds["seeds"],
            fmt_metric(seeds["test_patch_auc"]["mean"]),
            fmt_metric(seeds["test_patch_auc"]["sd"]),
            fmt_metric(seeds["test_slide_auc"]["mean"]),
            fmt_metric(seeds["test_slide_auc"]["sd"]),
        )
    result = {"probe": probe, "mil_seeds": seeds, "code_version": __version__}
    write_json(out, result)
    return result


def _read_evaluation(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise CheckpointError(f"evaluation metrics {path} is missing; run evaluate first")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(
            f"evaluation metrics {path} is unreadable ({error}); re-run evaluate"
        ) from error
