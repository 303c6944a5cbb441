"""`hnm tile`: tissue detection and the patch grid of one slide -> tiles HDF5 + QC PNG.

With --on-error skip a slide that cannot be opened or read (or has no usable resolution) does not
fail the job: its tiles file is written with 0 patches and failed=True plus the reason, so a cohort
run goes on and every later stage excludes the slide (and `hnm failures` lists it). With the default
--on-error fail the job exits 2 with the message and writes nothing, so a rerun retries it.
Tissue-detection sizes are physical (um, um^2); see hnm.tiling.tissue.TissueParams for why the defaults.
"""

from __future__ import annotations

import argparse
import logging
import time

from hnm.tiling.grid import GridParams
from hnm.tiling.tissue import TissueParams

log = logging.getLogger("hnm.tile")

_GRID = GridParams()
_TISSUE = TissueParams()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--slide", required=True, help="slide file (anything openslide opens)")
    parser.add_argument("--slide-id", required=True, help="id used in messages and file attributes")
    parser.add_argument("--out", required=True, help="tiles HDF5 to write (results/tiles/ID.h5)")
    parser.add_argument("--qc", required=True, help="QC PNG to write (results/qc/ID.png)")
    parser.add_argument(
        "--mpp",
        type=float,
        default=None,
        help="level-0 um/px to use instead of the slide's metadata (the sheet's mpp column)",
    )
    group = parser.add_argument_group("patch grid")
    group.add_argument(
        "--patch-size",
        type=int,
        default=_GRID.patch_size,
        help="patch side in px at --target-mpp, the encoder's input (default %(default)s)",
    )
    group.add_argument(
        "--target-mpp",
        type=float,
        default=_GRID.target_mpp,
        help="um/px of the patches; 1.0 = 10x, 2.0 = 5x (default %(default)s)",
    )
    group.add_argument(
        "--min-tissue-fraction",
        type=float,
        default=_GRID.min_tissue_fraction,
        help="keep patches with at least this tissue fraction (default %(default)s)",
    )
    group.add_argument(
        "--overlap",
        type=float,
        default=_GRID.overlap,
        help="fraction of a patch that neighbours share, in [0, 1) (default %(default)s)",
    )
    group = parser.add_argument_group("tissue detection (physical sizes)")
    group.add_argument(
        "--tissue-mpp",
        type=float,
        default=_TISSUE.tissue_mpp,
        help="um/px of the tissue mask (default %(default)s)",
    )
    group.add_argument(
        "--median-um",
        type=float,
        default=_TISSUE.median_um,
        help="median-blur kernel width in um (default %(default)s)",
    )
    group.add_argument(
        "--closing-um",
        type=float,
        default=_TISSUE.closing_um,
        help="closing disc radius in um (default %(default)s)",
    )
    group.add_argument(
        "--min-tissue-area-um2",
        type=float,
        default=_TISSUE.min_tissue_area_um2,
        help="drop tissue pieces smaller than this, um^2 (default %(default)s)",
    )
    group.add_argument(
        "--max-hole-area-um2",
        type=float,
        default=_TISSUE.max_hole_area_um2,
        help="fill holes in tissue up to this size, um^2 (default %(default)s)",
    )
    group.add_argument(
        "--min-saturation",
        type=float,
        default=_TISSUE.min_saturation,
        help="saturation floor under Otsu's threshold, 0-255 (default %(default)s)",
    )
    parser.add_argument(
        "--on-error",
        "--on-slide-error",
        dest="on_error",
        choices=("fail", "skip"),
        default="fail",
        help="a slide that cannot be read: fail the job (exit 2), or write a failed-marked tiles "
        "file and QC image and exit 0 (default %(default)s)",
    )


def run(args: argparse.Namespace) -> int:
    from hnm.tiling import qc
    from hnm.core.errors import SlideError
    from hnm.tiling.grid import failed_attrs, tile_slide, write_tiles_file

    grid = GridParams(
        patch_size=args.patch_size,
        target_mpp=args.target_mpp,
        overlap=args.overlap,
        min_tissue_fraction=args.min_tissue_fraction,
    )
    tissue_params = TissueParams(
        tissue_mpp=args.tissue_mpp,
        median_um=args.median_um,
        closing_um=args.closing_um,
        min_tissue_area_um2=args.min_tissue_area_um2,
        max_hole_area_um2=args.max_hole_area_um2,
        min_saturation=args.min_saturation,
    )
    # libvips reports each decoding step at INFO and a corrupt tile as a WARNING before we fall
    # back to openslide, which then gives the real verdict; keep job logs to what matters.
    logging.getLogger("pyvips").setLevel(logging.ERROR)
    # Bad settings are the user's, not the slide's: they fail even with --on-error skip.
    grid.validate()
    tissue_params.validate()

    try:
        result = tile_slide(args.slide, args.slide_id, grid, tissue_params, args.mpp)
    except SlideError as error:
        if args.on_error == "fail":
            raise
        # The reason alone: the hint (often "set on_slide_error: skip") is moot for a skipped slide.
        reason = error.problem
        log.warning("skipping slide '%s' (%s) (--on-error skip): %s", args.slide_id, args.slide,
                    reason)
        attrs = failed_attrs(args.slide_id, str(args.slide), reason, grid, tissue_params)
        qc.write_png(args.qc, qc.render_failed(args.slide_id, str(args.slide), reason))
        write_tiles_file(args.out, [], attrs, tissue_fraction=[])
        return 0

    try:
        started = time.perf_counter()
        rgb, downsample = qc.thumbnail(
            result.osr, str(args.slide), args.slide_id, result.tissue, result.dimensions
        )
        attrs = result.attrs
        legend = [
            f"{args.slide_id}: {attrs['n_patches']} patches of {grid.patch_size} px at "
            f"{grid.target_mpp:g} um/px (level-0 side {attrs['step_level0']} px; read "
            f"{attrs['read_size']} px at level {attrs['level']})",
            f"slide mpp {attrs['mpp']:.4g} um/px ({attrs['mpp_source']}); tissue "
            f"{100 * attrs['tissue_area_fraction']:.1f}% of the slide, mask at "
            f"{attrs['tissue_mask_mpp']:.2f} um/px, saturation > {attrs['tissue_threshold']:.0f}",
            f"green: tissue contour; blue: kept patches (tissue >= "
            f"{100 * grid.min_tissue_fraction:.0f}%, {attrs['n_grid']} grid cells)",
        ]
        image = qc.render_qc(
            rgb,
            downsample,
            result.tissue.mask,
            result.tissue.downsample,
            result.coords,
            attrs["step_level0"],
            legend,
        )
        attrs["timings"]["qc_s"] = time.perf_counter() - started
        started = time.perf_counter()
        qc.write_png(args.qc, image)
        write_tiles_file(args.out, result.coords, attrs, result.tissue_fraction)
        log.info(
            "%s: wrote %s (%.3f s) and %s",
            args.slide_id,
            args.out,
            time.perf_counter() - started,
            args.qc,
        )
    finally:
        result.osr.close()
    return 0
