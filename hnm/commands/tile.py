"""`hnm tile`: tissue detection and the patch grid of one slide -> tiles HDF5 + QC PNG.

With --on-slide-error skip a slide that cannot be opened or read (or has no usable resolution) does
not fail the job: its tiles file is written with 0 patches and failed=True plus the reason, so a
cohort run goes on and every later stage excludes the slide (and `hnm failures` lists it). With the
default fail the job exits 2 with the message and writes nothing, so a rerun retries it.
The tiling flags, their defaults and why are declared once in hnm.tiling.settings.TilingSettings.
"""

from __future__ import annotations

import argparse
import logging
import time

from hnm.tiling.settings import TilingSettings

log = logging.getLogger("hnm.tile")


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
    TilingSettings.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from hnm.core.errors import SlideError
    from hnm.tiling import qc
    from hnm.tiling.grid import failed_attrs, tile_slide, write_tiles_file

    # Bad settings are the user's, not the slide's: they fail even with --on-slide-error skip.
    settings = TilingSettings.from_args(args)
    grid, tissue_params = settings.grid(), settings.tissue()
    # libvips reports each decoding step at INFO and a corrupt tile as a WARNING before we fall
    # back to openslide, which then gives the real verdict; keep job logs to what matters.
    logging.getLogger("pyvips").setLevel(logging.ERROR)

    try:
        result = tile_slide(args.slide, args.slide_id, grid, tissue_params, args.mpp)
    except SlideError as error:
        if settings.on_slide_error == "fail":
            raise
        # The reason alone: the hint (often "set on_slide_error: skip") is moot for a skipped slide.
        reason = error.problem
        log.warning(
            "skipping slide '%s' (%s) (on_slide_error skip): %s", args.slide_id, args.slide, reason
        )
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
