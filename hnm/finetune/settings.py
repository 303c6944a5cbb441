"""Every knob of fine-tuning, declared once (hnm.core.settings): the `finetune` config section,
the flags of `hnm finetune` and its schema. Torch-free, so `hnm mine`, which shares the encoder
schedule (EncoderSchedule), never imports torch."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from hnm.contrastive.lr import LR_SCHEDULES, learning_rate, stepped_learning_rate
from hnm.core.settings import ON_SLIDE_ERROR, PRECISIONS, StageSettings, setting
from hnm.encoders.presets import LORA_TARGETS

# SupCon batch means (hnm.finetune.supcon).
AVERAGES = ("anchors", "all_views")


@dataclass(frozen=True)
class EncoderSchedule(StageSettings):
    """The global epoch schedule of the encoder, shared by mining (the curriculum r(t)) and
    fine-tuning (learning rate, positive-anchor update); part of the `finetune` config section.

    A class apart from the rest of the fine-tuning settings, so that `hnm mine` takes the same
    flags, defaults and bounds (and nothing it does not use). `rounds` is the workflow's number of
    hard-negative rounds (a job-level value, not a finetune key), and `total_epochs` the one place
    where the length of the whole schedule is computed.
    """

    section = "finetune"

    epochs_per_round: int = setting(
        2, "fine-tuning epochs between pseudo-label refreshes (paper: 5)", minimum=1
    )
    warmup: int = setting(
        1,
        "global epoch from which the positive-anchor update runs and r(t) grows (paper: 5)",
        minimum=0,
    )
    refresh_offset: int = setting(
        0,
        "epochs round 0 trains beyond epochs_per_round, taken from the last round (the authors' "
        "trainer refreshes the pseudo-labels after epochs 6, 11, ..., 96 of 100: 1)",
        minimum=0,
    )
    rounds: int = 2

    def check(self) -> list[str]:
        problems = []
        if self.rounds < 0:
            problems.append(
                f"rounds must be at least 0 (got {self.rounds}); set the workflow's rounds"
            )
        if self.refresh_offset >= self.epochs_per_round:
            problems.append(
                f"refresh_offset ({self.refresh_offset}) must be smaller than epochs_per_round "
                f"({self.epochs_per_round}): the last round would train no epoch"
            )
        return problems

    @property
    def total_epochs(self) -> int:
        """Encoder epochs of the whole schedule: the cosine and the curriculum end there. With no
        rounds (plain DSMIL) one round's length keeps the schedule well defined."""
        return self.epochs_per_round * max(self.rounds, 1)

    def round_start(self, round_index: int) -> int:
        """The global epoch at which fine-tuning from round `round_index`'s encoder starts, i.e.
        how many epochs encoder_r has completed: r * epochs_per_round + refresh_offset, 0 for
        round 0 and total_epochs from the last round on (so the offset moves every refresh, and
        the first and last rounds absorb it)."""
        if round_index <= 0:
            return 0
        if round_index >= max(self.rounds, 1):
            return self.total_epochs
        return round_index * self.epochs_per_round + self.refresh_offset

    def round_epochs(self, round_index: int) -> range:
        """The global epochs that fine-tuning round_index -> round_index + 1 trains."""
        return range(self.round_start(round_index), self.round_start(round_index + 1))

    @classmethod
    def add_rounds_argument(cls, parser: argparse.ArgumentParser) -> None:
        """`--rounds`, the workflow-level count that both mining and fine-tuning need."""
        parser.add_argument(
            "--rounds",
            type=int,
            default=cls.rounds,
            help="hard-negative rounds R of the whole schedule (the workflow's rounds); with "
            "--epochs-per-round it fixes where the curriculum and the cosine end "
            "(default %(default)s)",
        )


@dataclass(frozen=True)
class FinetuneSettings(EncoderSchedule):
    """Every knob of fine-tuning, declared once (hnm.core.settings); the epoch schedule
    (epochs_per_round, warmup, rounds -> total_epochs) comes from EncoderSchedule, which mining
    shares. Defaults are the demo's (config/paper.yaml: batch 512, 5 epochs per round, warm-up 5).
    """

    section = "finetune"

    batch_size: int = setting(64, "patches per update (paper: 512)", minimum=2)
    neg_fraction: float = setting(
        0.8, "hard-negative share of the negative-anchor batch", above=0, below=1
    )
    pos_fraction_positive_mode: float = setting(
        0.05, "curriculum-positive share of the positive-anchor batch", above=0, below=1
    )
    lr: float = setting(0.01, "SGD learning rate", above=0)
    weight_decay: float = setting(1e-4, "SGD weight decay", minimum=0)
    momentum: float = setting(0.9, "SGD momentum (the authors' code: 0)", minimum=0, maximum=1)
    cosine_after: int = setting(
        10, "global epoch after which the learning rate follows a cosine to 0", minimum=0
    )
    lr_schedule: str = setting(
        "smooth",
        "smooth: after cosine_after a cosine reaching 0 at the last epoch, updated every step; "
        "stepped (the authors'): CosineAnnealingLR(T_max = all epochs) stepped once per epoch "
        "from cosine_after on, so it never reaches 0",
        choices=LR_SCHEDULES,
    )
    temperature: float = setting(0.07, "SupCon temperature", above=0)
    supcon_average: str = setting(
        "anchors",
        "SupCon batch mean: anchors (over the anchors that have a positive) or all_views (the "
        "authors': over every view of the batch, so the 5%-positive update weighs about 0.05 x)",
        choices=AVERAGES,
    )
    workers: int = setting(1, "patch-reading processes", minimum=0)
    precision: str = setting(
        "auto", "auto: bf16 autocast on CUDA, fp32 on the CPU", choices=PRECISIONS
    )
    max_steps_per_epoch: int = setting(
        0, "cap on steps per epoch (0: no cap; for smoke tests)", minimum=0
    )
    on_slide_error: str = setting(
        "fail",
        "a slide whose pixels cannot be read: fail the job, or skip (drop its patches from the "
        "round's sets and list it in results/qc/failed_slides.tsv)",
        choices=ON_SLIDE_ERROR,
    )
    adapter: str = setting(
        "none",
        "what the rounds train: none (the whole encoder, as the paper) or lora (low-rank "
        "adapters on a frozen foundation-model backbone, encoder.preset; docs/foundation.md)",
        choices=("none", "lora"),
    )
    lora_rank: int = setting(8, "rank r of each LoRA adapter", minimum=1)
    lora_alpha: float = setting(
        16.0, "LoRA scale alpha: an adapter's update is multiplied by alpha / r", above=0
    )
    lora_targets: list[str] = setting(
        ["qkv", "proj"],
        "layers of each block that get an adapter: qkv and proj (the attention projections), "
        "fc1, fc2 (the MLP)",
    )
    lora_last_blocks: int = setting(
        0, "adapters on the last N transformer blocks only (0: every block)", minimum=0
    )
    gradient_checkpointing: bool = setting(
        False,
        "recompute each transformer block's activations in the backward pass: less memory for "
        "a foundation model, at about a third more compute",
    )
    seed: int = 0

    def check(self) -> list[str]:
        problems = super().check()
        unknown = sorted(set(self.lora_targets) - set(LORA_TARGETS))
        if unknown or not self.lora_targets:
            problems.append(
                f"lora_targets {self.lora_targets} must name one or more of "
                f"{', '.join(LORA_TARGETS)}"
            )
        return problems

    def rate(self, global_epoch: int, step: int, steps: int) -> float:
        """The learning rate of one step (lr_schedule)."""
        if self.lr_schedule == "stepped":
            return stepped_learning_rate(
                global_epoch, self.lr, self.cosine_after, self.total_epochs
            )
        return learning_rate(
            global_epoch + step / steps, self.lr, self.cosine_after, self.total_epochs
        )
