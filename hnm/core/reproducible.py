"""`reproducible: true`: the same numbers from every x86-64 processor, at a price in speed.

A run's numbers depend on the processor through the math libraries, not through hnm: ATen picks
AVX-512, AVX2 or plain kernels by CPU (ATEN_CPU_CAPABILITY), MKL picks its GEMM code path by
CPU (MKL_CBWR fixes one), oneDNN's convolutions pick theirs by ISA, OpenBLAS (numpy, scikit-learn)
picks its kernels by core type, and every parallel reduction depends on the thread count. Each
changes the last bits of a result, and training amplifies them (docs/performance.md measures it).

The workflow sets REPRODUCIBLE_ENV for every job (its environment is inherited by each stage),
runs every job on one thread, and each torch stage turns oneDNN off where it resolves its device
(hnm.core.device), so convolutions run ATen's own kernels, which the pinned capability makes the
same everywhere.
"""

from __future__ import annotations

import os

# Read by the stages (hnm.cli) to turn oneDNN off.
FLAG = "HNM_REPRODUCIBLE"

REPRODUCIBLE_ENV: dict[str, str] = {
    FLAG: "1",
    "ATEN_CPU_CAPABILITY": "default",  # ATen's portable kernels, whatever the CPU offers
    "MKL_CBWR": "COMPATIBLE",  # MKL's conditional numerical reproducibility, one code path
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
}
# OpenBLAS's generic x86-64 kernels; set only where the machine has not chosen one already (some
# machines set OPENBLAS_CORETYPE to avoid a broken kernel, which must win).
OPENBLAS_CORE = ("OPENBLAS_CORETYPE", "Prescott")


def job_environment(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The variables to set for every job of a reproducible run."""
    environ = os.environ if environ is None else environ
    pins = dict(REPRODUCIBLE_ENV)
    name, value = OPENBLAS_CORE
    if not environ.get(name):
        pins[name] = value
    return pins


def apply_to_torch(torch: object) -> None:
    """In a stage of a reproducible run: oneDNN off and one intra-op thread."""
    if os.environ.get(FLAG) != "1":
        return
    torch.backends.mkldnn.enabled = False  # type: ignore[attr-defined]
    torch.set_num_threads(1)  # type: ignore[attr-defined]
