"""Loading encoder weights from a local file, strictly.

Pretrained pathology encoders come in several key layouts; each is recognised explicitly and mapped
onto our module names, and only keys known NOT to belong to the backbone (ImageNet classifiers,
MoCo's momentum encoder and queue, projection heads when no head is wanted) are dropped, each by
name in the log. Anything else that does not fit is an error naming the file and the first keys:
a silently half-loaded encoder would produce plausible but meaningless features.

Layouts (after unwrapping `state_dict` / `net` / `model` / `state_dict_ema` and `module.` /
`_orig_mod.` prefixes):
- plain torchvision/timm state dict: conv1.*, bn1.*, layer1..4.*, fc.* (classifier, dropped);
- ItS2CLR SimCLR (`{"net": ...}` or `{"state_dict": ...}`): resnet.* with the head in resnet.fc.0/2;
- MoCo (`{"state_dict": ...}`): encoder_q.* (head encoder_q.fc.0/2), encoder_k.* and queue dropped;
- DSMIL SimCLR: features.<i>.* (children of a torchvision ResNet by position), head l1.* / l2.*;
- ours: backbone.* / head.*, or an hnm encoder file (`backbone` and `head` state dicts).
DSMIL and ItS2CLR pretrain with parameter-free InstanceNorm; load those with arch option
norm=instance (the error says so when the normalisation parameters are missing).
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hnm.core.checkpoint import file_digest
from hnm.core.errors import CheckpointError
from hnm.encoders.safetensors_io import read_safetensors
from hnm.encoders.simclr import SimCLRModel

log = logging.getLogger(__name__)

_WRAPPERS = ("state_dict", "net", "model", "state_dict_ema", "teacher", "student")
_STRIP = ("module.", "_orig_mod.")
# torchvision ResNet children in order: DSMIL's `features` is nn.Sequential(*children[:-1]).
_SHOWN = 5


@dataclass
class WeightsReport:
    """What a load did, for the log and the encoder file's provenance."""

    path: str
    sha256: str
    layout: str
    backbone_tensors: int
    head_loaded: bool
    dropped: dict[str, list[str]] = field(default_factory=dict)

    def summary(self) -> str:
        dropped = ", ".join(f"{len(keys)} {why}" for why, keys in self.dropped.items()) or "none"
        return (
            f"{self.path} ({self.layout} layout, sha256 {self.sha256[:12]}): {self.backbone_tensors} "
            f"backbone tensors, head {'loaded' if self.head_loaded else 'not loaded (random init)'}; "
            f"dropped: {dropped}"
        )


def read_checkpoint(path: str | os.PathLike[str]) -> Any:
    """torch.load with weights_only=True; every failure becomes a CheckpointError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"weights file {path} not found; check the path (or use empty weights for random init)"
        )
    if path.suffix == ".safetensors":  # timm / Hugging Face weights (read without the package)
        return read_safetensors(path)
    try:
        # Training scripts often pickle their argparse settings beside the weights.
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated zip, foreign pickle, not a torch file at all
        raise CheckpointError(
            f"{path} cannot be read as a torch checkpoint ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}); it may be truncated, not a "
            "weights file, or need code to unpickle (only plain tensors/containers are accepted)"
        ) from error


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping) and len(obj) > 0 and all(torch.is_tensor(v) for v in obj.values())
    )


def _unwrap(obj: Any, path: Path) -> Mapping[str, torch.Tensor]:
    while not _is_state_dict(obj):
        if not isinstance(obj, Mapping):
            raise CheckpointError(
                f"{path} holds a {type(obj).__name__}, not a state dict of tensors"
            )
        inner = next((obj[k] for k in _WRAPPERS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            raise CheckpointError(
                f"{path}: no state dict found; top-level keys are {list(obj)[:8]} "
                f"(expected tensors, or one of {list(_WRAPPERS)})"
            )
        obj = inner
    return obj


def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _STRIP:
            if key.startswith(prefix):
                key, changed = key[len(prefix) :], True
    return key


def plain_state_dict(raw: Any, path: Path) -> dict[str, torch.Tensor]:
    """The state dict inside `raw` (wrappers unwrapped), with `module.`/`_orig_mod.` stripped."""
    return {_strip(k): v for k, v in _unwrap(raw, path).items()}


def split_checkpoint(
    raw: Any, path: Path, model: SimCLRModel
) -> tuple[str, dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, list[str]]]:
    """(layout, backbone tensors, head tensors, dropped keys by reason) in our module names."""
    dropped: dict[str, list[str]] = {}
    if isinstance(raw, Mapping) and "format_version" in raw and "backbone" in raw:
        return "hnm-encoder-file", dict(raw["backbone"]), dict(raw.get("head") or {}), dropped
    state = {_strip(k): v for k, v in _unwrap(raw, path).items()}
    keys = list(state)
    if any(k.startswith("encoder_q.") for k in keys):
        layout, state = (
            "moco",
            _take(state, "encoder_q.", dropped, ("encoder_k.", "queue"), "MoCo key encoder/queue"),
        )
        head_prefixes = {"fc.0.": "0.", "fc.2.": "2."}
    elif any(k.startswith("resnet.") for k in keys):
        layout, state = "its2clr-simclr", _take(state, "resnet.", dropped, (), "")
        head_prefixes = {"fc.0.": "0.", "fc.2.": "2."}
    elif any(k.startswith("backbone.") for k in keys):
        layout = "hnm"
        head = {k[len("head.") :]: v for k, v in state.items() if k.startswith("head.")}
        backbone = {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}
        _check_leftover(state, ("backbone.", "head."), path, layout)
        return layout, backbone, head, dropped
    elif any(k.startswith("features.") for k in keys) and not any(
        k.startswith("conv1.") for k in keys
    ):
        layout, state = "dsmil-simclr", _dsmil(state, model, path)
        head_prefixes = {"l1.": "0.", "l2.": "2."}
    else:
        layout = "plain"
        head_prefixes = (
            {"fc.0.": "0.", "fc.2.": "2."} if any(k.startswith("fc.0.") for k in keys) else {}
        )
    head: dict[str, torch.Tensor] = {}
    backbone: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        prefix = next((p for p in head_prefixes if key.startswith(p)), None)
        if prefix is not None:
            head[head_prefixes[prefix] + key[len(prefix) :]] = value
        elif key.startswith(model.spec.classifier_prefixes):
            dropped.setdefault("classifier (or single linear head)", []).append(key)
        else:
            backbone[key] = value
    return layout, backbone, head, dropped


def _take(
    state: dict[str, torch.Tensor],
    prefix: str,
    dropped: dict[str, list[str]],
    known_other: tuple[str, ...],
    why: str,
) -> dict[str, torch.Tensor]:
    kept = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    for key in state:
        if not key.startswith(prefix) and key.startswith(known_other):
            dropped.setdefault(why, []).append(key)
    others = [k for k in state if not k.startswith(prefix) and not k.startswith(known_other)]
    if others:
        raise CheckpointError(f"unexpected keys beside '{prefix}*': {others[:_SHOWN]}")
    return kept


def _check_leftover(
    state: Mapping[str, Any], prefixes: tuple[str, ...], path: Path, layout: str
) -> None:
    others = [k for k in state if not k.startswith(prefixes)]
    if others:
        raise CheckpointError(f"{path} ({layout} layout): unexpected keys {others[:_SHOWN]}")


def _dsmil(
    state: dict[str, torch.Tensor], model: SimCLRModel, path: Path
) -> dict[str, torch.Tensor]:
    children = [name for name, _ in model.backbone.named_children()]
    mapped: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith("features."):
            index, _, rest = key[len("features.") :].partition(".")
            if not index.isdigit() or int(index) >= len(children):
                raise CheckpointError(
                    f"{path} (DSMIL layout): key {key} has no matching child in {model.spec.arch}"
                )
            mapped[f"{children[int(index)]}.{rest}"] = value
        else:
            mapped[key] = value
    return mapped


def load_weights(
    path: str | os.PathLike[str], model: SimCLRModel, load_head: str = "auto"
) -> WeightsReport:
    """Load `path` into `model` in place. load_head: auto (if present and shapes fit), never, require."""
    if load_head not in ("auto", "never", "require"):
        raise ValueError(f"load_head must be auto, never or require, not {load_head}")
    path = Path(path)
    raw = read_checkpoint(path)
    try:
        layout, backbone, head, dropped = split_checkpoint(raw, path, model)
    except CheckpointError as error:
        if str(path) in str(error):
            raise
        raise CheckpointError(f"{path}: {error}") from error
    _load_strict(
        model.backbone, backbone, path, layout, model.spec.arch_kwargs.get("norm", "batch")
    )
    head_loaded = False
    if head and load_head != "never":
        problems = _mismatches(model.head.state_dict(), head)
        if not problems:
            model.head.load_state_dict(head)
            head_loaded = True
        elif load_head == "require":
            raise CheckpointError(
                f"{path} ({layout} layout): projection head does not fit: {problems}"
            )
        else:
            dropped.setdefault("projection head that does not fit ours", []).extend(sorted(head))
            log.warning(
                "%s: projection head does not fit ours (%s); the head stays randomly initialised",
                path,
                problems,
            )
    elif head:
        dropped.setdefault("projection head (not wanted)", []).extend(sorted(head))
    elif load_head == "require":
        raise CheckpointError(f"{path} ({layout} layout) holds no projection head")
    report = WeightsReport(
        path=str(path),
        sha256=file_digest(path),
        layout=layout,
        backbone_tensors=len(backbone),
        head_loaded=head_loaded,
        dropped=dropped,
    )
    for why, keys in dropped.items():
        log.info("%s: dropped %d key(s) (%s): %s", path, len(keys), why, keys[:_SHOWN])
    return report


def layout_problems(
    expected: Mapping[str, tuple[int, ...]], given: Mapping[str, torch.Tensor]
) -> str:
    """Missing, unexpected and wrongly shaped keys of a weights file against the network's
    (key -> shape), each kind with its count and the first few: what a refused file's error says."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    shapes = [
        f"{k} {tuple(given[k].shape)} (ours {tuple(expected[k])})"
        for k in expected
        if k in given and tuple(given[k].shape) != tuple(expected[k])
    ]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s), first {missing[:_SHOWN]}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s), first {unexpected[:_SHOWN]}")
    if shapes:
        parts.append(f"{len(shapes)} key(s) of another shape, first {shapes[:_SHOWN]}")
    return "; ".join(parts)


def _mismatches(expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor]) -> str:
    return layout_problems({k: tuple(v.shape) for k, v in expected.items()}, given)


def _load_strict(
    backbone: torch.nn.Module, state: dict[str, torch.Tensor], path: Path, layout: str, norm: str
) -> None:
    expected = backbone.state_dict()
    state = dict(state)
    # Checkpoints from before torch 0.4.1 lack the BatchNorm counter; it does not affect inference.
    for key, value in expected.items():
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = torch.zeros_like(value)
    problems = _mismatches(expected, state)
    if problems:
        hint = _norm_hint(expected, state, norm)
        raise CheckpointError(
            f"{path} ({layout} layout) does not fit the backbone: {problems}{hint}"
        )
    backbone.load_state_dict(state, strict=True)


def _norm_hint(expected: Mapping[str, Any], state: Mapping[str, Any], norm: str) -> str:
    def is_norm(key: str) -> bool:
        return ".bn" in f".{key}" or ".downsample.1." in f".{key}"

    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing and not unexpected and all(is_norm(k) for k in missing) and norm == "batch":
        return (
            ". The file has no normalisation parameters: it was probably trained with InstanceNorm "
            "(as DSMIL and ItS2CLR do); build the encoder with norm=instance"
        )
    if unexpected and not missing and all(is_norm(k) for k in unexpected) and norm == "instance":
        return ". The file has BatchNorm parameters; build the encoder with norm=batch"
    return ""
