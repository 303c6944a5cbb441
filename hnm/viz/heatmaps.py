"""A slide's heatmap: the thumbnail with the final model's patch scores as a colour overlay, a
colour bar, a scale bar in um, the annotation outline, and the prediction in the title."""

from __future__ import annotations

import os
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar  # noqa: E402

from hnm.viz.figures import save  # noqa: E402
from hnm.viz.settings import VizSettings  # noqa: E402
from hnm.viz.slides import Thumbnail, nice_length, outlines, score_image  # noqa: E402

OUTLINE_COLOURS = ["#00e5ff", "#7CFC00", "#ff4fd8", "#ffffff"]  # tumor class first


@dataclass
class SlideScores:
    slide_id: str
    coords: np.ndarray  # (N, 2) level-0 top-left of the scored patches
    side_level0: float
    scores: np.ndarray
    mpp: float  # level-0 um/px


@dataclass
class Prediction:
    split: str
    label: int | None
    prob: float | None
    predicted: int | None
    threshold: float | None


def title(slide_id: str, prediction: Prediction) -> str:
    names = {0: "normal", 1: "tumor", None: "unknown"}
    if prediction.prob is None:
        return f"{slide_id} ({prediction.split}): not scored"
    verdict = names[prediction.predicted]
    right = (
        ""
        if prediction.label is None
        else (" ✓" if prediction.predicted == prediction.label else " ✗")
    )
    return (
        f"{slide_id} ({prediction.split}): predicted {verdict}{right}, label "
        f"{names[prediction.label]}\nslide score {prediction.prob:.3f} (threshold "
        f"{prediction.threshold:.3f}, chosen on val)"
    )


def render_heatmap(
    out: str | os.PathLike[str],
    thumb: Thumbnail,
    slide: SlideScores,
    prediction: Prediction,
    annotation: str,
    classes: list[str],
    settings: VizSettings,
) -> None:
    height, width = thumb.rgb.shape[:2]
    dpi = settings.dpi
    fig, ax = plt.subplots(figsize=(width / dpi + 1.6, height / dpi + 0.9), dpi=dpi)
    ax.imshow(thumb.rgb, interpolation="antialiased")
    grid = score_image(thumb, slide.coords, slide.side_level0, slide.scores)
    image = ax.imshow(
        np.ma.masked_invalid(grid),
        cmap=settings.colormap,
        vmin=0.0,
        vmax=1.0,
        alpha=settings.alpha,
        interpolation="nearest",
    )
    fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02, label="patch score (final model)")
    handles = []
    for colour, (name, rings) in zip(OUTLINE_COLOURS, outlines(annotation, classes).items()):
        for ring in rings:
            xy = thumb.to_thumb(ring)
            ax.plot(xy[:, 0], xy[:, 1], color=colour, linewidth=1.2)
        if rings:
            handles.append(plt.Line2D([], [], color=colour, label=f"annotation: {name}"))
    if handles:
        ax.legend(handles=handles, loc="upper right", fontsize=7, framealpha=0.7)
    if slide.mpp and np.isfinite(slide.mpp):
        um_per_px = slide.mpp * thumb.downsample
        length_um = nice_length(0.2 * width * um_per_px)
        label = f"{length_um / 1000:g} mm" if length_um >= 1000 else f"{length_um:g} µm"
        ax.add_artist(
            AnchoredSizeBar(
                ax.transData,
                length_um / um_per_px,
                label,
                "lower left",
                pad=0.4,
                color="black",
                frameon=True,
                size_vertical=max(1.0, height / 200),
            )
        )
    ax.set_title(title(slide.slide_id, prediction), fontsize=9)
    ax.set_axis_off()
    save(fig, out, svg=False)
