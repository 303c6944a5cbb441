"""Patch encoders: architectures, weight loading, and the encoder file every round reads and writes.

The names below load their modules on first use, so that torch-free parts of the package
(hnm.encoders.presets, which the workflow reads while it builds the DAG) import without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "EncoderFileMeta": "hnm.encoders.model_file",
    "load_encoder_file": "hnm.encoders.model_file",
    "read_encoder_meta": "hnm.encoders.model_file",
    "save_encoder_file": "hnm.encoders.model_file",
    "weights_digest": "hnm.encoders.model_file",
    "EncoderSpec": "hnm.encoders.registry",
    "build_backbone": "hnm.encoders.registry",
    "known_archs": "hnm.encoders.registry",
    "PROJECTION_DIM": "hnm.encoders.simclr",
    "SimCLRModel": "hnm.encoders.simclr",
    "build_encoder": "hnm.encoders.simclr",
    "WeightsReport": "hnm.encoders.weights",
    "load_weights": "hnm.encoders.weights",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'hnm.encoders' has no attribute '{name}'")
    return getattr(importlib.import_module(_HOMES[name]), name)
