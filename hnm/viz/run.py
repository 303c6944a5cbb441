"""The viz commands' work: read a run's files, call the drawing modules, write the pictures."""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from hnm.core.atomic import atomic_path
from hnm.core.errors import HnmError
from hnm.evaluate.settings import EvaluateSettings
from hnm.io.h5io import (
    BATCH_FOLDER,
    SlideData,
    files_by_slide,
    open_slide,
    read_tiles_or_fail,
    slide_file,
)
from hnm.io.sheet import read_normalised_sheet
from hnm.viz.settings import VizSettings

log = logging.getLogger(__name__)
Paths = Sequence[str | os.PathLike[str]]


def _annotation(row: dict[str, Any]) -> str:
    value = row.get("annotation")
    return "" if value is None or value != value else str(value)


def _side(attrs: dict[str, Any]) -> float:
    return float(attrs.get("step_level0") or attrs.get("read_size", 0))


def _scores(paths: Paths) -> dict[str, pd.DataFrame]:
    frames = [pd.read_parquet(p) for p in paths]
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return {str(k): g for k, g in frame.groupby("slide_id", sort=False)} if len(frame) else {}


def _slide_of(out: str | os.PathLike[str], suffix: str) -> str:
    name = Path(out).name
    if not name.endswith(suffix):
        raise HnmError(f"output {out} must be named <slide_id>{suffix}")
    return name[: -len(suffix)]


def _positions(
    slide_id: str, tiles: dict[str, SlideData], idx: np.ndarray
) -> tuple[np.ndarray, dict[str, Any]]:
    coords, attrs = read_tiles_or_fail(slide_file(tiles, slide_id, "tiles"))
    if len(idx) and (idx.min() < 0 or idx.max() >= len(coords)):
        raise HnmError(
            f"slide '{slide_id}': scores refer to patch {int(idx.max())} but its tiles file has "
            f"{len(coords)} patches; scores and tiles are out of step"
        )
    return coords[idx], attrs


def write_heatmaps(
    sheet_path: str | os.PathLike[str],
    predictions_path: str | os.PathLike[str],
    score_paths: Paths,
    tiles_paths: Paths,
    outs: Paths,
    evaluation: EvaluateSettings,
    settings: VizSettings,
) -> None:
    from hnm.viz.heatmaps import Prediction, SlideScores, render_heatmap
    from hnm.viz.slides import thumbnail

    sheet = read_normalised_sheet(sheet_path).set_index("slide_id").to_dict("index")
    predictions = pd.read_csv(predictions_path).set_index("slide_id").to_dict("index")
    scores = _scores(score_paths)
    tiles = files_by_slide(tiles_paths, "tiles")
    classes = [evaluation.annotation_class, *evaluation.versus_classes]
    for out in outs:
        slide_id = _slide_of(out, ".png")
        if slide_id not in sheet:
            raise HnmError(f"heatmap {out}: slide '{slide_id}' is not in the sheet {sheet_path}")
        row = sheet[slide_id]
        group = scores.get(slide_id, pd.DataFrame({"idx": [], "score": []}))
        idx = group["idx"].to_numpy(np.int64)
        coords, attrs = _positions(slide_id, tiles, idx)
        made = predictions.get(slide_id)
        prediction = Prediction(
            split=str(row["split"]),
            label=int(row["label"]) if row.get("label") == row.get("label") else None,
            prob=None if made is None else float(made["prob"]),
            predicted=None if made is None else int(made["predicted"]),
            threshold=None if made is None else float(made["threshold"]),
        )
        thumb = thumbnail(row["path"], slide_id, settings.heatmap_max_px)
        render_heatmap(
            out,
            thumb,
            SlideScores(
                slide_id,
                coords,
                _side(attrs),
                group["score"].to_numpy(np.float64),
                float(attrs.get("mpp", float("nan"))),
            ),
            prediction,
            _annotation(row),
            classes,
            settings,
        )
        log.info("%s: heatmap of %d patches -> %s", slide_id, len(idx), out)


def write_qupath(score_paths: Paths, tiles_paths: Paths, outs: Paths) -> None:
    from hnm.viz.qupath import feature_collection, write_geojson

    scores = _scores(score_paths)
    tiles = files_by_slide(tiles_paths, "tiles")
    for out in outs:
        slide_id = _slide_of(out, ".geojson")
        group = scores.get(slide_id)
        if group is None:
            log.warning("%s: no patch scores (excluded upstream); writing no tiles", slide_id)
            group = pd.DataFrame({"idx": [], "score": [], "logit": []})
        idx = group["idx"].to_numpy(np.int64)
        coords, attrs = _positions(slide_id, tiles, idx)
        collection = feature_collection(
            slide_id,
            coords,
            _side(attrs),
            idx,
            group["score"].to_numpy(np.float64),
            group["logit"].to_numpy(np.float64),
        )
        write_geojson(out, collection)
        log.info("%s: %d tiles -> %s", slide_id, len(idx), out)


def _truth_names(
    annotation: str, coords: np.ndarray, side: float, evaluation: EvaluateSettings
) -> list[str]:
    from hnm.viz.slides import patch_truth

    classes = [evaluation.annotation_class, *evaluation.versus_classes]
    masks = patch_truth(annotation, classes, coords, side, evaluation.min_fraction)
    if not masks:
        return [""] * len(coords)
    names = []
    for i in range(len(coords)):
        hit = next((name for name in classes if masks[name][i]), None)
        if hit is None:
            names.append("other")
        elif hit == evaluation.annotation_class:
            names.append("tumor")
        else:
            names.append(hit.lower())
    return names


def write_mined(
    sheet_path: str | os.PathLike[str],
    round_: int,
    sets_path: str | os.PathLike[str],
    tiles_paths: Paths,
    out_overlay: str | os.PathLike[str],
    out_gallery: str | os.PathLike[str],
    evaluation: EvaluateSettings,
    settings: VizSettings,
) -> None:
    from hnm.io.patches import open_patch_reader
    from hnm.viz.mined import (
        SET_STYLES,
        GalleryTile,
        SlidePanel,
        choose_slides,
        gallery_figure,
        overlay_figure,
    )
    from hnm.viz.slides import thumbnail

    sheet = read_normalised_sheet(sheet_path).set_index("slide_id").to_dict("index")
    sets = pd.read_parquet(sets_path)
    tiles = files_by_slide(tiles_paths, "tiles")
    panels = []
    for slide_id in choose_slides(sets, settings.mined_slides):
        rows = sets[sets["slide_id"] == slide_id]
        coords, attrs = read_tiles_or_fail(slide_file(tiles, slide_id, "tiles"))
        panels.append(
            SlidePanel(
                slide_id,
                int(sheet[slide_id]["label"]),
                thumbnail(sheet[slide_id]["path"], slide_id, min(settings.heatmap_max_px, 800)),
                _side(attrs),
                {
                    name: coords[rows.loc[rows["set"] == name, "idx"].to_numpy(np.int64)]
                    for name in SET_STYLES
                },
            )
        )
    overlay_figure(out_overlay, round_, panels, settings.dpi)

    groups: dict[str, list[GalleryTile]] = {}
    for name, title in (("hardneg", "top hard negatives"), ("pos", "top pseudo-positives")):
        top = sets[sets["set"] == name].sort_values(
            ["score", "slide_id", "idx"], ascending=[False, True, True], kind="stable"
        )
        top = top.head(settings.gallery_size)
        tiles_out: list[GalleryTile] = []
        for slide_id, group in top.groupby("slide_id", sort=False):
            slide_id = str(slide_id)
            coords, attrs = read_tiles_or_fail(slide_file(tiles, slide_id, "tiles"))
            idx = group["idx"].to_numpy(np.int64)
            reader = open_patch_reader(sheet[slide_id]["path"], coords, attrs, slide_id)
            try:
                images = reader.read(idx)
            finally:
                reader.close()
            truth = _truth_names(
                _annotation(sheet[slide_id]), coords[idx], _side(attrs), evaluation
            )
            tiles_out += [
                GalleryTile(np.asarray(image), slide_id, float(score), label)
                for image, score, label in zip(images, group["score"], truth)
            ]
        tiles_out.sort(key=lambda tile: -tile.score)
        groups[title] = tiles_out
    gallery_figure(out_gallery, round_, groups, settings.dpi)


def _read_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def write_figures(
    args: argparse.Namespace,
    outs: dict[str, str],
    evaluation: EvaluateSettings,
    settings: VizSettings,
) -> None:
    from hnm.viz import figures

    dpi = settings.dpi
    predictions = pd.read_csv(args.predictions)
    test = predictions[predictions["split"] == "test"]
    threshold = float(test["threshold"].iloc[0]) if len(test) else 0.5
    sheet = read_normalised_sheet(args.sheet).set_index("slide_id").to_dict("index")

    truth_parts, score_parts = [], []
    tiles = files_by_slide(args.tiles, "tiles") if args.tiles else {}
    scores = _scores([args.test_scores])
    for slide_id, group in scores.items():
        row = sheet.get(slide_id)
        if row is None or slide_id not in tiles:
            continue
        annotation = _annotation(row)
        idx = group["idx"].to_numpy(np.int64)
        if annotation:
            coords, attrs = _positions(slide_id, tiles, idx)
            names = _truth_names(annotation, coords, _side(attrs), evaluation)
            truth = np.array([name == "tumor" for name in names])
        elif int(row["label"]) == 0:
            truth = np.zeros(len(idx), dtype=bool)  # a negative slide's patches are all normal
        else:
            continue  # a positive slide without annotation: patch truth unknown
        truth_parts.append(truth)
        score_parts.append(group["score"].to_numpy(np.float64))
    patch_truth = np.concatenate(truth_parts) if truth_parts else None
    patch_scores = np.concatenate(score_parts) if score_parts else None
    figures.roc_figure(
        outs["roc"],
        test["label"].to_numpy(),
        test["prob"].to_numpy(),
        threshold,
        patch_truth,
        patch_scores,
        dpi=dpi,
    )
    figures.confusion_figure(
        outs["confusion"],
        test["label"].to_numpy(),
        test["predicted"].to_numpy(),
        threshold,
        dpi=dpi,
    )
    mil = [_read_json(p) for p in args.mil_metrics]
    table = figures.round_table(mil, [_read_json(p) for p in args.eval_metrics])
    figures.rounds_figure(outs["rounds"], table, dpi=dpi)
    figures.finetune_figure(outs["finetune"], pd.read_csv(args.finetune_epochs), dpi=dpi)
    figures.mil_figure(
        outs["mil"],
        [pd.read_csv(p) for p in args.mil_epochs],
        [m.get("selected_epoch") for m in mil],
        dpi=dpi,
    )


def write_report_sample(
    images: Paths,
    outs: Paths,
    sheet_path: str | os.PathLike[str],
    predictions_path: str | os.PathLike[str],
    out_index: str | os.PathLike[str],
    settings: VizSettings,
    tiles_paths: Paths = (),
    qc_slides: Sequence[str] = (),
) -> None:
    """Each image shrunk to report_thumb_px, as JPEG (the report embeds these), and a CSV listing every
    slide with its prediction and where its full-size files are.

    With batched tiling a slide's QC picture is in its tiles (batch file, `qc_png`), not a PNG of
    its own: `qc_slides` are read from `tiles_paths` and shrunk to the first outs, before `images`;
    the index then points each slide at its batch's stacked QC PNG."""
    tiles = files_by_slide(tiles_paths, "tiles")
    pictures = [*(_qc_picture(tiles, slide) for slide in qc_slides), *images]
    if len(pictures) != len(outs):
        raise HnmError(f"{len(pictures)} images to shrink but {len(outs)} --out files")
    for image, out in zip(pictures, outs):
        with Image.open(image) as picture:
            picture = picture.convert("RGB")
            picture.thumbnail((settings.report_thumb_px, settings.report_thumb_px))
            with atomic_path(out) as temporary:
                picture.save(temporary, format="JPEG", quality=85)
    sheet = read_normalised_sheet(sheet_path)
    predictions = pd.read_csv(predictions_path)[["slide_id", "prob", "predicted"]]
    index = sheet[["slide_id", "split", "label"]].merge(predictions, on="slide_id", how="left")
    index["qc"] = [qc_picture_path(tiles.get(slide), slide) for slide in index["slide_id"]]
    index["heatmap"] = np.where(
        index["split"] == "train", "", "results/final/heatmaps/" + index["slide_id"] + ".png"
    )
    index["qupath"] = "results/final/heatmaps/" + index["slide_id"] + ".geojson"
    with atomic_path(out_index) as temporary:
        index.to_csv(temporary, index=False)


def qc_picture_path(tiles: SlideData | None, slide_id: str) -> str:
    """Where a slide's QC picture is in the run folder: its own PNG, or its batch's stacked one."""
    if tiles is not None and tiles.group:
        return f"results/qc/{BATCH_FOLDER}/{tiles.path.stem}.png"
    return f"results/qc/{slide_id}.png"


def _qc_picture(tiles: dict[str, SlideData], slide_id: str) -> io.BytesIO:
    """A slide's QC picture as its batch tiles file keeps it (hnm.tile.stage)."""
    where = slide_file(tiles, slide_id, "tiles")
    with open_slide(where) as handle:
        if "qc_png" not in handle:
            raise HnmError(
                f"tiles of slide '{slide_id}' in {where} hold no QC picture (qc_png); re-run tiling"
            )
        return io.BytesIO(handle["qc_png"][:].tobytes())


def write_metrics_html(
    metrics_path: str | os.PathLike[str],
    rounds_path: str | os.PathLike[str],
    out: str | os.PathLike[str],
) -> None:
    """The final test metrics and the per-round table as one small HTML page for the report."""
    import html

    metrics = _read_json(metrics_path)
    slide = metrics.get("slide") or {}
    patch = ((metrics.get("patch") or {}).get("test") or {}).get("overall") or {}
    final = pd.DataFrame(
        [
            ("slide AUC", slide.get("auc")),
            ("slide accuracy (val threshold)", slide.get("accuracy")),
            ("slide F1 (val threshold)", slide.get("f1")),
            ("threshold (chosen on val)", metrics.get("threshold")),
            ("test slides", slide.get("n_slides")),
            ("patch AUC", patch.get("auc")),
        ],
        columns=["test metric", "value"],
    )
    final["value"] = [
        "-" if v is None else str(v) if isinstance(v, int) else f"{float(v):.4f}"
        for v in final["value"]
    ]
    rounds = pd.read_csv(rounds_path)
    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>hnm metrics</title><style>"
        "body{font-family:sans-serif;font-size:13px}table{border-collapse:collapse;margin:8px 0}"
        "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}</style></head><body>"
        f"<h3>Final model, round {html.escape(str(metrics.get('round', '')))}, test split</h3>"
        + final.to_html(
            index=False, float_format=lambda v: f"{v:.4f}", na_rep="-", table_id="final"
        )
        + "<h3>Per round</h3>"
        + rounds.to_html(
            index=False, float_format=lambda v: f"{v:.4g}", na_rep="-", table_id="rounds"
        )
        + "</body></html>"
    )
    with atomic_path(out) as temporary:
        temporary.write_text(page, encoding="utf-8")
