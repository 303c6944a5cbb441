"""Feature-extraction benchmark: is the stage as fast as its encoder, and is its memory bounded?

Prints in one run (one process, so the numbers share the machine's load):
1. per model x precision: encoder-only img/s (random tensors already in memory, same model, batch,
   dtype and memory format), the stage's end-to-end img/s on a slide (`extract_slide`, CPU path),
   and their ratio (target >= 0.85 on the CPU). Encoder and stage runs alternate and medians are
   compared, because shared machines drift; a CPU-time ratio is printed beside it.
2. on CUDA: nvjpeg tile-decode rate, and the stage end to end on the GPU-decode path and on the
   CPU path (reader processes), on a synthetic JPEG slide with tissue-like tiles everywhere.
3. peak host RSS (this process + reader workers, sampled with psutil) while extracting a synthetic
   slide with >= 1,000,000 patch positions (16 px patches at level 0 of a 16384 px square slide)
   with resnet_mini; --max-patches bounds the CPU time (the report says how many were run).

Usage:
  python bench/bench_extract.py                       # CPU: resnet18 + resnet_mini, fp32 + bf16, batch 64
  python bench/bench_extract.py --gpu-only --json $OUT/bench_extract.json   # the GPU checks
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hnm.encoders import build_encoder, load_encoder_file, save_encoder_file  # noqa: E402
from hnm.extract.settings import ExtractSettings
from hnm.extract.sources import gpu_decoder, usable_cores  # noqa: E402
from hnm.extract.stage import extract_slide, precision_context  # noqa: E402
from hnm.io.h5io import write_tiles  # noqa: E402


def say(*parts: object) -> None:
    print(*parts, flush=True)


# ---- inputs ----------------------------------------------------------------------------------------


def synthetic_slide(path: Path, side: int, kind: str = "synth") -> Path:
    """A pyramidal JPEG TIFF: hnm.demo.synth's demo tissue, or libvips noise ("noise").

    The demo slide is mostly glass (median tile 5.5 KiB), cheap to decode; the noise slide has
    tissue-like tiles everywhere (~30 KiB at Q90, as in docs/performance.md's ceilings), which is what
    extraction reads, since tiling keeps tissue only. Rates are measured on the noise slide.
    """
    if path.exists():
        return path
    t = time.perf_counter()
    how = kind
    if kind == "synth":
        try:
            from hnm.demo.synth import write_synthetic_slide

            write_synthetic_slide(
                path, width=side, height=side, mpp=0.5, label=0, seed=0, workers=usable_cores()
            )
            how = "hnm.demo.synth"
        except ImportError:
            kind = "noise"
    if kind == "noise":
        import pyvips

        coarse = pyvips.Image.gaussnoise(side // 16, side // 16, sigma=45, mean=150)
        coarse = coarse.resize(16, kernel="linear")
        fine = pyvips.Image.gaussnoise(side, side, sigma=5, mean=0).gaussblur(0.6)
        g = coarse + fine
        rgb = (g * 0.95 + 20).bandjoin([g * 0.6 + 30, g * 0.85 + 40]).cast("uchar")
        rgb.copy(interpretation="srgb").tiffsave(
            str(path),
            tile=True,
            tile_width=256,
            tile_height=256,
            pyramid=True,
            compression="jpeg",
            Q=90,
            bigtiff=True,
            xres=2000.0,
            yres=2000.0,
            resunit="cm",
        )
        how = "libvips noise"
    say(f"  made {side}x{side} synthetic slide ({how}) in {time.perf_counter() - t:.0f} s: {path}")
    return path


def grid(width: int, height: int, patch: int, count: int) -> np.ndarray:
    """`count` level-0 positions: the non-overlapping grid in row order, repeated if too short.

    No overlap, so reads and tile decodes cost what they cost on a real tiling; a repeat (reported)
    re-reads patches that may still be in openslide's tile cache, which flatters the reader.
    """
    xs = np.arange(0, width - patch + 1, patch)
    ys = np.arange(0, height - patch + 1, patch)
    coords = np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2)
    if count > len(coords):
        say(
            f"  note: {count} patches asked, {len(coords)} positions on the slide: the grid repeats"
        )
    reps = math.ceil(count / len(coords))
    return np.tile(coords, (reps, 1))[:count]


def tiles_file(path: Path, slide: Path, coords: np.ndarray, patch: int, mpp: float) -> Path:
    write_tiles(
        path,
        coords,
        dict(
            slide_id=slide.stem,
            slide_path=str(slide),
            patch_size=patch,
            target_mpp=mpp,
            mpp=mpp,
            mpp_source="metadata",
            level=0,
            level_downsample=1.0,
            read_size=patch,
            step_level0=patch,
            failed=False,
            error="",
        ),
    )
    return path


def slide_size(slide: Path) -> tuple[tuple[int, int], float]:
    import openslide

    osr = openslide.OpenSlide(str(slide))
    return osr.dimensions, float(osr.properties.get(openslide.PROPERTY_NAME_MPP_X, 0.5))


# ---- measurements ----------------------------------------------------------------------------------


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (DataLoader workers are joined per run)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def encoder_rate(
    encoder: Path,
    device: torch.device,
    precision: str,
    batch: int,
    patch: int,
    channels_last: bool,
    seconds: float,
) -> tuple[float, float]:
    """(img/s, CPU ms per image) of the backbone alone on a random batch already in memory."""
    model, _ = load_encoder_file(encoder, device)
    backbone = model.backbone
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    if channels_last:
        backbone = backbone.to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, patch, patch, device=device).contiguous(memory_format=fmt)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    with torch.inference_mode(), precision_context(device, precision):
        backbone(x)
        sync()
        n, t, c = 0, time.perf_counter(), cpu_seconds()
        while time.perf_counter() - t < seconds or n < 2 * batch:
            backbone(x).float()
            n += batch
        sync()
        return n / (time.perf_counter() - t), (cpu_seconds() - c) / n * 1000


def stage_rate(
    slide: Path, tiles: Path, encoder: Path, out: Path, settings: ExtractSettings
) -> tuple[float, str, float]:
    """(img/s of the stage's loop, decode path, CPU ms per image including reader workers)."""
    c = cpu_seconds()
    result = extract_slide(str(slide), slide.stem, str(tiles), str(encoder), 0, str(out), settings)
    cpu_ms = (cpu_seconds() - c) / max(1, result.rows) * 1000
    out.unlink(missing_ok=True)
    return result.throughput, result.decode_path, cpu_ms


class PeakRss:
    """Peak memory of this process and its reader workers, sampled every 50 ms.

    RSS summed over processes counts pages that forked workers share with the parent once per
    process; PSS (proportional set size) splits shared pages between them, so its sum is the
    honest total. Both are reported.
    """

    def __init__(self) -> None:
        import psutil

        self.process = psutil.Process()
        self.peak_total = self.peak_main = self.peak_pss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                processes = [self.process, *self.process.children(recursive=True)]
                rss = [p.memory_info().rss for p in processes]
                pss = sum(getattr(p.memory_full_info(), "pss", 0) for p in processes)
            except psutil.Error:
                continue
            self.peak_main = max(self.peak_main, rss[0])
            self.peak_total = max(self.peak_total, sum(rss))
            self.peak_pss = max(self.peak_pss, pss)
            time.sleep(0.05)

    def __enter__(self) -> "PeakRss":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# ---- parts -----------------------------------------------------------------------------------------


def part_rates(args: argparse.Namespace, work: Path, device: torch.device, results: dict) -> None:
    """Encoder alone and the stage, alternated (enc, stage, enc, stage, enc): medians are compared,
    so a shared machine's drifting load hits both sides alike. The CPU-time ratio (encoder CPU ms
    per image / stage CPU ms per image, reader workers included) is what the ratio would be on an
    otherwise idle machine whose cores the stage keeps busy."""
    slide = (
        Path(args.slide) if args.slide else synthetic_slide(work / "noise_8192.tif", 8192, "noise")
    )
    (width, height), mpp = slide_size(slide)
    say(
        f"\n== encoder-only vs stage end to end, {device}, slide {slide.name} ({width}x{height}), "
        f"{args.patch_size} px patches, batch {args.batch_size}, {args.workers} reader workers, "
        f"{torch.get_num_threads()} torch threads, {args.repeats} alternations"
    )
    for arch in args.archs.split(","):
        encoder = work / f"{arch}.pt"
        save_encoder_file(encoder, build_encoder(arch, seed=0), source="random:0")
        for precision in args.precisions.split(","):
            settings = ExtractSettings(
                batch_size=args.batch_size,
                workers=args.workers,
                device=str(device),
                precision=precision,
                decode=args.decode,
                channels_last=args.channels_last,
            )
            enc_args = (device, precision, args.batch_size, args.patch_size, args.channels_last)
            enc = [encoder_rate(encoder, *enc_args, args.seconds / 2)]
            count = max(4 * args.batch_size, int(enc[0][0] * args.seconds))
            coords = grid(width, height, args.patch_size, count)
            tiles = tiles_file(work / f"tiles_{count}.h5", slide, coords, args.patch_size, mpp)
            stage = []
            for _ in range(args.repeats):
                stage.append(stage_rate(slide, tiles, encoder, work / "features.h5", settings))
                enc.append(encoder_rate(encoder, *enc_args, args.seconds / 2))
            enc_rate = float(np.median([e[0] for e in enc]))
            enc_cpu = float(np.median([e[1] for e in enc]))
            stage_rate_ = float(np.median([st[0] for st in stage]))
            stage_cpu = float(np.median([st[2] for st in stage]))
            key = f"{arch}/{precision}"
            results.setdefault("rates", {})[key] = {
                "encoder_img_s": round(enc_rate, 1),
                "encoder_runs": [round(e[0], 1) for e in enc],
                "stage_img_s": round(stage_rate_, 1),
                "stage_runs": [round(st[0], 1) for st in stage],
                "ratio": round(stage_rate_ / enc_rate, 3),
                "encoder_cpu_ms_per_img": round(enc_cpu, 2),
                "stage_cpu_ms_per_img": round(stage_cpu, 2),
                "cpu_time_ratio": round(enc_cpu / stage_cpu, 3),
                "patches_per_run": count,
                "path": stage[0][1],
            }
            r = results["rates"][key]
            say(
                f"  {key:18s} encoder {enc_rate:7.1f} img/s {r['encoder_runs']}  stage {stage_rate_:7.1f} "
                f"img/s {r['stage_runs']} ({count} patches, {r['path']})  ratio {r['ratio']:.3f}  "
                f"CPU ms/img {enc_cpu:.2f} vs {stage_cpu:.2f}: CPU-time ratio {r['cpu_time_ratio']:.3f}"
            )


def part_gpu(args: argparse.Namespace, work: Path, results: dict) -> None:
    from hnm.extract import gpu_decode as gd
    from hnm.io import jpeg_tiles as jt

    device = torch.device("cuda")
    ok, why = gd.nvjpeg_available()
    say(f"\n== GPU: {torch.cuda.get_device_name(0)}; nvjpeg available: {ok} {why}")
    slide = synthetic_slide(work / f"noise_{args.gpu_side}.tif", args.gpu_side, "noise")
    (width, height), mpp = slide_size(slide)
    gpu: dict = {"gpu": torch.cuda.get_device_name(0), "slide": f"{width}x{height}"}
    results["gpu"] = gpu
    if ok:
        level = jt.JpegTiledLevel.inspect(str(slide), (width, height))
        reader = jt.TileBytes(level)
        n_tiles = min(level.tiles_across * level.tiles_down, 8192)
        t = time.perf_counter()
        streams = [s for s in (reader.read(i) for i in range(n_tiles)) if s is not None]
        gpu["raw_read_tiles_s"] = round(len(streams) / (time.perf_counter() - t))
        decode, why_not = gpu_decoder(level, slide.stem, device)
        if decode is None:
            say(f"  no GPU decoder agrees with Pillow on this slide: {why_not}")
            decode = gd.make_nvjpeg_decoder(device)
        agrees, difference = gd.check_decoder(decode, level)
        gpu["nvjpeg_vs_pillow_mean_abs"] = round(difference, 3)
        decode(streams[:256], level)
        torch.cuda.synchronize()
        t, n = time.perf_counter(), 0
        for i in range(0, len(streams) - 255, 256):
            decode(streams[i : i + 256], level)
            n += 256
        torch.cuda.synchronize()
        gpu["nvjpeg_decode_tiles_s_b256"] = round(n / (time.perf_counter() - t))
        say(
            f"  raw tile bytes {gpu['raw_read_tiles_s']:,} tiles/s; nvjpeg decode (batch 256) "
            f"{gpu['nvjpeg_decode_tiles_s_b256']:,} tiles/s; vs Pillow mean |diff| {difference:.2f} "
            f"({'agrees' if agrees else 'DISAGREES'})"
        )
    for arch in args.gpu_archs.split(","):
        encoder = work / f"{arch}.pt"
        save_encoder_file(encoder, build_encoder(arch, seed=0), source="random:0")
        enc = encoder_rate(encoder, device, "bf16", args.gpu_batch_size, 224, True, 5)[0]
        batch = args.gpu_batch_size
        count = max(8, int(min(enc, 20000) * args.gpu_seconds) // batch) * batch  # whole batches
        tiles = tiles_file(
            work / f"gtiles_{count}.h5", slide, grid(width, height, 224, count), 224, mpp
        )
        warm = tiles_file(
            work / "gtiles_warm.h5", slide, grid(width, height, 224, 4 * batch), 224, mpp
        )
        row = {"encoder_img_s": round(enc), "patches": count}
        for decode_choice, workers in (("gpu", args.gpu_readers), ("cpu", usable_cores())):
            if decode_choice == "gpu" and not ok:
                continue
            settings = ExtractSettings(
                batch_size=batch,
                workers=workers,
                device="cuda",
                precision="bf16",
                decode=decode_choice,
                channels_last=True,
                compile=args.compile,
            )
            # A short run first: cuDNN autotuning and (with --compile) compilation are paid once
            # per process, not per slide of a cohort, so they stay out of the measured run.
            stage_rate(slide, warm, encoder, work / "gfeatures.h5", settings)
            rate, path, _ = stage_rate(slide, tiles, encoder, work / "gfeatures.h5", settings)
            row[f"stage_{decode_choice}_img_s"] = round(rate)
            row[f"stage_{decode_choice}_path"] = path
        gpu[arch] = row
        decode_rate = gpu.get("nvjpeg_decode_tiles_s_b256", enc)
        target = 0.8 * min(enc, decode_rate)
        row["target_img_s"] = round(target)
        say(
            f"  {arch}: encoder {enc:,.0f} img/s; stage {row.get('stage_gpu_path')} "
            f"{row.get('stage_gpu_img_s', 0):,} img/s; stage {row.get('stage_cpu_path')} with "
            f"{usable_cores()} reader processes {row.get('stage_cpu_img_s', 0):,} img/s; "
            f"{count} patches; target 0.8 x min(encoder, decode) = {target:,.0f}"
        )


def part_memory(args: argparse.Namespace, work: Path, device: torch.device, results: dict) -> None:
    import psutil

    side, patch = args.memory_side, args.memory_patch
    slide = synthetic_slide(work / f"synthetic_{side}.tif", side)
    xs = np.arange(0, side - patch + 1, patch)
    coords = np.stack(np.meshgrid(xs, xs), -1).reshape(-1, 2)
    tiles = tiles_file(work / "million.h5", slide, coords, patch, 0.5)
    encoder = work / "resnet_mini.pt"
    save_encoder_file(encoder, build_encoder("resnet_mini", seed=0), source="random:0")
    run = min(args.max_patches or len(coords), len(coords))
    settings = ExtractSettings(
        batch_size=args.memory_batch_size,
        workers=args.workers,
        device=str(device),
        decode="cpu",
        max_patches=run if run < len(coords) else 0,
        channels_last=True,
    )
    base = psutil.Process().memory_info().rss
    say(
        f"\n== memory: {len(coords):,} patch positions ({patch} px, {side}x{side} slide), extracting "
        f"{run:,} of them with resnet_mini, batch {args.memory_batch_size}, {args.workers} workers"
    )
    with PeakRss() as rss:
        t = time.perf_counter()
        result = extract_slide(
            str(slide),
            slide.stem,
            str(tiles),
            str(encoder),
            0,
            str(work / "million_features.h5"),
            settings,
        )
        seconds = time.perf_counter() - t
    (work / "million_features.h5").unlink(missing_ok=True)
    results["memory"] = {
        "positions": len(coords),
        "extracted": result.rows,
        "seconds": round(seconds, 1),
        "img_s": round(result.throughput, 1),
        "rss_before_mib": round(base / 2**20),
        "peak_rss_main_mib": round(rss.peak_main / 2**20),
        "peak_rss_total_mib": round(rss.peak_total / 2**20),
        "peak_pss_total_mib": round(rss.peak_pss / 2**20),
        "path": result.decode_path,
    }
    m = results["memory"]
    say(
        f"  extracted {result.rows:,} patches in {seconds:.0f} s ({result.throughput:.0f} img/s); RSS before "
        f"{m['rss_before_mib']} MiB, peak main {m['peak_rss_main_mib']} MiB, peak incl. workers "
        f"{m['peak_rss_total_mib']} MiB (RSS sum) / {m['peak_pss_total_mib']} MiB (PSS sum); target < 2048 MiB; "
        f"path {result.decode_path}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", default="resnet18,resnet_mini")
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--patch-size", type=int, default=224)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument(
        "--seconds", type=float, default=12.0, help="about how long each end-to-end run lasts"
    )
    ap.add_argument("--repeats", type=int, default=2, help="stage runs per configuration")
    ap.add_argument(
        "--decode", default="cpu", help="decode setting of the rate part: cpu or openslide"
    )
    ap.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument(
        "--slide",
        default="",
        help="slide for the rate part (default: an 8192 px libvips-noise JPEG slide, tissue-like "
        "tiles everywhere; the real CMU-1 crop has only 117 non-overlapping 224 px patches)",
    )
    ap.add_argument("--device", default="cpu", help="device of parts 1 and 3")
    ap.add_argument("--memory-side", type=int, default=16384)
    ap.add_argument("--memory-patch", type=int, default=16)
    ap.add_argument("--memory-batch-size", type=int, default=1024)
    ap.add_argument("--max-patches", type=int, default=100_000, help="0 = all positions")
    ap.add_argument("--skip-rates", action="store_true")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument(
        "--gpu-only", action="store_true", help="only part 2 (and quick CPU-free checks)"
    )
    ap.add_argument("--gpu-archs", default="resnet18,resnet50")
    ap.add_argument("--gpu-batch-size", type=int, default=512)
    ap.add_argument("--gpu-seconds", type=float, default=4.0)
    ap.add_argument("--gpu-side", type=int, default=16384)
    ap.add_argument(
        "--gpu-readers", type=int, default=4, help="byte-reader threads of the GPU path"
    )
    ap.add_argument("--compile", action="store_true", help="torch.compile the encoder on the GPU")
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "hnm_bench_extract"))
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    results: dict = {
        "machine": f"{usable_cores()} cores, torch {torch.__version__}",
        "cuda": torch.cuda.is_available(),
    }
    say(f"bench_extract: {results['machine']}; CUDA: {results['cuda']}")
    if not args.gpu_only and not args.skip_rates:
        part_rates(args, work, device, results)
    if torch.cuda.is_available():
        part_gpu(args, work, results)
    if not args.gpu_only and not args.skip_memory:
        part_memory(args, work, device, results)
    say("\n" + json.dumps(results, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
