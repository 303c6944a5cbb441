"""Config section -> CLI flags, so rules pass settings to stages without listing each one by hand.

`{"batch_size": 256, "ranking_loss": False, "weights": ""}` becomes
`--batch-size 256 --no-ranking-loss --weights ''`: underscores become dashes, booleans become
argparse BooleanOptionalAction switches, values are shell-quoted.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterable, Mapping
from typing import Any


def to_flags(settings: Mapping[str, Any], skip: Iterable[str] = ()) -> str:
    skipped = set(skip)
    parts: list[str] = []
    for key, value in settings.items():
        if key in skipped or value is None:
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            parts.append(flag if value else "--no-" + key.replace("_", "-"))
        elif isinstance(value, (dict, list)):
            parts.append(f"{flag} {shlex.quote(json.dumps(value))}")
        else:
            parts.append(f"{flag} {shlex.quote(str(value))}")
    return " ".join(parts)
