"""Choosing the torch device and number format, so every stage treats `auto`, `cpu` and `cuda`
(and `auto` precision) the same way."""

from __future__ import annotations

import torch

from hnm.core.errors import ConfigError
from hnm.core.reproducible import apply_to_torch


def resolve_device(name: str) -> torch.device:
    """`auto` takes CUDA when present; asking for `cuda` on a machine without it is an error.
    Every torch stage resolves its device here, so a reproducible run's pins apply here too."""
    apply_to_torch(torch)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"device '{name}' was asked for but CUDA is not available here; set device: auto or cpu"
        )
    if name != "cpu" and not name.startswith("cuda"):
        raise ConfigError(f"unknown device '{name}'; use auto, cpu, cuda or cuda:N")
    return torch.device(name)


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto` is bf16 autocast on CUDA (tensor cores, half the memory traffic) and fp32 on the CPU
    (bit-exact reruns; bf16 is slower than fp32 on many CPUs); anything else is kept as asked."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision
