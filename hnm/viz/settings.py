"""Every knob of the pictures (heatmaps, mining overlays and galleries, the report's sample),
declared once (hnm.core.settings); no torch here, since the viz rules run in envs/viz.yaml."""

from __future__ import annotations

from dataclasses import dataclass

from hnm.core.settings import StageSettings, setting


@dataclass(frozen=True)
class VizSettings(StageSettings):
    """Sizes are bounded so a 100,000 px slide costs what a small one does."""

    section = "viz"

    heatmap_max_px: int = setting(
        1200,
        "longest side in px of the slide thumbnail under a heatmap, read from the pyramid",
        minimum=64,
        maximum=8192,
    )
    colormap: str = setting(
        "inferno",
        "matplotlib colour map of the patch scores",
        choices=["inferno", "magma", "viridis", "plasma", "coolwarm", "RdYlBu_r", "jet"],
    )
    alpha: float = setting(
        0.55, "opacity of the score overlay on the thumbnail", above=0, maximum=1
    )
    mined_slides: int = setting(
        2,
        "train slides drawn per round and per criterion (most hard negatives, most "
        "pseudo-positives); the same slide once",
        minimum=1,
        maximum=20,
    )
    gallery_size: int = setting(
        16,
        "patches per gallery row set (top hard negatives, top pseudo-positives)",
        minimum=1,
        maximum=100,
    )
    report_sample: int = setting(
        8,
        "per-slide images (QC, heatmaps) embedded in the Snakemake report, a deterministic "
        "sample; the rest are listed by path",
        minimum=0,
        maximum=500,
    )
    report_thumb_px: int = setting(
        480,
        "longest side in px of the per-slide images embedded in the report",
        minimum=64,
        maximum=4096,
    )
    dpi: int = setting(100, "resolution of the PNG figures", minimum=50, maximum=600)
