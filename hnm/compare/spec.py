"""What a comparison runs: one cohort, several methods (config overlays), several training seeds.

The methods share the cohort's tiles and, per seed, the round-0 encoder and features, so a method
may only change what comes after round-0 extraction. The spec refuses any other key up front rather
than let a method silently reuse features made with other settings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hnm.core.errors import HnmError
from hnm.core.renames import check_section_names

# Config keys a method overlay may set: everything they steer happens after round-0 extraction.
METHOD_KEYS = frozenset({"rounds", "mil", "mine", "finetune"})
# Keys the comparison sets itself.
RESERVED_KEYS = frozenset({"seed"})
# The exact sign-flip test of the per-seed differences lists all 2^n sign patterns
# (hnm.compare.paired); 20 seeds is a million patterns, and far more workflow runs than anyone waits for.
MAX_SEEDS = 20
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class CompareSpec:
    """A parsed comparison file (config/compare.yaml documents each key)."""

    cohort: dict[str, Any]
    methods: dict[str, dict[str, Any]]
    seeds: tuple[int, ...]
    reference: str
    configfiles: tuple[str, ...] = ()
    bootstrap: int = 1000
    versus_class: str = "Mimic"
    notes: dict[str, str] = field(default_factory=dict)

    def run_config(self, seed: int, method: str | None = None) -> dict[str, Any]:
        """The overlay a run gets: the cohort, then the method's keys, then the seed."""
        merged = deep_merge(self.cohort, self.methods[method] if method else {})
        return {**merged, "seed": seed}


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_spec(path: str | Path) -> CompareSpec:
    source = Path(path)
    try:
        raw = yaml.safe_load(source.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise HnmError(f"comparison file {source}: cannot read it ({error})") from error
    if not isinstance(raw, dict):
        raise HnmError(f"comparison file {source}: expected a mapping of settings")
    unknown = set(raw) - {
        "cohort",
        "methods",
        "seeds",
        "reference",
        "configfiles",
        "bootstrap",
        "versus_class",
    }
    if unknown:
        raise HnmError(f"comparison file {source}: unknown key(s) {', '.join(sorted(unknown))}")
    methods = raw.get("methods") or {}
    seeds = raw.get("seeds") or []
    if not methods or not seeds:
        raise HnmError(f"comparison file {source}: give at least one method and one seed")
    for name, overlay in methods.items():
        _check_method(source, str(name), overlay or {})
    cohort = raw.get("cohort") or {}
    check_section_names(cohort, f"comparison file {source}, cohort")
    clash = set(cohort) & (METHOD_KEYS | RESERVED_KEYS)
    if clash:
        raise HnmError(
            f"comparison file {source}: cohort sets {', '.join(sorted(clash))}, which belong to "
            "the methods (or to the comparison, for seed); move them under each method"
        )
    reference = str(raw.get("reference", ""))
    if reference not in methods:
        raise HnmError(
            f"comparison file {source}: reference '{reference}' is not one of the methods "
            f"({', '.join(methods)})"
        )
    if len(set(seeds)) != len(seeds) or not all(isinstance(s, int) and s >= 0 for s in seeds):
        raise HnmError(f"comparison file {source}: seeds must be distinct integers >= 0")
    if len(seeds) > MAX_SEEDS:
        raise HnmError(
            f"comparison file {source}: {len(seeds)} seeds; at most {MAX_SEEDS} (the exact "
            "sign-flip test lists every sign pattern of the per-seed differences)"
        )
    bootstrap = int(raw.get("bootstrap", 1000))
    if bootstrap < 100:
        raise HnmError(f"comparison file {source}: bootstrap must be at least 100 resamples")
    base = source.parent
    configfiles = tuple(str((base / f).resolve()) for f in raw.get("configfiles") or [])
    for configfile in configfiles:
        if not Path(configfile).is_file():
            raise HnmError(f"comparison file {source}: configfile {configfile} does not exist")
    return CompareSpec(
        cohort=cohort,
        methods={str(k): v or {} for k, v in methods.items()},
        seeds=tuple(int(s) for s in seeds),
        reference=reference,
        configfiles=configfiles,
        bootstrap=bootstrap,
        versus_class=str(raw.get("versus_class", "Mimic")),
    )


def _check_method(source: Path, name: str, overlay: Any) -> None:
    if not _NAME.match(name):
        raise HnmError(
            f"comparison file {source}: method name '{name}' is used as a folder name; use "
            "letters, digits, '.', '_' and '-'"
        )
    if not isinstance(overlay, dict):
        raise HnmError(f"comparison file {source}: method '{name}' must be a mapping of settings")
    check_section_names(overlay, f"comparison file {source}, method '{name}'")
    outside = set(overlay) - METHOD_KEYS
    if outside:
        raise HnmError(
            f"comparison file {source}: method '{name}' sets {', '.join(sorted(outside))}; a "
            f"method may set only {', '.join(sorted(METHOD_KEYS))}, since the methods share the "
            "tiles and round-0 features (put cohort-wide settings under `cohort`)"
        )
