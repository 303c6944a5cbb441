"""Every knob of tiling (patch grid, tissue detection, unreadable slides), declared once.

The grid and tissue code take the smaller GridParams / TissueParams records; they are made here,
from settings that have already been checked, so their values have one source (hnm.core.settings).
"""

from __future__ import annotations

from dataclasses import dataclass

from hnm.core.settings import ON_SLIDE_ERROR, StageSettings, setting
from hnm.tile.grid import GridParams
from hnm.tile.tissue import TissueParams

# What a stage does with a slide it cannot read (tiling, and extraction for pixels read later).


@dataclass(frozen=True)
class TileSettings(StageSettings):
    """Defaults are the demo's: 32 px patches at 2.0 um/px (config/paper.yaml: 224 px).

    Patches are defined physically (patch_size px at target_mpp um/px), so slides scanned at 20x
    and 40x give patches of the same tissue area (docs/method.md). Why the other defaults:
    - overlap 0: non-overlapping patches, as in ItS2CLR/HNM; a fraction in [0, 1) shrinks the
      stride.
    - min_tissue_fraction 0.5: mostly-glass patches carry no signal and would be easy negatives in
      every bag.
    - tissue_mpp 8.0 um/px: a 224 um patch spans 28 mask pixels, enough to measure its tissue
      fraction to a few percent, while a 20 x 15 mm section is only ~2500 x 1900 pixels.
    - median_um 56: 7 px at 8 um/px; wipes out dust, stray cells and JPEG speckle (tens of um)
      without rounding off tissue borders much.
    - closing_um 32 (disc radius): bridges gaps up to ~64 um (tears, fat-cell membranes, loose
      stroma) so one piece of tissue stays one component.
    - min_tissue_area_um2 20,000 (~140 x 140 um): smaller components are debris, dust or floaters.
    - max_hole_area_um2 50,000 (~225 x 225 um): holes up to about one patch (vessel lumens, fat
      cells, small tears) are tissue context; larger gaps stay background.
    - min_saturation 15 (of 255): glass and JPEG noise on it sit below ~8 on real scans, the palest
      stained tissue above ~20; the floor only decides when Otsu has nothing real to separate.
    """

    section = "tile"

    patch_size: int = setting(32, "patch side in px at target_mpp, the encoder's input", minimum=8)
    target_mpp: float = setting(2.0, "um/px of the patches; 1.0 = 10x, 2.0 = 5x", above=0)
    min_tissue_fraction: float = setting(
        0.5, "keep patches with at least this tissue fraction", minimum=0, maximum=1
    )
    overlap: float = setting(
        0.0, "fraction of a patch side that neighbours share, in [0, 1)", minimum=0, below=1
    )
    tissue_mpp: float = setting(8.0, "um/px of the tissue mask", above=0)
    median_um: float = setting(56.0, "median-blur kernel width of tissue detection, um", minimum=0)
    closing_um: float = setting(32.0, "closing disc radius of tissue detection, um", minimum=0)
    min_tissue_area_um2: float = setting(
        20_000.0, "drop tissue pieces smaller than this, um^2", minimum=0
    )
    max_hole_area_um2: float = setting(
        50_000.0, "fill holes in tissue up to this size, um^2", minimum=0
    )
    min_saturation: float = setting(
        15.0, "saturation floor under Otsu's threshold, 0-255", minimum=0, maximum=255
    )
    on_slide_error: str = setting(
        "fail",
        "a slide that cannot be opened or read: fail (stop) or skip (write a failed-marked tiles "
        "file, list it in results/qc/failed_slides.tsv and exclude it downstream)",
        choices=ON_SLIDE_ERROR,
    )

    slides_per_job: int = setting(
        1,
        "slides per tiling job, each paying the interpreter and imports once (0.6 s a job on a "
        "2-core CPU: three quarters of tiling a 1,000 px slide, a few percent of a real one); "
        "1: one job per slide; read by the workflow, not by `hnm tile`",
        minimum=1,
        cli=False,
    )

    def grid(self) -> GridParams:
        """What the patch grid needs."""
        return GridParams(
            patch_size=self.patch_size,
            target_mpp=self.target_mpp,
            overlap=self.overlap,
            min_tissue_fraction=self.min_tissue_fraction,
        )

    def tissue(self) -> TissueParams:
        """What tissue detection needs."""
        return TissueParams(
            tissue_mpp=self.tissue_mpp,
            median_um=self.median_um,
            closing_um=self.closing_um,
            min_tissue_area_um2=self.min_tissue_area_um2,
            max_hole_area_um2=self.max_hole_area_um2,
            min_saturation=self.min_saturation,
        )
