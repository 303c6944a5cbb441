"""`hnm init-encoder`: write the round-0 encoder file from local weights, or from a seed."""

from __future__ import annotations

import argparse
import logging

from hnm.core.cliflags import add_job_arguments
from hnm.encoders.settings import EncoderSettings

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_job_arguments(parser, "seed")
    parser.add_argument(
        "--out", required=True, help="encoder file to write (results/r0/encoder.pt)"
    )
    EncoderSettings.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from hnm.encoders import build_encoder, load_weights, save_encoder_file, weights_digest
    from hnm.encoders.inputs import resolve_input

    settings = EncoderSettings.from_args(args)
    if settings.preset:
        return _init_preset(args, settings)
    kwargs = dict(settings.arch_kwargs)
    if not settings.arch.startswith(("torchvision:", "timm:")):
        kwargs = {"norm": settings.norm, **kwargs}
    model = build_encoder(settings.arch, kwargs, seed=args.seed, proj_dim=settings.proj_dim)
    layout = None
    if settings.weights:
        report = load_weights(settings.weights, model, load_head=settings.load_head)
        log.info("loaded weights %s", report.summary())
        source, sha, layout = report.path, report.sha256, report.layout
        if not report.head_loaded:
            log.info("projection head: random init with seed %d", args.seed)
    else:
        log.info(
            "no weights given: %s is RANDOMLY INITIALISED with seed %d (backbone and head); "
            "features will not be pretrained",
            settings.arch,
            args.seed,
        )
        source, sha = f"random:{args.seed}", ""
    model.spec = resolve_input(model.spec, layout, settings.channel_order, settings.normalize)
    log.info(
        "input: %s, mean %s, std %s",
        model.spec.channel_order.upper(),
        model.spec.mean,
        model.spec.std,
    )
    save_encoder_file(
        args.out,
        model,
        source=source,
        source_sha256=sha,
        epoch=0,
        round=0,
        extra={"seed": args.seed},
    )
    log.info(
        "wrote %s (%s, %d-d features, backbone sha256 %s)",
        args.out,
        settings.arch,
        model.feature_dim,
        weights_digest(model.backbone)[:12],
    )
    return 0


def _init_preset(args: argparse.Namespace, settings: EncoderSettings) -> int:
    """Round 0's encoder from a foundation-model preset: its published weights, named (path and
    sha256) in the encoder file rather than copied, and its own input convention."""
    from hnm.encoders import save_encoder_file
    from hnm.encoders.foundation import build_preset_encoder
    from hnm.encoders.inputs import resolve_input

    model = build_preset_encoder(
        settings.preset,
        settings.weights,
        args.seed,
        settings.proj_dim,
        allow_other_mpp=settings.allow_other_mpp,
    )
    if settings.channel_order != "auto" or settings.normalize != "auto":
        model.spec = resolve_input(model.spec, None, settings.channel_order, settings.normalize)
    base = model.base
    log.info(
        "encoder.preset %s: %d-d features, input %s %d px, mean %s, std %s; weights %s",
        settings.preset,
        model.feature_dim,
        model.spec.channel_order.upper(),
        model.spec.patch_size,
        model.spec.mean,
        model.spec.std,
        f"{base.path} (sha256 {base.sha256[:12]}, named in the encoder file, not copied)"
        if base
        else f"random from seed {args.seed}",
    )
    save_encoder_file(
        args.out,
        model,
        source=base.path if base else f"random:{args.seed}",
        source_sha256=base.sha256 if base else "",
        epoch=0,
        round=0,
        extra={"seed": args.seed},
    )
    log.info("wrote %s", args.out)
    return 0
