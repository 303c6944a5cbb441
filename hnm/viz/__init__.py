"""Pictures of a finished run: heatmaps, what was mined, curves, QuPath export (matplotlib)."""
