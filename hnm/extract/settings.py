"""Every knob of feature extraction, declared once (hnm.core.settings): the `extraction` config
section, the flags of `hnm extract` and its schema."""

from __future__ import annotations

from dataclasses import dataclass

from hnm.core.settings import (
    FEATURE_DTYPES,
    ON_SLIDE_ERROR,
    PRECISIONS,
    StageSettings,
    setting,
)


@dataclass(frozen=True)
class ExtractSettings(StageSettings):
    """Knobs of the stage, declared once (hnm.core.settings): flags of `hnm extract`, the
    `extraction` config section and its schema. Defaults are the demo's (config/paper.yaml: batch
    512, 8 workers). `device` and `threads` belong to the job, not the config: plain fields.
    """

    section = "extract"

    batch_size: int = setting(128, "patches per encoder batch", minimum=1)
    workers: int = setting(
        1, "reader processes (cpu path) / byte-reader threads (gpu path)", minimum=0
    )
    precision: str = setting(
        "auto", "auto: bf16 autocast on CUDA, fp32 on the CPU", choices=PRECISIONS
    )
    decode: str = setting(
        "auto",
        "auto: JPEG tiles decoded on the GPU where the slide and machine allow, else on the CPU; "
        "cpu: JPEG tiles on the CPU where the level is JPEG-tiled, else openslide; openslide: "
        "always openslide",
        choices=("auto", "gpu", "cpu", "openslide"),
    )
    feature_dtype: str = setting(
        "float32",
        "how the features file stores them: float32, or float16 at half the disk (each value "
        "rounded to 11 significant bits, relative error at most 2^-11; a value beyond float16's "
        "+-65504 stops the job with an error). Every reader gets float32 back. No bfloat16: HDF5 "
        "has no such type, so it would be raw 16-bit integers that other HDF5 tools (CLAM, "
        "TRIDENT) misread, and it keeps 8 significant bits to float16's 11",
        choices=FEATURE_DTYPES,
    )
    keep_rounds: int = setting(
        0,
        "keep the features of the latest K rounds only (0: keep every round's); an older round's "
        "are removed once its MIL and probe are done, and remade only if a job that reads them "
        "must run again (docs/usage.md, 'Disk'); read by the workflow, not by `hnm extract`",
        minimum=0,
        cli=False,
    )
    slides_per_job: int = setting(
        16,
        "slides per extraction job, each paying the interpreter/torch/CUDA start-up once (1: one "
        "job per slide); read by the workflow, not by `hnm extract`",
        minimum=1,
        cli=False,
    )
    channels_last: bool = setting(
        True, "channels_last memory format (1.5-2x faster for ResNets with cuDNN and oneDNN alike)"
    )
    compile: bool = setting(False, "torch.compile the encoder (pays off on large slides on a GPU)")
    prefetch: int = setting(4, "batches read ahead per worker", minimum=1)
    on_slide_error: str = setting(
        "fail",
        "a slide whose pixels cannot be read: fail the job, or skip (write an empty features file "
        "marked failed)",
        choices=ON_SLIDE_ERROR,
    )
    max_patches: int = setting(
        0, "benchmarks/debugging only: extract just the first N patches (0: all)", minimum=0
    )
    device: str = "auto"
    threads: int = 0  # CPU intra-op threads for the encoder; 0 = every core this process may use
