"""The encoder file: results/r{round}/encoder.pt.

One file carries everything a later stage needs to use or continue an encoder: architecture and
input convention, backbone and head weights, provenance, and the fine-tuning state (optimizer,
scheduler, global epoch) that docs/method.md says carries over between rounds. Loaded with
weights_only=True, so it holds only tensors and plain containers, never pickled code.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hnm.core.atomic import atomic_path
from hnm.core.errors import CheckpointError
from hnm.encoders.registry import EncoderSpec, build_backbone
from hnm.encoders.simclr import SimCLRModel
from hnm.encoders.weights import read_checkpoint

FORMAT_VERSION = 1
_REQUIRED = (
    "format_version",
    "arch",
    "arch_kwargs",
    "feature_dim",
    "mean",
    "std",
    "patch_size",
    "backbone",
    "head",
)


@dataclass
class EncoderFileMeta:
    path: str
    arch: str
    arch_kwargs: dict[str, Any]
    feature_dim: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    patch_size: int
    source: str
    source_sha256: str
    round: int
    epoch: int
    optimizer: dict[str, Any] | None
    scheduler: dict[str, Any] | None
    extra: dict[str, Any] = field(default_factory=dict)
    weights_sha256: str = ""
    format_version: int = FORMAT_VERSION
    channel_order: str = "rgb"  # files written before it was recorded were all fed RGB


def weights_digest(module: torch.nn.Module | dict[str, torch.Tensor]) -> str:
    """sha256 over the backbone's tensors (names, dtypes, shapes, bytes), independent of file layout.

    Feature files record it, so features can be traced to the exact weights that made them even when
    the same weights sit in differently pickled files.
    """
    state = module.state_dict() if isinstance(module, torch.nn.Module) else module
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(
            tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b""
        )
    return digest.hexdigest()


def _to_cpu(value: Any) -> Any:
    if torch.is_tensor(value):
        return value.detach().to("cpu")
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    return value


def save_encoder_file(
    path: str | os.PathLike[str],
    model: SimCLRModel,
    *,
    source: str,
    source_sha256: str = "",
    optimizer_state: dict[str, Any] | None = None,
    scheduler_state: dict[str, Any] | None = None,
    epoch: int = 0,
    round: int = 0,  # noqa: A002 - the pipeline's own word for it
    extra: dict[str, Any] | None = None,
) -> None:
    """Write the encoder file atomically (a killed job never leaves a half-written encoder.pt)."""
    spec = model.spec
    payload = {
        "format_version": FORMAT_VERSION,
        "arch": spec.arch,
        "arch_kwargs": dict(spec.arch_kwargs),
        "feature_dim": int(spec.feature_dim),
        "proj_dim": int(model.proj_dim),
        "mean": [float(v) for v in spec.mean],
        "std": [float(v) for v in spec.std],
        "channel_order": spec.channel_order,
        "patch_size": int(spec.patch_size),
        "fixed_input": bool(spec.fixed_input),
        "classifier_prefixes": list(spec.classifier_prefixes),
        "backbone": _to_cpu(model.backbone.state_dict()),
        "head": _to_cpu(model.head.state_dict()),
        "source": str(source),
        "source_sha256": str(source_sha256),
        "round": int(round),
        "epoch": int(epoch),
        "optimizer": _to_cpu(optimizer_state),
        "scheduler": _to_cpu(scheduler_state),
        "extra": dict(extra or {}),
    }
    with atomic_path(path) as temporary:
        torch.save(payload, temporary)


def _payload(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(
            f"encoder file {path} not found; make one with `python -m hnm init-encoder`"
        )
    payload = read_checkpoint(path)
    if not isinstance(payload, dict) or any(k not in payload for k in _REQUIRED):
        keys = list(payload)[:8] if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(
            f"{path} is not an hnm encoder file (found {keys}); make one with "
            "`python -m hnm init-encoder --weights <file>`"
        )
    if payload["format_version"] != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has encoder-file format {payload['format_version']}, this code reads {FORMAT_VERSION}"
        )
    return payload


def _meta(path: Path, payload: dict[str, Any], digest: str) -> EncoderFileMeta:
    return EncoderFileMeta(
        path=str(path),
        arch=payload["arch"],
        arch_kwargs=dict(payload["arch_kwargs"]),
        feature_dim=int(payload["feature_dim"]),
        mean=tuple(payload["mean"]),
        std=tuple(payload["std"]),
        patch_size=int(payload["patch_size"]),
        source=payload.get("source", ""),
        source_sha256=payload.get("source_sha256", ""),
        round=int(payload.get("round", 0)),
        epoch=int(payload.get("epoch", 0)),
        optimizer=payload.get("optimizer"),
        scheduler=payload.get("scheduler"),
        extra=dict(payload.get("extra") or {}),
        weights_sha256=digest,
        format_version=int(payload["format_version"]),
        channel_order=str(payload.get("channel_order", "rgb")),
    )


def read_encoder_meta(path: str | os.PathLike[str]) -> EncoderFileMeta:
    """Metadata only (no model built): enough to write a failed slide's empty feature file."""
    path = Path(path)
    payload = _payload(path)
    return _meta(path, payload, weights_digest(payload["backbone"]))


def load_encoder_file(
    path: str | os.PathLike[str], device: str | torch.device = "cpu"
) -> tuple[SimCLRModel, EncoderFileMeta]:
    """(model on `device`, in eval mode, and its metadata including the fine-tuning state)."""
    path = Path(path)
    payload = _payload(path)
    backbone, built = build_backbone(payload["arch"], payload["arch_kwargs"])
    spec = EncoderSpec(
        arch=built.arch,
        arch_kwargs=built.arch_kwargs,
        feature_dim=int(payload["feature_dim"]),
        mean=tuple(payload["mean"]),
        std=tuple(payload["std"]),
        channel_order=str(payload.get("channel_order", "rgb")),
        patch_size=int(payload["patch_size"]),
        fixed_input=bool(payload.get("fixed_input", built.fixed_input)),
        classifier_prefixes=tuple(payload.get("classifier_prefixes", built.classifier_prefixes)),
    )
    proj_dim = int(payload.get("proj_dim", payload["head"]["2.weight"].shape[0]))
    model = SimCLRModel(backbone, spec, proj_dim)
    try:
        model.backbone.load_state_dict(payload["backbone"], strict=True)
        model.head.load_state_dict(payload["head"], strict=True)
    except RuntimeError as error:
        raise CheckpointError(
            f"{path}: weights do not fit arch {spec.arch} {spec.arch_kwargs}: "
            f"{str(error).splitlines()[0]}"
        ) from error
    meta = _meta(path, payload, weights_digest(model.backbone))
    return model.to(device).eval(), meta
