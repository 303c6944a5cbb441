"""The linear probe: how well one round's features separate tumor patches, with no MIL involved.

rounds.csv's patch AUC scores the MIL's ranking, which mixes the features with the luck of one
weakly supervised training: in one run the MIL's test patch AUC went 0.96 -> 0.57 -> 0.96 over
three rounds while a linear probe on the same features stayed at 0.99-1.00. The paper's claim is
better features, so this measures them alone: a logistic regression (standardised features,
balanced class weights, fixed C and iterations) fitted on the train slides' patches, tumor against
everything else, and scored on the test slides' patches. Every round fits it on the same patches
(the sample depends on the seed and the tiles only), so a change between rounds is a change of the
features.

The probe is fitted on patch ground truth, which makes it evaluation only: its numbers go to
probe.json and rounds.csv and nothing the pipeline trains reads them. Patch truth follows
hnm.evaluate.evaluate: a patch is tumor when `annotation_class` covers `min_fraction` of it; a
negative slide without annotation is all "rest"; a positive slide without annotation has unknown
patch truth and is left out, as is a slide whose features failed upstream.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from hnm.core.errors import HnmError
from hnm.core.threads import usable_cores
from hnm.evaluate.evaluate import annotated_labels, versus_summary
from hnm.evaluate.metrics import roc_auc
from hnm.evaluate.settings import EvaluateSettings
from hnm.io.h5io import SlideData, open_slide, read_feature_rows, read_tiles_or_fail, slide_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LabelledSlide:
    """One slide with known patch truth: its feature file and one mask per class (row 0 is tumor,
    then each versus class) over the file's rows."""

    slide_id: str
    features: SlideData
    masks: np.ndarray  # (n_classes, n_patches) bool

    @property
    def size(self) -> int:
        return int(self.masks.shape[1])


def labelled_slides(
    sheet: pd.DataFrame,
    split: str,
    feature_files: dict[str, SlideData],
    tiles_files: dict[str, SlideData],
    classes: Sequence[str],
    min_fraction: float,
) -> tuple[list[LabelledSlide], list[str]]:
    """The split's slides whose patch truth is known, and the others as 'slide (why)'."""
    slides: list[LabelledSlide] = []
    skipped: list[str] = []
    for _, row in sheet[sheet["split"] == split].iterrows():
        slide_id = str(row["slide_id"])
        annotation = str(row["annotation"] or "")
        if not annotation and int(row["label"]) == 1:
            skipped.append(f"{slide_id} (positive without annotation)")
            continue
        path = slide_file(feature_files, slide_id, "features")
        coords, reason = _feature_coords(path, slide_id)
        if reason:
            skipped.append(f"{slide_id} ({reason})")
            continue
        if annotation:
            tiles_path = slide_file(tiles_files, slide_id, "tiles")
            tile_coords, _ = read_tiles_or_fail(tiles_path)
            if not np.array_equal(tile_coords, coords):
                raise HnmError(
                    f"slide '{slide_id}': feature file {path} and tiles file {tiles_path} list "
                    "different patches; features and tiles are out of step (re-run extraction)"
                )
            masks = np.stack(
                annotated_labels(
                    slide_id, annotation, tiles_files, np.arange(len(coords)), list(classes),
                    min_fraction,
                )
            )  # fmt: skip
        else:
            masks = np.zeros((len(classes), len(coords)), dtype=bool)
        slides.append(LabelledSlide(slide_id, path, masks))
    return slides, skipped


def _feature_coords(path: SlideData, slide_id: str) -> tuple[np.ndarray, str]:
    """(the feature file's patch coordinates, "" or why the slide has no usable features)."""
    try:
        with open_slide(path) as handle:
            dataset = handle["features"]
            if bool(dataset.attrs.get("failed", False)):
                return np.zeros((0, 2), np.int64), "features marked failed upstream"
            if dataset.shape[0] == 0:
                return np.zeros((0, 2), np.int64), "no patches"
            return np.asarray(handle["coords"][:], dtype=np.int64), ""
    except (OSError, KeyError) as error:
        raise HnmError(
            f"feature file {path} of slide '{slide_id}' cannot be read ({error}); delete it and "
            "re-run extraction for this slide"
        ) from error


def sample_rows(counts: Sequence[int], limit: int, seed: int) -> list[np.ndarray]:
    """Per slide, the sorted rows of a uniform sample of at most `limit` of all the slides'
    patches together, drawn with `seed`: the same counts and seed give the same rows."""
    total = int(sum(counts))
    if total <= limit:
        return [np.arange(n) for n in counts]
    chosen = np.sort(np.random.default_rng(seed).choice(total, size=limit, replace=False))
    bounds = np.cumsum([0, *counts])
    return [chosen[(chosen >= lo) & (chosen < hi)] - lo for lo, hi in zip(bounds[:-1], bounds[1:])]


def read_rows(path: SlideData, rows: np.ndarray | None = None) -> np.ndarray:
    """Rows of a feature file (all without `rows`) as float64, one slide in memory at a time:
    the float32 every stage reads (hnm.io.h5io, either stored dtype), widened for the probe."""
    with open_slide(path) as handle:
        features = read_feature_rows(handle["features"]).astype(np.float64)
    return features if rows is None else features[rows]


def fit_probe(x: np.ndarray, y: np.ndarray, settings: EvaluateSettings) -> Any:
    """Standardise, then L2 logistic regression with balanced class weights (L-BFGS, which is
    deterministic). Returns the fitted scikit-learn pipeline."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(
        StandardScaler(),
        LogisticRegression(
            C=settings.probe_c,
            max_iter=settings.probe_max_iter,
            class_weight="balanced",
            solver="lbfgs",
        ),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # reported as `converged` instead
        model.fit(x, y)
    return model


def empty_result(settings: EvaluateSettings, reason: str) -> dict[str, Any]:
    """The probe's result without numbers (rounds.csv's probe columns stay empty), and why."""
    return {
        "auc": None,
        "versus": {name: {"auc": None} for name in settings.versus_classes},
        "reason": reason,
    }


def linear_probe(
    sheet: pd.DataFrame,
    feature_files: dict[str, SlideData],
    tiles_files: dict[str, SlideData],
    settings: EvaluateSettings,
    seed: int,
    threads: int = 0,
) -> dict[str, Any]:
    """Fit the probe on the train split, score the test split: AUC tumor vs rest and tumor vs each
    versus class. Without annotated tumor patches to fit on (or test patches to score) the AUCs are
    None and `reason` says why; that is logged, never an error. `threads` caps the BLAS threads
    (0: the usable cores)."""
    from threadpoolctl import threadpool_limits

    started = time.perf_counter()
    classes = [settings.annotation_class, *settings.versus_classes]
    train, train_skipped = labelled_slides(
        sheet, "train", feature_files, tiles_files, classes, settings.min_fraction
    )
    test, test_skipped = labelled_slides(
        sheet, "test", feature_files, tiles_files, classes, settings.min_fraction
    )
    for split, skipped in (("train", train_skipped), ("test", test_skipped)):
        if skipped:
            log.info("linear probe leaves out %s slides: %s", split, "; ".join(skipped))
    rows = sample_rows([s.size for s in train], settings.probe_max_patches, seed)
    y = np.concatenate([s.masks[0][r] for s, r in zip(train, rows)]) if train else np.zeros(0)
    reason = _why_not(train, test, y, settings.annotation_class)
    if reason is not None:
        log.warning("linear probe: no AUC: %s", reason)
        result = empty_result(settings, reason)
    else:
        with threadpool_limits(limits=threads if threads > 0 else usable_cores()):
            x = _stack([read_rows(s.features, r) for s, r in zip(train, rows)], train)
            model = fit_probe(x, y.astype(int), settings)
            del x
            scores = [model.decision_function(read_rows(s.features)) for s in test]
        result = _scores_summary(test, np.concatenate(scores), classes)
        result["converged"] = bool(model[-1].n_iter_[0] < settings.probe_max_iter)
        result["n_iter"] = int(model[-1].n_iter_[0])
        if not result["converged"]:
            log.warning(
                "linear probe stopped at probe_max_iter %d before converging; raise it",
                settings.probe_max_iter,
            )
    result["train"] = {
        "n_slides": len(train),
        "n_patches_available": int(sum(s.size for s in train)),
        "n_patches": int(y.size),
        "n_tumour_patches": int(y.sum()),
        "skipped": train_skipped,
    }
    result["test"] = {
        "n_slides": len(test),
        "n_patches": int(sum(s.size for s in test)),
        "n_tumour_patches": int(sum(s.masks[0].sum() for s in test)),
        "skipped": test_skipped,
    }
    result["settings"] = {
        "C": settings.probe_c,
        "max_iter": settings.probe_max_iter,
        "max_patches": settings.probe_max_patches,
        "seed": seed,
    }
    result["seconds"] = time.perf_counter() - started
    return result


def _why_not(
    train: list[LabelledSlide], test: list[LabelledSlide], y: np.ndarray, tumor: str
) -> str | None:
    if not y.any():
        where = "in the sampled patches" if any(s.masks[0].any() for s in train) else ""
        return (
            f"the train split has no patch of annotated class '{tumor}' {where}".rstrip()
            + " to fit the probe on (annotate some positive train slides)"
        )
    if y.all():
        return "every train patch with known truth is tumor; the probe needs 'rest' patches too"
    if not test:
        return "no test slide has known patch truth (annotate the positive test slides)"
    return None


def _stack(blocks: list[np.ndarray], slides: list[LabelledSlide]) -> np.ndarray:
    widths = {block.shape[1] for block in blocks if block.ndim == 2}
    if len(widths) > 1:
        raise HnmError(
            f"the train slides' feature files have different widths {sorted(widths)} "
            f"({', '.join(s.slide_id for s in slides[:5])}, ...); all slides of a round must use "
            "the same encoder"
        )
    return np.concatenate(blocks)


def _scores_summary(
    test: list[LabelledSlide], scores: np.ndarray, classes: list[str]
) -> dict[str, Any]:
    truth, *others = np.concatenate([s.masks for s in test], axis=1)
    auc = roc_auc(truth, scores)
    reason = None if auc is not None else "the test patches with known truth lack a class"
    if reason:
        log.warning("linear probe: no test AUC: %s", reason)
    return {
        "auc": auc,
        "versus": {
            name: versus_summary(truth, other & ~truth, scores)
            for name, other in zip(classes[1:], others)
        },
        "reason": reason,
    }
