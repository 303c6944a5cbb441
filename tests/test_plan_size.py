"""The note that a large cohort takes a while to plan: said from 100,000 slide-rounds (5,000
slides at paper.yaml's 20 rounds), not for the demo or Camelyon16, and said by the workflow itself
before Snakemake goes quiet."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from hnm.core.plan_size import planning_note

REPO = Path(__file__).resolve().parents[1]


def test_said_for_large_cohorts_only() -> None:
    assert planning_note(48, 2) is None  # the demo
    assert planning_note(399, 20) is None  # Camelyon16 at paper.yaml: 8,379 slide-rounds
    assert planning_note(4_761, 20) is None  # 99,981 slide-rounds
    note = planning_note(5_000, 20)
    assert note is not None and "5,000 slides x 21 rounds" in note
    assert "paper.yaml, 21 rounds, 32 slides a job: 47 s" in note  # the measured figures
    assert "Planning a large cohort" in note  # where to read why


def test_the_workflow_says_it_before_planning(tmp_path: Path) -> None:
    """A dry run of a 1,000-row sheet at 100 rounds prints the note; the demo's does not."""
    slide = REPO / "tests" / "data" / "slides" / "small.svs"
    rows = ["slide_id\tpath\tlabel\tsplit\tmpp"]
    splits = ["train"] * 540 + ["val"] * 140 + ["test"] * 320
    for index, split in enumerate(splits):
        path = tmp_path / f"s{index:04d}.svs"
        shutil.copyfile(slide, path)  # the sheet check refuses two rows on one file
        label = "tumor" if index % 5 < 2 else "normal"
        rows.append(f"s{index:04d}\t{path}\t{label}\t{split}\t0.5")
    sheet = tmp_path / "sheet.tsv"
    sheet.write_text("\n".join(rows) + "\n")
    said = _stderr_of_list_rules(tmp_path / "run", "--config", f"sheet={sheet}", "rounds=100")
    assert "hnm: planning 1,000 slides x 101 rounds of features" in said
    assert "hnm: planning" not in _stderr_of_list_rules(tmp_path / "demo")


def _stderr_of_list_rules(folder: Path, *options: str) -> str:
    """What the workflow prints while Snakemake parses it (`--list-rules` builds no DAG)."""
    command = [
        sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
        "--directory", str(folder), *options, "--list-rules",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stderr
