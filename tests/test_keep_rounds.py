"""extract.keep_rounds without running a job: which rounds' features go, what the workflow plans
for them, the failures table without the removed files, and the comparison's shared round 0.
tests/test_workflow_keep_rounds.py runs it end to end."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from hnm.cli import main
from hnm.compare.runner import COHORT_SHARED, ROUND0_SHARED, _check_shared, _restore_pruned, _share
from hnm.core.errors import HnmError
from hnm.extract.disk import measure_features_file, project_disk
from hnm.extract.keep import kept_rounds, pruned_rounds, round_pattern
from hnm.io.h5io import FeatureWriter, files_by_slide, write_tiles
from hnm.mil.data import load_cohort
from tests.test_workflow_static import snakemake


def test_the_latest_k_rounds_are_kept() -> None:
    assert pruned_rounds(2, 0) == [] and kept_rounds(2, 0) == [0, 1, 2]  # 0 keeps every round
    assert pruned_rounds(2, 1) == [0, 1] and kept_rounds(2, 1) == [2]
    assert pruned_rounds(20, 2) == list(range(19)) and kept_rounds(20, 2) == [19, 20]
    assert pruned_rounds(2, 3) == pruned_rounds(2, 7) == []  # K past the rounds keeps them all
    assert pruned_rounds(0, 1) == [] and kept_rounds(0, 1) == [0]
    assert re.fullmatch(round_pattern([0, 1, 10]), "10") and not re.fullmatch(
        round_pattern([0, 1]), "11"
    )
    with pytest.raises(ValueError, match="keep_rounds must be >= 0"):
        pruned_rounds(2, -1)


def _plan(workdir: Path, *args: str) -> str:
    result = snakemake(workdir, "-n", "-p", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout + result.stderr


def _jobs(plan: str) -> dict[str, int]:
    table = plan.split("Job stats:", 1)[1]
    return {name: int(count) for name, count in re.findall(r"^(\w+)\s+(\d+)$", table, re.M)}


def test_the_plan_removes_the_older_rounds_features_after_their_mil_and_probe(
    tmp_path: Path,
) -> None:
    plan = _plan(tmp_path, "--config", "rounds=2", "extract={keep_rounds: 1, slides_per_job: 1}")
    slides = 48  # the demo cohort of config/config.yaml
    jobs = _jobs(plan)
    assert jobs["extract_pruned"] == 2 * slides and jobs["extract"] == slides, jobs
    removed = re.findall(r"Would remove temporary output (\S+)", plan)
    assert sorted({re.match(r"results/r(\d+)/features/", p).group(1) for p in removed}) == [
        "0",
        "1",
    ]
    assert len(removed) == len(set(removed)) == 2 * slides
    # Round 0's go right after its probe, the last job that reads them, long before the end.
    lines = plan.splitlines()
    first_removal = next(i for i, line in enumerate(lines) if "Would remove" in line)
    before = "\n".join(lines[:first_removal])
    assert "rule probe:" in before and "rule report:" not in before
    assert "rule failures:" not in before
    # The failures table reads the removed rounds from their MIL's metrics, not the files.
    failures = next(line for line in lines if "python -m hnm failures" in line)
    assert "--mil-metrics results/r0/mil/metrics.json results/r1/mil/metrics.json" in failures
    # its features (a list file on the command line) are the kept round's alone
    start = lines.index("rule failures:")
    inputs = next(line for line in lines[start:] if line.strip().startswith("input:"))
    assert "results/r0/features/" not in inputs and "results/r2/features/" in inputs
    assert "--features @results/lists/features_kept.txt" in failures


def test_keep_all_leaves_the_plan_as_it_was_and_a_round0_target_keeps_its_features(
    tmp_path: Path,
) -> None:
    (tmp_path / "all").mkdir()
    plan = _plan(tmp_path / "all", "--config", "rounds=2")
    assert "Would remove" not in plan and "_pruned" not in plan
    lines = plan.splitlines()
    failures = next(line for line in lines if "python -m hnm failures" in line)
    start = lines.index("rule failures:")
    inputs = next(line for line in lines[start:] if line.strip().startswith("input:"))
    assert "--mil-metrics" not in failures and "results/r0/features/" in inputs
    # hnm compare builds a seed's round-0 features with this target: they must stay for the
    # methods to share, even where round 0 is one that the methods' runs remove.
    (tmp_path / "round0").mkdir()
    plan = _plan(
        tmp_path / "round0", "features_round0", "--config", "rounds=2", "extract={keep_rounds: 1}"
    )
    assert "rule extract_pruned:" in plan and "Would remove" not in plan


def _skipped_slides(root: Path, rounds: int) -> tuple[list[str], dict[int, list[str]]]:
    """Tiles and per-round features files of four slides: t0 failed at tiling, x1 at extraction
    in round 0 only, e2 has no patches (empty, not a failure), ok is fine."""
    tiles: list[str] = []
    features: dict[int, list[str]] = {r: [] for r in range(rounds)}
    for name in ("t0", "x1", "e2", "ok"):
        base = {"slide_id": name, "slide_path": f"/s/{name} (1).svs", "failed": False, "error": ""}
        tiled = {**base, **({"failed": True, "error": "no tissue"} if name == "t0" else {})}
        path = root / "tiles" / f"{name}.h5"
        write_tiles(path, np.zeros((0 if name == "t0" else 3, 2), np.int64), tiled)
        tiles.append(str(path))
        for round_ in range(rounds):
            attrs = {**tiled, "round": round_}
            if name == "x1" and round_ == 0:
                attrs.update(failed=True, error="decoding JPEG tiles failed: bad Huffman code")
            rows = 0 if attrs["failed"] or name == "e2" else 3
            out = root / f"r{round_}" / "features" / f"{name}.h5"
            with FeatureWriter(out, 4, np.zeros((rows, 2)), attrs) as writer:
                writer.append(np.ones((rows, 4), np.float32))
            features[round_].append(str(out))
    return tiles, features


def test_failures_read_from_the_mil_metrics_equal_those_read_from_the_files(
    tmp_path: Path,
) -> None:
    tiles, features = _skipped_slides(tmp_path, rounds=2)
    # What `hnm mil` of round 0 records of its cohort (hnm.mil.outputs: excluded_slides).
    sheet = pd.DataFrame(
        {"slide_id": ["t0", "x1", "e2", "ok"], "split": ["train"] * 4, "label": [1, 1, 0, 0]}
    )
    cohort = load_cohort(sheet, files_by_slide(features[0], "features"), torch.device("cpu"))
    metrics = tmp_path / "r0" / "mil" / "metrics.json"
    metrics.parent.mkdir(parents=True)
    metrics.write_text(json.dumps({"excluded_slides": cohort.excluded}))
    keep_all, pruned = tmp_path / "all.tsv", tmp_path / "pruned.tsv"
    assert main(["failures", "--tiles", *tiles, "--features", *features[0], *features[1],
                 "--out", str(keep_all)]) == 0  # fmt: skip
    # Round 0's files are gone: their failures come from round 0's MIL metrics.
    for path in features[0]:
        os.remove(path)
    assert main(["failures", "--tiles", *tiles, "--features", *features[1],
                 "--mil-metrics", str(metrics), "--out", str(pruned)]) == 0  # fmt: skip
    assert pruned.read_text() == keep_all.read_text()
    rows = pd.read_csv(pruned, sep="\t", keep_default_na=False).values.tolist()
    assert rows == [
        ["t0", "/s/t0 (1).svs", "no tissue", "tiling"],
        ["x1", "/s/x1 (1).svs", "decoding JPEG tiles failed: bad Huffman code", "extraction (round 0)"],
    ]  # fmt: skip


def test_failures_read_mil_metrics_written_before_the_fields(tmp_path: Path) -> None:
    """MIL metrics of a run begun before keep_rounds hold the skip in `reason` alone: the round
    comes from the folder, the path from the tiles file."""
    tiles, _ = _skipped_slides(tmp_path, rounds=1)
    metrics = tmp_path / "r3" / "mil" / "metrics.json"
    metrics.parent.mkdir(parents=True)
    reason = "marked failed upstream: decoding JPEG tiles failed: bad Huffman code"
    excluded = [
        {"slide_id": "x1", "split": "train", "reason": reason},
        {"slide_id": "e2", "split": "train", "reason": "no patches (empty feature file)"},
    ]
    metrics.write_text(json.dumps({"excluded_slides": excluded}))
    report = tmp_path / "f.tsv"
    assert main(["failures", "--tiles", *tiles, "--mil-metrics", str(metrics),
                 "--out", str(report)]) == 0  # fmt: skip
    rows = pd.read_csv(report, sep="\t", keep_default_na=False).values.tolist()
    assert rows[1] == [
        "x1", "/s/x1 (1).svs", "decoding JPEG tiles failed: bad Huffman code", "extraction (round 3)"
    ]  # fmt: skip
    assert len(rows) == 2
    metrics.write_text("{truncated")
    assert main(["failures", "--tiles", *tiles, "--mil-metrics", str(metrics),
                 "--out", str(report)]) == 2  # fmt: skip


def _round0_folder(root: Path) -> Path:
    """A seed's `_round0` results as hnm compare shares them: tiles, sheets, r0 encoder, features."""
    for name in ("tiles/s.h5", "sheet.tsv", "sheet_eval.tsv", "r0/encoder.pt", "r0/features/a.h5",
                 "r0/features/b.h5"):  # fmt: skip
        path = root / "results" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(name)
    return root


def test_a_method_that_removed_its_round0_links_shares_them_again(tmp_path: Path) -> None:
    source = _round0_folder(tmp_path / "_round0")
    method = tmp_path / "method"
    _share(source, method)
    shared = COHORT_SHARED + ROUND0_SHARED
    # The method's run removed its links once round 0's MIL and probe were done: the inode is
    # the source's still, so the shared file is intact and nothing was recomputed.
    for name in ("a.h5", "b.h5"):
        (method / "results" / "r0" / "features" / name).unlink()
    assert (source / "results" / "r0" / "features" / "a.h5").read_text() == "r0/features/a.h5"
    _check_shared(source, method, shared)
    # Before the method runs again its links come back, the same inodes.
    restored = _restore_pruned(source, method)
    assert sorted(p.name for p in restored) == ["a.h5", "b.h5"]
    twin = method / "results" / "r0" / "features" / "a.h5"
    assert twin.stat().st_ino == (source / "results" / "r0" / "features" / "a.h5").stat().st_ino
    assert _restore_pruned(source, method) == []  # nothing else missing
    _check_shared(source, method, shared)
    # Features extracted again in the method's folder are a recomputation, named as before.
    replacement = twin.with_suffix(".tmp")
    replacement.write_text("other features")
    os.replace(replacement, twin)
    with pytest.raises(HnmError, match="recomputed 1 file"):
        _check_shared(source, method, shared)
    # Only round 0's features may go missing: a missing encoder is not a removal by keep_rounds.
    os.replace(source / "results" / "r0" / "features" / "a.h5", twin)
    os.link(twin, source / "results" / "r0" / "features" / "a.h5")
    (method / "results" / "r0" / "encoder.pt").unlink()
    with pytest.raises(HnmError, match="recomputed 1 file.*encoder.pt"):
        _check_shared(source, method, shared)


def test_disk_projection_from_a_written_file(tmp_path: Path) -> None:
    full = measure_features_file(3000, 64, "float32", tmp_path)
    half = measure_features_file(3000, 64, "float16", tmp_path)
    assert not list(tmp_path.iterdir())  # the measured file is not left behind
    # Measured, not the payload: HDF5 adds a little, and never a nearly empty chunk.
    assert full.payload_per_patch == 64 * 4 + 16 and half.payload_per_patch == 64 * 2 + 16
    for cost in (full, half):
        assert cost.payload_per_patch < cost.bytes_per_patch < 1.05 * cost.payload_per_patch
    assert 0.5 < half.bytes / full.bytes < 0.58
    keep_all = project_disk(full, slides=10, rounds=20, keep=0)
    assert keep_all.per_round == 10 * full.bytes
    assert keep_all.at_end == keep_all.peak == 21 * keep_all.per_round
    keep_two = project_disk(full, slides=10, rounds=20, keep=2)
    assert keep_two.kept == 2 and keep_two.at_end == 2 * keep_two.per_round
    assert keep_two.peak == 3 * keep_two.per_round  # a removed round still read by its probe
    assert project_disk(full, slides=10, rounds=0, keep=1).peak == full.bytes * 10
