"""A preset's published weights: loaded strictly, named by path and sha256, never copied.

A foundation model's weights are gigabytes; every round's encoder file names them (absolute
path, sha256, size) instead of holding a copy, and whoever rebuilds the network reads them again
and checks the hash first, so a file replaced or edited between rounds is an error, not a silent
change of features. The key layout is checked against the network built on the `meta` device
(shapes, no memory), so a wrong file is refused before gigabytes are read into a model, with the
preset named and a few of the missing and unexpected keys and their counts.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hnm.core.checkpoint import file_digest
from hnm.core.errors import CheckpointError
from hnm.encoders.vit import VisionTransformer
from hnm.encoders.weights import layout_problems, plain_state_dict, read_checkpoint

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BaseWeights:
    """Which file a backbone's weights came from; recorded in every encoder file built on it."""

    preset: str
    path: str
    sha256: str
    size: int

    def as_dict(self) -> dict[str, Any]:
        return {"preset": self.preset, "path": self.path, "sha256": self.sha256, "size": self.size}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> "BaseWeights":
        return cls(str(raw["preset"]), str(raw["path"]), str(raw["sha256"]), int(raw["size"]))


def build_vit(
    vit_kwargs: Mapping[str, Any], device: str | torch.device = "cpu"
) -> VisionTransformer:
    """The network of `vit_kwargs`; on `meta` it allocates nothing (for layout checks)."""
    with torch.device(device):
        return VisionTransformer(**vit_kwargs)


def expected_layout(vit_kwargs: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Every state-dict key of the network and its shape, computed on the meta device."""
    model = build_vit(vit_kwargs, "meta")
    return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}


def read_base_state(path: Path, preset: str) -> dict[str, torch.Tensor]:
    """The file's state dict in timm's names; any reading problem names the preset."""
    try:
        raw = read_checkpoint(path)
        return plain_state_dict(raw, path)
    except CheckpointError as error:
        raise CheckpointError(f"encoder.preset {preset}: {error}") from error


def load_base_backbone(
    path: str | os.PathLike[str],
    vit_kwargs: Mapping[str, Any],
    preset: str,
    expected_sha256: str = "",
    hint: str = "",
) -> tuple[VisionTransformer, BaseWeights]:
    """The network of `vit_kwargs` holding the weights of `path` (float32, on the CPU).

    `expected_sha256` (from an encoder file) must match the file's, else the file changed since
    the encoder was made. `hint` says where the preset's weights come from.
    """
    path = Path(path).resolve()
    if not path.is_file():
        where = f"; {hint}" if hint else ""
        raise CheckpointError(f"encoder.preset {preset}: weights file {path} not found{where}")
    sha256 = file_digest(path)
    if expected_sha256 and sha256 != expected_sha256:
        raise CheckpointError(
            f"encoder.preset {preset}: weights file {path} has sha256 {sha256[:16]}..., but the "
            f"encoder was built on {expected_sha256[:16]}...; the file was replaced or changed "
            "since. Put the original back, or start the run again from round 0"
        )
    state = read_base_state(path, preset)
    expected = expected_layout(vit_kwargs)
    problems = layout_problems(expected, state)
    if problems:
        raise CheckpointError(
            f"encoder.preset {preset}: {path} does not hold this preset's weights: {problems}"
            + (f". {hint[:1].upper()}{hint[1:]}" if hint else "")
        )
    model = build_vit(vit_kwargs, "meta")
    model.load_state_dict(state, strict=True, assign=True)
    model = model.float()
    log.info(
        "encoder.preset %s: loaded %d tensors (%d parameters) from %s, sha256 %s",
        preset,
        len(state),
        sum(p.numel() for p in model.parameters()),
        path,
        sha256[:12],
    )
    return model, BaseWeights(preset, str(path), sha256, path.stat().st_size)
