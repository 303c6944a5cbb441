"""Every knob of SimCLR pretraining, declared once (hnm.core.settings): the `pretrain` config
section, the flags of `hnm pretrain` and its schema."""

from __future__ import annotations

from dataclasses import dataclass

from hnm.core.settings import ON_SLIDE_ERROR, PRECISIONS, StageSettings, setting


@dataclass(frozen=True)
class PretrainSettings(StageSettings):
    """Every knob of pretraining, declared once (hnm.core.settings). Defaults are the demo's: a
    few short epochs (seconds on a CPU); config/paper.yaml follows DSMIL's SimCLR setting.

    The optimizer is Adam, as in DSMIL's SimCLR code (whose weights ItS2CLR and the paper start
    from): it needs no large-batch LARS tuning, so one lr serves batches from 32 to 512.
    """

    section = "pretrain"

    epochs: int = setting(
        3,
        "SimCLR epochs before round 0 (0: no pretraining; also off when encoder.weights is set)",
        minimum=0,
    )
    batch_size: int = setting(64, "patches per step (two views each)", minimum=2)
    lr: float = setting(0.001, "Adam learning rate", above=0)
    weight_decay: float = setting(1e-6, "Adam weight decay", minimum=0)
    cosine_after: int = setting(
        1, "epoch after which the learning rate follows a cosine to 0", minimum=0
    )
    temperature: float = setting(0.5, "NT-Xent temperature (DSMIL's SimCLR: 0.5)", above=0)
    max_patches_per_epoch: int = setting(
        1024, "patches drawn afresh each epoch from the training split (0: all)", minimum=0
    )
    max_steps_per_epoch: int = setting(
        0, "cap on steps per epoch (0: no cap; for smoke tests)", minimum=0
    )
    workers: int = setting(1, "patch-reading processes", minimum=0)
    on_slide_error: str = setting(
        "fail",
        "a training slide whose pixels cannot be read: fail the job, or skip (pretrain without it; "
        "the epoch it failed in starts again from that epoch's starting weights)",
        choices=ON_SLIDE_ERROR,
    )
    precision: str = setting(
        "auto", "auto: bf16 autocast on CUDA, fp32 on the CPU", choices=PRECISIONS
    )
    seed: int = 0
