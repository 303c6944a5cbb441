"""hnm: hard-negative mining for whole-slide image classification (Huang et al., MICCAI 2024)."""

__version__ = "0.1.0"
