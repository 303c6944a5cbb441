"""What each kind of synthetic tissue looks like: stain colours and nucleus styles.

Tumor and its mimic share mean colour and nuclear area but not texture: a lymphoid-aggregate mimic
has small, round, uniform, evenly spaced nuclei, tumor large, pleomorphic, hyperchromatic, crowded
ones. `mimic_style(difficulty)` moves the mimic towards tumor, which is what makes hard negatives
hard. Sizes are physical (um), so a slide at any mpp shows the same tissue.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# Optical density of unit haematoxylin / eosin (R, G, B); H after Ruifrok & Johnston, E tuned
# towards the pink of scanned eosin. Stains mix in OD space (Beer-Lambert), so blends look right.
HAEMATOXYLIN = np.array([0.65, 0.70, 0.29], np.float32)
EOSIN = np.array([0.10, 0.85, 0.42], np.float32)
ILLUMINATION = np.array([244.0, 243.0, 246.0], np.float32)  # bright field through bare glass
GLASS_RGB = np.clip(np.rint(ILLUMINATION), 0, 255).astype(np.uint8)  # bare glass as stored pixels


@dataclass(frozen=True)
class NucleusStyle:
    """How the nuclei of one region type look; sizes are physical so any mpp gives the same tissue."""

    radius_um: float  # median nuclear radius
    radius_cv: float  # log-normal spread of radii (pleomorphism)
    irregularity: float  # radial outline noise
    elongation: float  # largest axis ratio
    jitter: float  # displacement from the hexagonal lattice, in lattice spacings (0 = regular)
    fill: float  # nuclear area fraction; sets the lattice spacing
    keep: float  # chance that a lattice site holds a nucleus
    h_mean: float  # haematoxylin of a nucleus (hyperchromasia)
    h_spread: float  # uniform spread of it between nuclei
    chromatin: float  # amplitude of the texture inside a nucleus
    h_cytoplasm: float
    e_cytoplasm: float

    def spacing_um(self) -> float:
        # a hexagonal lattice cell (sqrt(3)/2 * spacing^2) holds keep * E[pi r^2] of nucleus, and
        # E[r^2] = median^2 * exp(2 cv^2) for log-normal radii
        mean_area = math.pi * self.radius_um**2 * math.exp(2 * self.radius_cv**2)
        return math.sqrt(self.keep * mean_area / (0.8660254 * self.fill))


TUMOR_STYLE = NucleusStyle(
    radius_um=6.0,
    radius_cv=0.32,
    irregularity=0.28,
    elongation=1.7,
    jitter=0.75,
    fill=0.40,
    keep=1.0,
    h_mean=1.65,
    h_spread=0.7,
    chromatin=0.55,
    h_cytoplasm=0.16,
    e_cytoplasm=0.36,
)
# A lymphoid aggregate: small, round, uniform, evenly spaced nuclei; same nuclear area fraction.
MIMIC_STYLE = NucleusStyle(
    radius_um=2.9,
    radius_cv=0.06,
    irregularity=0.03,
    elongation=1.08,
    jitter=0.3,
    fill=0.40,
    keep=1.0,
    h_mean=1.45,
    h_spread=0.08,
    chromatin=0.12,
    h_cytoplasm=0.16,
    e_cytoplasm=0.36,
)
STROMA_STYLE = NucleusStyle(
    radius_um=2.6,
    radius_cv=0.18,
    irregularity=0.08,
    elongation=3.5,
    jitter=1.0,
    fill=0.02,
    keep=0.6,
    h_mean=1.2,
    h_spread=0.25,
    chromatin=0.15,
    h_cytoplasm=0.03,
    e_cytoplasm=0.0,
)


def mimic_style(difficulty: float) -> NucleusStyle:
    """The mimic's nuclei moved a fraction `difficulty` of the way towards tumor's."""
    fields = {
        name: (1 - difficulty) * getattr(MIMIC_STYLE, name)
        + difficulty * getattr(TUMOR_STYLE, name)
        for name in MIMIC_STYLE.__dataclass_fields__
    }
    return NucleusStyle(**fields)
