"""Names that changed, so an old config, comparison file or command gets the new name, not a
generic "unknown key".

On 2026-12-06 every stage took one name across its rule, command, config section and package
(docs/layout.md, "One name per stage"). A config written before then still says `tiling:` or
`mining:`; Snakemake's schema check would only call the key unknown.
"""

from __future__ import annotations

from collections.abc import Iterable

from hnm.core.errors import ConfigError

RENAMED_SECTIONS = {
    "tiling": "tile",
    "extraction": "extract",
    "mining": "mine",
    "evaluation": "evaluate",
}
RENAMED_COMMANDS = {"train-mil": "mil"}


def check_section_names(keys: Iterable[str], where: str) -> None:
    """Raise a ConfigError naming every old section name among `keys` and its new name."""
    old = [key for key in keys if key in RENAMED_SECTIONS]
    if old:
        renames = ", ".join(f"'{key}' is now '{RENAMED_SECTIONS[key]}'" for key in old)
        raise ConfigError(
            f"{where}: config section(s) renamed: {renames}. Rename the key(s) and run again "
            "(the settings inside are unchanged)"
        )
