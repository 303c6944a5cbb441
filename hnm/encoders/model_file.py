"""The encoder file: results/r{round}/encoder.pt.

One file carries everything a later stage needs to use or continue an encoder: architecture and
input convention, backbone and head weights, provenance, and the fine-tuning state (optimizer,
scheduler, global epoch) that docs/method.md says carries over between rounds. Loaded with
weights_only=True, so it holds only tensors and plain containers, never pickled code.

A foundation-model backbone (encoder.preset) is not copied into it: `base` names the published
weights file (absolute path, sha256, size), `backbone` stays empty while the backbone is that
file's, and `adapters` holds the LoRA adapters the rounds trained (their configuration and
tensors, megabytes). Loading reads the base file again, after checking its hash. Format 2 added
`base`, `adapters`, `preset`, `mpp` and `allow_other_mpp`; format-1 files still load.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hnm.core.atomic import atomic_path
from hnm.core.errors import CheckpointError
from hnm.encoders.base_weights import BaseWeights, load_base_backbone
from hnm.encoders.lora import LoraAdapters, LoraConfig, freeze
from hnm.encoders.registry import EncoderSpec, build_backbone
from hnm.encoders.simclr import SimCLRModel
from hnm.encoders.weights import read_checkpoint

FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)
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
    preset: str = ""  # encoder.preset the backbone was built from
    mpp: tuple[float, ...] = ()  # resolutions the preset was trained at
    allow_other_mpp: bool = False
    base: dict[str, Any] | None = None  # BaseWeights.as_dict() of the published weights file
    adapters: dict[str, Any] | None = None  # LoraConfig.as_dict() of the adapters, if any


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
        "backbone": _backbone_payload(model),
        "head": _to_cpu(model.head.state_dict()),
        "preset": spec.preset,
        "mpp": [float(m) for m in spec.mpp],
        "allow_other_mpp": bool(spec.allow_other_mpp),
        "base": model.base.as_dict() if model.base is not None else None,
        "adapters": _adapters_payload(model),
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


def _backbone_payload(model: SimCLRModel) -> dict[str, Any]:
    """The backbone's tensors, or nothing while they are exactly the named base file's."""
    if model.base is not None and not model.backbone_changed:
        return {}
    return _to_cpu(model.backbone.state_dict())


def _adapters_payload(model: SimCLRModel) -> dict[str, Any] | None:
    adapters = model.adapters
    if adapters is None:
        return None
    return {"config": adapters.config.as_dict(), "state": _to_cpu(adapters.state_dict())}


def identity_digest(payload: dict[str, Any]) -> str:
    """What feature files record as the encoder's weights_sha256: the digest of the backbone's
    tensors (as before presets), or, for a preset backbone, of the base file's sha256, any stored
    backbone and the adapters, so gigabytes are never hashed twice."""
    base, adapters = payload.get("base"), payload.get("adapters")
    if not base and not adapters:
        return weights_digest(payload["backbone"])
    digest = hashlib.sha256()
    if base:
        digest.update(f"base:{base['sha256']}|".encode())
    if payload["backbone"]:
        digest.update(f"backbone:{weights_digest(payload['backbone'])}|".encode())
    if adapters:
        config = json.dumps(adapters["config"], sort_keys=True)
        digest.update(f"adapters:{config}|{weights_digest(adapters['state'])}".encode())
    return digest.hexdigest()


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
    if payload["format_version"] not in READABLE_FORMATS:
        raise CheckpointError(
            f"{path} has encoder-file format {payload['format_version']}, this code reads "
            f"{' and '.join(map(str, READABLE_FORMATS))}"
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
        preset=str(payload.get("preset", "")),
        mpp=tuple(float(m) for m in payload.get("mpp", ())),
        allow_other_mpp=bool(payload.get("allow_other_mpp", False)),
        base=payload.get("base"),
        adapters=(payload.get("adapters") or {}).get("config"),
    )


def read_encoder_meta(path: str | os.PathLike[str]) -> EncoderFileMeta:
    """Metadata only (no model built): enough to write a failed slide's empty feature file."""
    path = Path(path)
    payload = _payload(path)
    return _meta(path, payload, identity_digest(payload))


def load_encoder_file(
    path: str | os.PathLike[str], device: str | torch.device = "cpu"
) -> tuple[SimCLRModel, EncoderFileMeta]:
    """(model on `device`, in eval mode, and its metadata including the fine-tuning state)."""
    path = Path(path)
    payload = _payload(path)
    backbone, built = _backbone(path, payload)
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
        preset=str(payload.get("preset", "")),
        mpp=tuple(float(m) for m in payload.get("mpp", ())),
        allow_other_mpp=bool(payload.get("allow_other_mpp", False)),
    )
    proj_dim = int(payload.get("proj_dim", payload["head"]["2.weight"].shape[0]))
    model = SimCLRModel(backbone, spec, proj_dim)
    if payload.get("base"):
        model.base = BaseWeights.from_dict(payload["base"])
    model.backbone_changed = bool(payload["backbone"])
    try:
        if payload["backbone"]:
            model.backbone.load_state_dict(payload["backbone"], strict=True)
        model.head.load_state_dict(payload["head"], strict=True)
        if payload.get("adapters"):
            config = LoraConfig.from_dict(payload["adapters"]["config"])
            model.adapters = LoraAdapters(model.backbone, config)
            model.adapters.load_state_dict(payload["adapters"]["state"], strict=True)
            freeze(model.backbone)
    except RuntimeError as error:
        raise CheckpointError(
            f"{path}: weights do not fit arch {spec.arch} {spec.arch_kwargs}: "
            f"{str(error).splitlines()[0]}"
        ) from error
    meta = _meta(path, payload, identity_digest(payload))
    return model.to(device).eval(), meta


def _backbone(path: Path, payload: dict[str, Any]) -> tuple[torch.nn.Module, EncoderSpec]:
    """The backbone network: the base file's weights where the file names one and stores none."""
    base = payload.get("base")
    if base and not payload["backbone"]:
        record = BaseWeights.from_dict(base)
        try:
            module, _ = load_base_backbone(
                record.path, payload["arch_kwargs"], record.preset, record.sha256
            )
        except CheckpointError as error:
            raise CheckpointError(f"encoder file {path}: {error}") from error
        return module, build_spec(payload)
    return build_backbone(payload["arch"], payload["arch_kwargs"])


def build_spec(payload: dict[str, Any]) -> EncoderSpec:
    """The spec of a ViT encoder file without building the network a second time."""
    kwargs = dict(payload["arch_kwargs"])
    return EncoderSpec(
        arch=payload["arch"],
        arch_kwargs=kwargs,
        feature_dim=int(payload["feature_dim"]),
        patch_size=int(kwargs.get("img_size", payload["patch_size"])),
        fixed_input=not kwargs.get("dynamic_img_size", False),
        classifier_prefixes=("head.",),
    )
