"""Outputs appear whole or not at all, and a killed writer's leftovers are cleared by the rerun."""

from __future__ import annotations

from pathlib import Path

import pytest

from hnm.core.atomic import atomic_path, write_json


def test_output_appears_only_when_complete(tmp_path: Path) -> None:
    target = tmp_path / "out" / "table.csv"
    with atomic_path(target) as temporary:
        temporary.write_text("a,b\n")
        assert not target.exists()
        assert temporary.suffix == ".csv" and temporary.parent == target.parent
    assert target.read_text() == "a,b\n"
    assert [p.name for p in target.parent.iterdir()] == ["table.csv"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"
    write_json(target, {"auc": 0.9})
    with pytest.raises(RuntimeError), atomic_path(target) as temporary:
        temporary.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text().startswith("{")
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_a_killed_writers_temporary_is_cleared(tmp_path: Path) -> None:
    stale = tmp_path / ".slide.tmp12345.h5"
    stale.write_bytes(b"torn")
    other = tmp_path / ".other.tmp1.h5"
    other.write_bytes(b"not ours")
    with atomic_path(tmp_path / "slide.h5") as temporary:
        temporary.write_bytes(b"whole")
    assert not stale.exists() and other.exists()
