"""The shipped test slides are the files their README names, byte for byte."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path


def test_slides_match_their_recorded_checksums(test_slides: Path) -> None:
    readme = (test_slides / "README.md").read_text()
    recorded = dict(
        (name, digest) for digest, name in re.findall(r"^([0-9a-f]{64})  (\S+)$", readme, re.M)
    )
    assert len(recorded) == 6
    for name, digest in recorded.items():
        assert hashlib.sha256((test_slides / name).read_bytes()).hexdigest() == digest, name
