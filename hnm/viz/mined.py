"""What a round mined: the sets on the thumbnails of a few train slides, and galleries of the
top-scoring hard negatives and pseudo-positives, marked with their patch truth where it exists."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.collections import PatchCollection  # noqa: E402
from matplotlib.patches import Patch, Rectangle  # noqa: E402

from hnm.viz.figures import save  # noqa: E402
from hnm.viz.slides import Thumbnail  # noqa: E402

# drawn in this order, so curriculum positives (a subset of pos) show on top of their pos square
SET_STYLES = {
    "hardneg": ("#1f77ff", "hard negative"),
    "pos": ("#ff9f1c", "pseudo-positive"),
    "curriculum": ("#e0002a", "curriculum positive"),
}
TRUTH_COLOURS = {"tumor": "#e0002a", "mimic": "#7a00cc", "other": "#555555", "": "#555555"}


def choose_slides(sets: pd.DataFrame, per_criterion: int) -> list[str]:
    """The train slides with the most hard negatives, then those with the most pseudo-positives
    (count descending, slide id ascending on ties), `per_criterion` each, each slide once."""
    chosen: list[str] = []
    for name in ("hardneg", "pos"):
        counts = sets[sets["set"] == name].groupby("slide_id").size().reset_index(name="n")
        counts = counts.sort_values(["n", "slide_id"], ascending=[False, True], kind="stable")
        chosen += [s for s in counts["slide_id"].astype(str).head(per_criterion) if s not in chosen]
    return chosen


@dataclass
class SlidePanel:
    slide_id: str
    label: int
    thumb: Thumbnail
    side_level0: float
    sets: dict[str, np.ndarray]  # set name -> (N, 2) level-0 coords


def overlay_figure(
    out: str | os.PathLike[str], round_: int, panels: list[SlidePanel], dpi: int = 100
) -> None:
    columns = max(1, min(len(panels), 2))
    rows = max(1, math.ceil(len(panels) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(6 * columns, 6 * rows), dpi=dpi, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, panel in zip(axes.flat, panels):
        ax.imshow(panel.thumb.rgb)
        side = panel.side_level0 / panel.thumb.downsample
        counts = []
        for name, (colour, label) in SET_STYLES.items():
            corners = panel.thumb.to_thumb(panel.sets.get(name, np.zeros((0, 2))))
            boxes = [Rectangle((x, y), side, side) for x, y in corners]
            ax.add_collection(
                PatchCollection(
                    boxes,
                    facecolor=colour,
                    edgecolor=colour,
                    alpha=0.45 if name != "curriculum" else 0.8,
                    linewidth=0.8,
                )
            )
            counts.append(f"{len(boxes)} {label}s")
        kind = "tumor" if panel.label == 1 else "normal"
        ax.set_title(f"{panel.slide_id} ({kind} slide)\n" + ", ".join(counts), fontsize=9)
    handles = [Patch(color=colour, label=label) for colour, label in SET_STYLES.values()]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=9, frameon=False)
    fig.suptitle(f"round {round_}: patches mined for fine-tuning", fontsize=12)
    fig.tight_layout(rect=(0, 0.04, 1, 0.97))
    save(fig, out)


@dataclass
class GalleryTile:
    image: np.ndarray
    slide_id: str
    score: float
    truth: str  # "tumor", "mimic", "other" (annotated, neither) or "" (no patch truth)


def gallery_figure(
    out: str | os.PathLike[str],
    round_: int,
    groups: dict[str, list[GalleryTile]],
    dpi: int = 100,
) -> None:
    """One block of tiles per group (e.g. top hard negatives, top pseudo-positives), up to eight
    per row; each tile titled with its score and slide, framed and labelled by its patch truth."""
    per_row = 8
    layout = [
        (name, tiles[i : i + per_row])
        for name, tiles in groups.items()
        for i in range(0, max(len(tiles), 1), per_row)
    ]
    fig, axes = plt.subplots(
        len(layout),
        per_row,
        figsize=(per_row * 1.6, len(layout) * 2.0 + 0.6),
        dpi=dpi,
        squeeze=False,
    )
    seen_group = set()
    for row, (name, tiles) in enumerate(layout):
        for column in range(per_row):
            ax = axes[row, column]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if column == 0 and name not in seen_group:
                ax.set_ylabel(name, fontsize=9, rotation=90)
            if column >= len(tiles):
                if not tiles and column == 0:
                    ax.text(0.5, 0.5, "none mined", ha="center", va="center", fontsize=8)
                continue
            tile = tiles[column]
            ax.imshow(tile.image)
            colour = TRUTH_COLOURS.get(tile.truth, "#555555")
            for spine in ax.spines.values():
                spine.set_visible(True)
                spine.set_color(colour)
                spine.set_linewidth(3 if tile.truth in ("tumor", "mimic") else 1)
            truth = f"\n{tile.truth}" if tile.truth else ""
            ax.set_title(f"{tile.score:.3f}{truth}", fontsize=7, color=colour)
            ax.set_xlabel(tile.slide_id, fontsize=5)
        seen_group.add(name)
    fig.suptitle(
        f"round {round_}: top-scoring hard negatives and pseudo-positives (score; patch truth "
        "from the annotations where given)",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    save(fig, out)
