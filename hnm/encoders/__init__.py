"""Patch encoders: architectures, weight loading, and the encoder file every round reads and writes."""

from hnm.encoders.model_file import (
    EncoderFileMeta,
    load_encoder_file,
    read_encoder_meta,
    save_encoder_file,
    weights_digest,
)
from hnm.encoders.registry import EncoderSpec, build_backbone, known_archs
from hnm.encoders.simclr import PROJECTION_DIM, SimCLRModel, build_encoder
from hnm.encoders.weights import WeightsReport, load_weights

__all__ = [
    "PROJECTION_DIM",
    "EncoderFileMeta",
    "EncoderSpec",
    "SimCLRModel",
    "WeightsReport",
    "build_backbone",
    "build_encoder",
    "known_archs",
    "load_encoder_file",
    "load_weights",
    "read_encoder_meta",
    "save_encoder_file",
    "weights_digest",
]
