"""Choosing the torch device, so every stage treats `auto`, `cpu` and `cuda` the same way."""

from __future__ import annotations

import torch

from hnm.core.errors import ConfigError

# Numeric precision of a stage's forward passes: auto = bf16 autocast on CUDA, fp32 on the CPU.
PRECISIONS = ("auto", "fp32", "bf16")


def resolve_device(name: str) -> torch.device:
    """`auto` takes CUDA when present; asking for `cuda` on a machine without it is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"device '{name}' was asked for but CUDA is not available here; set device: auto or cpu"
        )
    if name != "cpu" and not name.startswith("cuda"):
        raise ConfigError(f"unknown device '{name}'; use auto, cpu, cuda or cuda:N")
    return torch.device(name)
