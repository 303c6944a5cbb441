"""`hnm init-encoder`: write the round-0 encoder file from local weights, or from a seed."""

from __future__ import annotations

import argparse
import json
import logging

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--arch",
        default="resnet18",
        help="resnet18 | resnet50 | resnet_mini | torchvision:<name> | timm:<name>",
    )
    parser.add_argument(
        "--norm",
        default="batch",
        choices=["batch", "instance"],
        help="normalisation layers of our ResNets (DSMIL/ItS2CLR weights: instance)",
    )
    parser.add_argument(
        "--arch-kwargs", default="{}", help="JSON of extra model options (torchvision/timm archs)"
    )
    parser.add_argument(
        "--weights",
        default="",
        help="local weights file; empty = random init with --seed (said in the log)",
    )
    parser.add_argument(
        "--load-head",
        default="auto",
        choices=["auto", "never", "require"],
        help="load the file's SimCLR projection head: if present and it fits / never / must",
    )
    parser.add_argument("--proj-dim", type=int, default=256, help="projection head output size")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of every randomly initialised weight"
    )
    parser.add_argument(
        "--out", required=True, help="encoder file to write (results/r0/encoder.pt)"
    )


def run(args: argparse.Namespace) -> int:
    from hnm.encoders import build_encoder, load_weights, save_encoder_file, weights_digest
    from hnm.core.errors import ConfigError

    try:
        kwargs = json.loads(args.arch_kwargs)
    except json.JSONDecodeError as error:
        raise ConfigError(f"--arch-kwargs is not JSON: {error}") from error
    if not args.arch.startswith(("torchvision:", "timm:")):
        kwargs = {"norm": args.norm, **kwargs}
    model = build_encoder(args.arch, kwargs, seed=args.seed, proj_dim=args.proj_dim)
    if args.weights:
        report = load_weights(args.weights, model, load_head=args.load_head)
        log.info("loaded weights %s", report.summary())
        source, sha = report.path, report.sha256
        if not report.head_loaded:
            log.info("projection head: random init with seed %d", args.seed)
    else:
        log.info(
            "no weights given: %s is RANDOMLY INITIALISED with seed %d (backbone and head); "
            "features will not be pretrained",
            args.arch,
            args.seed,
        )
        source, sha = f"random:{args.seed}", ""
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
        args.arch,
        model.feature_dim,
        weights_digest(model.backbone)[:12],
    )
    return 0
