"""Per-slide file lists reach stages through list files (`@FILE`), so no job's shell command grows
with the cohort: Linux refuses one longer than 128 KiB ("Argument list too long"), which one path
per slide passes at a few thousand slides."""

from __future__ import annotations

import re
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest

from hnm.cli import stage_parser
from hnm.core.arglists import ARGUMENT_LIMIT, list_digest, list_text, write_list
from hnm.core.errors import HnmError
from tests.test_workflow_static import snakemake


def test_a_stage_reads_a_list_file_as_the_paths_it_holds(tmp_path: Path) -> None:
    tiles = [str(tmp_path / f"tiles/slide {index}.h5") for index in range(3)]  # a space too
    listed = tmp_path / "tiles.txt"
    write_list(listed, tiles)
    assert listed.read_text().splitlines() == tiles
    _, parser = stage_parser("qupath")
    args = parser.parse_args(
        ["--scores", "s.parquet", "--tiles", f"@{listed}", "--out", "a.geojson", "b.geojson"]
    )
    assert args.tiles == tiles and args.out == ["a.geojson", "b.geojson"]
    assert list_digest(tiles) != list_digest(tiles[:2])


def test_a_path_argparse_would_misread_is_refused_by_name() -> None:
    with pytest.raises(HnmError, match="starts with '@'"):
        list_text(["a.h5", "@b.h5"])
    with pytest.raises(HnmError, match="line break"):
        list_text(["a\nb.h5"])


def test_the_bash_argument_limit_is_real() -> None:
    """What the lists avoid: a command of ARGUMENT_LIMIT characters does not start."""
    with pytest.raises(OSError, match="Argument list too long"):
        subprocess.run("true " + "a" * ARGUMENT_LIMIT, shell=True, executable="/bin/bash")


def _longest_commands(workdir: Path, demo_slides: str) -> dict[str, int]:
    workdir.mkdir()
    result = snakemake(workdir, "-n", "-p", "--config", f"demo={{slides: {demo_slides}}}")
    assert result.returncode == 0, result.stderr[-3000:]
    longest: dict[str, int] = defaultdict(int)
    for line in (result.stdout + result.stderr).splitlines():
        stage = re.search(r"python -m hnm (\S+)", line)
        if stage:
            longest[stage.group(1)] = max(longest[stage.group(1)], len(line))
    return longest


def test_no_command_grows_with_the_cohort(tmp_path: Path) -> None:
    """The demo cohort and one four times its size plan commands of the same length (give or take
    the slide ids' digits); extraction batches are bounded by extract.slides_per_job instead."""
    small = _longest_commands(
        tmp_path / "small",
        "{train: {tumor: 16, normal: 16}, val: {tumor: 4, normal: 4}, test: {tumor: 4, normal: 4}}",
    )
    large = _longest_commands(
        tmp_path / "large",
        "{train: {tumor: 64, normal: 64}, val: {tumor: 16, normal: 16}, "
        "test: {tumor: 16, normal: 16}}",
    )
    assert set(small) == set(large) and {"mil", "heatmaps", "qupath", "probe"} <= set(small)
    grown = {
        stage: large[stage] - small[stage]
        for stage in small
        if stage != "extract" and large[stage] - small[stage] > 100
    }
    assert not grown, f"commands that grow with the cohort: {grown}"
    assert max(large.values()) < ARGUMENT_LIMIT // 8
