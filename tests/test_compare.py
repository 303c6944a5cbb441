"""`hnm compare`: the spec's guards, the paired differences, and one small comparison end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from hnm.compare.paired import paired_differences
from hnm.compare.runner import (
    COHORT_SHARED,
    SECONDS_NAME,
    _add_seconds,
    _check_shared,
    _hold,
    _share,
)
from hnm.compare.spec import load_spec
from hnm.compare.table import FinalScores
from hnm.core.errors import HnmError
from hnm.demo.settings import DemoSettings
from tests.workflow_runner import TEST_CONFIGS, FinishedRun, _env, share_results

REPO = Path(__file__).resolve().parents[1]


def write_spec(folder: Path, **changes) -> Path:  # noqa: ANN003
    spec = {
        "cohort": {"demo": {"cohort_seed": 7}},
        "seeds": [0, 1],
        "reference": "b",
        "methods": {"a": {"mine": {"neg_ratio": 0.2}}, "b": {"mil": {"ranking_loss": False}}},
    }
    spec.update(changes)
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_a_run_gets_cohort_then_method_then_seed(tmp_path: Path) -> None:
    spec = load_spec(write_spec(tmp_path))
    assert spec.run_config(1, "a") == {
        "demo": {"cohort_seed": 7},
        "mine": {"neg_ratio": 0.2},
        "seed": 1,
    }
    assert spec.run_config(0) == {"demo": {"cohort_seed": 7}, "seed": 0}


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"methods": {"a": {"encoder": {"arch": "resnet18"}}, "b": {}}}, "method 'a' sets encoder"),
        ({"reference": "c"}, "reference 'c'"),
        ({"cohort": {"mine": {"neg_ratio": 1.0}}}, "cohort sets mine"),
        ({"seeds": [1, 1]}, "seeds must be distinct"),
        ({"seeds": list(range(21))}, "21 seeds; at most 20"),
        ({"methods": {"a/b": {}, "b": {}}}, "method name 'a/b'"),
        ({"bootstrap": 10}, "bootstrap must be at least 100"),
        ({"extra": 1}, "unknown key(s) extra"),
    ],
)
def test_a_bad_spec_is_refused_before_anything_runs(tmp_path: Path, changes, named) -> None:  # noqa: ANN001
    with pytest.raises(HnmError, match=named.replace("(", r"\(").replace(")", r"\)")):
        load_spec(write_spec(tmp_path, **changes))


def test_the_c16_cohort_has_camelyon16s_bag_counts_and_valid_demo_settings(tmp_path: Path) -> None:
    """The cohort block of config/compare_c16.yaml, with simple methods in place of the placeholder
    (whose settings do not exist yet): it loads, and every run gets Camelyon16's bag counts."""
    raw = yaml.safe_load((REPO / "config" / "compare_c16.yaml").read_text())
    assert set(raw["methods"]) == {
        "hnm_authors",
        "its2clr_authors",
        "hnm_today",
        "hnm_authors_anchor_mean",
        "hnm_authors_no_confneg",
        "dsmil_frozen",
    }
    raw["methods"] = {"plain": {"rounds": 4}, "ref": {"rounds": 4, "mil": {"ranking_loss": False}}}
    raw["reference"] = "ref"
    copy = tmp_path / "c16.yaml"
    copy.write_text(yaml.safe_dump(raw))
    spec = load_spec(copy)
    assert spec.seeds == (0, 1, 2)
    base = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["demo"]
    demo = DemoSettings.from_config({**base, **spec.run_config(1, "plain")["demo"]})
    assert demo.cohort_seed == 20261206
    bags = {split: sum(counts.values()) for split, counts in demo.slides.items()}
    assert bags == {"train": 216, "val": 54, "test": 129}
    assert demo.slides["test"] == {"tumor": 49, "normal": 80}
    tumor_share = (demo.slides["train"]["tumor"] + demo.slides["val"]["tumor"]) / 270
    assert abs(tumor_share - 111 / 270) < 0.02  # Camelyon16: 111 tumor of 270 train + val


class FixedScores:
    """A stand-in for FinalScores whose metric does not depend on the slides drawn."""

    def __init__(self, value: float) -> None:
        self.value = value

    def metric(self, name: str, slides: list[str]) -> float:
        return self.value


def test_paired_difference_is_the_mean_over_seeds_of_each_seeds_difference(tmp_path: Path) -> None:
    spec = load_spec(write_spec(tmp_path))
    final = {
        ("a", 0): FixedScores(0.9),
        ("b", 0): FixedScores(0.8),
        ("a", 1): FixedScores(0.6),
        ("b", 1): FixedScores(0.7),
    }
    paired = paired_differences(spec, final, ["s1", "s2"], resamples=100)
    assert set(paired["method"]) == {"a"}  # the reference is not paired with itself
    # (0.9 - 0.8 + 0.6 - 0.7) / 2 = 0; slides do not matter, so the slide-only interval is that
    # point, while drawing seeds spreads it from -0.1 (seed 1 drawn twice) to +0.1 (seed 0 twice).
    assert np.allclose(paired["difference"], 0.0)
    assert np.allclose(paired["ci_slides_low"], 0.0) and np.allclose(paired["ci_slides_high"], 0.0)
    assert np.allclose(paired["ci_seeds_slides_low"], -0.1)
    assert np.allclose(paired["ci_seeds_slides_high"], 0.1)
    assert set(paired["seed_differences"]) == {"+0.100, -0.100"}
    assert set(paired["verdict"]) == {"undecided"}


def test_final_scores_metrics_by_hand() -> None:
    scores = FinalScores.__new__(FinalScores)
    # slide x: tumor at 0.9, mimic at 0.8, plain at 0.1; slide y: tumor at 0.7, mimic at 0.95.
    scores.patches = {
        "x": (np.array([0.9, 0.8, 0.1]), np.array([1, 0, 0], bool), np.array([0, 1, 0], bool)),
        "y": (np.array([0.7, 0.95]), np.array([1, 0], bool), np.array([0, 1], bool)),
    }
    scores.slides = {"x": (0.9, 1), "y": (0.2, 0), "z": (0.4, 1)}
    # Tumor {0.9, 0.7} against the rest {0.8, 0.1, 0.95}: pairs won 2 + 1 of 6.
    assert scores.metric("test_patch_auc", ["x", "y"]) == pytest.approx(3 / 6)
    # Against the mimics {0.8, 0.95} alone: 0.9 beats 0.8 only; 1 of 4.
    assert scores.metric("test_patch_auc_vs_mimic", ["x", "y"]) == pytest.approx(1 / 4)
    # Slides: positives {0.9, 0.4} against {0.2}: both win.
    assert scores.metric("test_slide_auc", ["x", "y", "z"]) == pytest.approx(1.0)
    # A resample with one slide counted twice counts its patches twice.
    assert scores.metric("test_patch_auc", ["x", "x"]) == pytest.approx(1.0)


def test_shared_files_are_links_and_a_recomputed_one_is_named(tmp_path: Path) -> None:
    source = tmp_path / "source"
    (source / "results" / "tiles").mkdir(parents=True)
    (source / "results" / "tiles" / "s.h5").write_text("tiles")
    (source / "results" / "sheet.tsv").write_text("sheet")
    _share(source, tmp_path / "run")
    run_tiles = tmp_path / "run" / "results" / "tiles" / "s.h5"
    assert run_tiles.stat().st_ino == (source / "results" / "tiles" / "s.h5").stat().st_ino
    _check_shared(source, tmp_path / "run", ("tiles", "sheet.tsv"))
    # An atomic rewrite (new file renamed over the link) is what a recomputing job does.
    replacement = run_tiles.with_suffix(".tmp")
    replacement.write_text("other tiles")
    os.replace(replacement, run_tiles)
    assert (source / "results" / "tiles" / "s.h5").read_text() == "tiles"  # the source is intact
    with pytest.raises(HnmError, match="recomputed 1 file"):
        _check_shared(source, tmp_path / "run", ("tiles", "sheet.tsv"))


def test_one_compare_at_a_time_holds_the_output_folder(tmp_path: Path) -> None:
    with _hold(tmp_path / "out"):
        with pytest.raises(HnmError, match=rf"another `hnm compare` \(process {os.getpid()}\)"):
            with _hold(tmp_path / "out"):
                pass
    with _hold(tmp_path / "out"):  # released when the first one ended
        pass


def test_a_folders_seconds_add_up_over_invocations(tmp_path: Path) -> None:
    assert _add_seconds(tmp_path, 100.0) == 100.0
    assert _add_seconds(tmp_path, 5.5) == 105.5  # a resume that found most of it done
    assert (tmp_path / SECONDS_NAME).exists()


def _kill_mid_report(folder: Path) -> None:
    """What a run killed (SIGKILL) during its report job leaves: the report's output missing and
    Snakemake's lock files naming its outputs (paths as Snakemake writes them, relative)."""
    (folder / "results" / "final" / "rounds.csv").unlink()
    locks = folder / ".snakemake" / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    outputs = sorted(
        p.relative_to(folder).as_posix() for p in (folder / "results" / "final").glob("*")
    )
    (locks / "0.output.lock").write_text("\n".join([*outputs, "results/final/rounds.csv"]))
    (locks / "0.input.lock").write_text("")


def _compare(spec: Path, out: Path) -> subprocess.CompletedProcess[str]:
    """`python -m hnm compare` as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "hnm", "compare", "--spec", str(spec), "--out", str(out)],
        capture_output=True, text=True, env=_env(), cwd=REPO, timeout=900,
    )  # fmt: skip


@pytest.mark.workflow
def test_a_small_comparison_writes_its_tables(tmp_path: Path, tiny_run: FinishedRun) -> None:
    """Two round-0 methods at one seed on the tests' tiny cohort: shared folders, tables, summary.
    The cohort (slides, sheets, tiles) is the session's tiny run's, so only the comparison's own
    jobs run."""
    spec = {
        "configfiles": [str(TEST_CONFIGS / "tiny.yaml")],
        "cohort": {},
        "seeds": [3],
        "reference": "plain",
        "bootstrap": 100,
        "methods": {
            "plain": {"rounds": 0, "mil": {"ranking_loss": False}},
            "ranked": {"rounds": 0},
        },
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    out = tmp_path / "out"
    # The cohort as its run leaves it: the shared files and the tiling QC pictures.
    share_results(tiny_run.folder, out / "cohort", (*COHORT_SHARED, "qc/*.png"))
    result = _compare(path, out)
    assert result.returncode == 0, result.stderr[-4000:]
    cohort_log = (out / "cohort" / "snakemake.log").read_text()
    assert "Nothing to be done" in cohort_log, cohort_log[-2000:]
    runs = pd.read_csv(out / "runs.csv")
    assert sorted(zip(runs["method"], runs["seed"], runs["round"])) == [
        ("plain", 3, 0),
        ("ranked", 3, 0),
    ]
    assert runs["test_patch_auc"].between(0, 1).all()
    paired = pd.read_csv(out / "paired.csv")
    assert set(paired["metric"]) == {"test_patch_auc", "test_patch_auc_vs_mimic", "test_slide_auc"}
    assert (paired["ci_slides_low"] <= paired["ci_slides_high"]).all()
    assert (paired["ci_seeds_slides_low"] <= paired["ci_seeds_slides_high"]).all()
    summary = (out / "summary.md").read_text()
    assert "| ranked (round 0) |" in summary and "Against plain" in summary
    # The methods used the seed's round-0 features, not features of their own.
    features = sorted((out / "seed3" / "_round0" / "results" / "r0" / "features").glob("*.h5"))
    assert features
    for method in ("plain", "ranked"):
        twin = out / "seed3" / method / "results" / "r0" / "features" / features[0].name
        assert twin.stat().st_ino == features[0].stat().st_ino

    # A run killed mid-way leaves Snakemake's lock; the same command then resumes past it, and
    # each run's time adds up over both invocations.
    first = {r["name"]: r["seconds"] for r in json.loads((out / "timing.json").read_text())["runs"]}
    plain = out / "seed3" / "plain"
    _kill_mid_report(plain)
    # Snakemake itself refuses the folder (what `hnm compare` used to stop on).
    locked = subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
         "--directory", str(plain), "--configfile", str(TEST_CONFIGS / "tiny.yaml"),
         str(plain / "compare.yaml"), "--cores", "1"],
        capture_output=True, text=True, env=_env(), cwd=REPO, timeout=300,
    )  # fmt: skip
    assert "LockException" in locked.stdout + locked.stderr
    again = _compare(path, out)
    assert again.returncode == 0, again.stderr[-4000:]
    assert "removing the lock a stopped run left" in again.stderr
    assert (plain / "results" / "final" / "rounds.csv").exists()
    second = {
        r["name"]: r["seconds"] for r in json.loads((out / "timing.json").read_text())["runs"]
    }
    assert all(second[m] > first[m] for m in first), (first, second)
