"""Every knob of the built-in synthetic demo cohort, declared once (hnm.core.settings)."""

from __future__ import annotations

from dataclasses import dataclass

from hnm.core.settings import StageSettings, setting
from hnm.io.sheet import SPLITS

CLASSES = ("tumor", "normal")
# The shape `check` enforces, for the config schema: counts for every split and class, nothing else.
_COUNTS = {
    "type": "object",
    "additionalProperties": False,
    "required": list(CLASSES),
    "properties": {name: {"type": "integer", "minimum": 0} for name in CLASSES},
}
_SLIDES_SCHEMA = {
    "additionalProperties": False,
    "required": list(SPLITS),
    "properties": {split: _COUNTS for split in SPLITS},
}


@dataclass(frozen=True)
class DemoSettings(StageSettings):
    """The cohort (`slides`, read by the workflow) and how each slide of it is drawn (`hnm synth`).

    Many small slides rather than a few large ones: MIL needs bags to localise tumor (on 8 training
    slides its patch scores barely beat chance, and rounds fine-tuned on them made features worse).
    Bounds are those the synthesiser can honour (hnm.demo.synth).
    """

    section = "demo"

    slides: dict[str, dict[str, int]] = setting(
        {
            "train": {"tumor": 16, "normal": 16},
            "val": {"tumor": 4, "normal": 4},
            "test": {"tumor": 4, "normal": 4},
        },
        "slides per split (train, val, test) and class (tumor, normal); read by the workflow",
        cli=False,
        schema=_SLIDES_SCHEMA,
    )
    cohort_seed: int = setting(
        0,
        "seed of the cohort's slides, apart from `seed` so training seeds can share one cohort",
        minimum=0,
    )
    width: int = setting(2048, "level-0 width in px", minimum=64)
    height: int = setting(2048, "level-0 height in px", minimum=64)
    mpp: float = setting(0.5, "level-0 um/px", minimum=0.05, maximum=50)
    tumor_regions: int = setting(2, "tumor regions in a positive slide", minimum=1)
    mimic_regions: int = setting(2, "tumor-like benign regions, in both classes", minimum=0)
    tumor_size_um: float = setting(
        200.0, "typical diameter of tumor and mimic regions, um", above=0
    )
    difficulty: float = setting(
        0.5, "0: mimics look very different from tumor, 1: nearly identical", minimum=0, maximum=1
    )
    tile_size: int = setting(256, "TIFF tile side in px, a multiple of 16", minimum=16)
    jpeg_quality: int = setting(90, "JPEG quality of the tiles", minimum=1, maximum=100)
    workers: int = setting(1, "threads rendering tiles; the file does not depend on it", minimum=1)

    def check(self) -> list[str]:
        problems = []
        if self.tile_size % 16:
            problems.append(f"tile_size must be a multiple of 16 (got {self.tile_size})")
        if sorted(self.slides) != sorted(SPLITS) or any(
            not isinstance(counts, dict) or sorted(counts) != sorted(CLASSES)
            for counts in self.slides.values()
        ):
            problems.append(
                f"slides must give tumor and normal counts for each of train, val and test (got "
                f"{self.slides})"
            )
        elif any(
            not isinstance(n, int) or isinstance(n, bool) or n < 0
            for counts in self.slides.values()
            for n in counts.values()
        ):
            problems.append(
                f"slides counts must be whole numbers of at least 0 (got {self.slides})"
            )
        return problems
