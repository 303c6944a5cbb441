"""Checks of the workflow that need no job to run: dry runs and the conda envs (lint and format
are scripts/lint.sh's, which CI runs before the tests).

The envs cannot be built here (no conda channels), so each rule's env is checked statically: it
must exist and list every third-party package that the rule's stage imports, followed through the
hnm modules it uses.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hnm.extract.batches import batches_by_split
from hnm.io.sheet import demo_sheet
from tests.workflow_runner import wildcards_run

REPO = Path(__file__).resolve().parents[1]
# import name -> conda-forge package name
CONDA_NAME = {
    "PIL": "pillow",
    "openslide": "openslide-python",
    "yaml": "pyyaml",
    "sklearn": "scikit-learn",
    "torch": "pytorch",
    "matplotlib": "matplotlib-base",  # conda-forge's matplotlib without the Qt backend
    "mpl_toolkits": "matplotlib-base",  # mpl_toolkits.axes_grid1 ships with matplotlib
}
OPTIONAL_IMPORTS = {"torchvision", "timm", "nvidia"}  # extras, imported only when installed


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The repository's Snakefile run with `workdir` as its working directory (`--directory`).

    Never the repository itself: a demo run leaves results/ there, and a dry run in it would plan
    around those leftovers (or find nothing to do) instead of checking the workflow; the run's
    .snakemake/ bookkeeping lands in `workdir` too. Paths in `args` must therefore be absolute.
    """
    return subprocess.run(
        [
            sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
            "--directory", str(workdir), *args,
        ],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip


@pytest.fixture(scope="session")
def paper_plan(tmp_path_factory: pytest.TempPathFactory) -> subprocess.CompletedProcess[str]:
    """config/paper.yaml's 20-round DAG, planned once for every test that reads it (each plan
    of it costs seconds); its commands printed (-p)."""
    files = [str(REPO / "config" / name) for name in ("config.yaml", "paper.yaml")]
    result = snakemake(tmp_path_factory.mktemp("paper"), "-n", "-p", "--configfile", *files)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def rules_with_stages() -> dict[str, tuple[str, str]]:
    """rule name -> (env file, hnm stage) read from the rule files."""
    found = {}
    functions: dict[str, tuple[str, str]] = {}
    for path in sorted((REPO / "rules").glob("*.smk")):
        text = path.read_text()
        # Shell commands kept in a variable (shared by several rules, or chosen in a rule-defining
        # function): NAME = ("python -m hnm ...
        constants = dict(
            re.findall(
                r"^\s*(\w+) = \(\s*\n\s*\"(?:\{params\.gpu_slot\})?(python -m hnm [\w-]+)",
                text,
                re.M,
            )
        )
        # A rule defined by a function (rules/extract.smk's extraction_rule) is named by its calls:
        # `extraction_rule("extract", ...)`, `extraction_rule(f"predict_extract_{batch}", ...)`.
        defined_by = {}
        for block in re.split(r"\n(?=\s*rule |def )", text):
            name = re.match(r"\s*rule (\w+):", block)
            function = re.match(r"def (\w+)\(", block)
            conda = re.search(r'conda:\s*\n\s*"([^"]+)"', block)
            shell = re.search(r"shell:\s*\n\s*(\w+)\s*$", block, re.M)
            command = constants.get(shell.group(1), "") if shell else block
            stage = re.search(r"python -m hnm ([\w-]+)", command)
            env = (path.parent / conda.group(1)).resolve() if conda else None
            if name and stage:
                found[name.group(1)] = (str(env) if env else "", stage.group(1))
            elif function and stage:
                defined_by[function.group(1)] = (str(env) if env else "", stage.group(1))
        defined_by |= functions
        functions = defined_by
        for function, rule in re.findall(r"(\w+)\(\s*f?\"(\w+?)(?:_\{\w+\})?\",", text):
            if function in functions:
                found[rule] = functions[function]
    return found


def _runtime_nodes(tree: ast.AST):
    """Every node of `tree` but those under `if TYPE_CHECKING:` (imports for annotations only)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def hnm_imports(module_file: Path, seen: set[Path] | None = None) -> set[str]:
    """Top-level names of third-party modules imported by a file and the hnm modules it imports."""
    seen = set() if seen is None else seen
    if module_file in seen or not module_file.exists():
        return set()
    seen.add(module_file)
    third_party: set[str] = set()
    for node in _runtime_nodes(ast.parse(module_file.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            if name.split(".")[0] == "hnm":
                third_party |= hnm_imports(module_path(name), seen)
            else:
                third_party.add(name.split(".")[0])
    return third_party


def module_path(dotted: str) -> Path:
    base = REPO.joinpath(*dotted.split("."))
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def test_every_rule_that_runs_a_stage_has_an_env_listing_its_imports() -> None:
    from hnm.cli import STAGES

    rules = rules_with_stages()
    assert {"tile", "pretrain", "extract", "mil", "mine", "finetune"} <= set(rules)
    for rule, (env, stage) in rules.items():
        assert env and Path(env).exists(), f"rule {rule} has no existing conda env"
        spec = yaml.safe_load(Path(env).read_text())
        assert "conda-forge" in spec["channels"]
        listed = {re.split(r"[\s=<>]", dep)[0] for dep in spec["dependencies"]}
        for dep in spec["dependencies"]:
            assert re.search(r"=\d", dep), f"{env}: {dep} is not pinned"
        command = REPO / "hnm" / "commands" / f"{STAGES[stage][0]}.py"
        assert command.exists(), f"rule {rule} calls hnm {stage}, which has no {command}"
        imports = hnm_imports(command) - set(sys.stdlib_module_names) - OPTIONAL_IMPORTS
        needed = {CONDA_NAME.get(name, name) for name in imports}
        missing = needed - listed
        assert not missing, f"rule {rule} (hnm {stage}) imports {missing} missing from {env}"


@pytest.mark.parametrize("profile", ["local", "slurm"])
def test_dry_run_with_each_profile(profile: str, tmp_path: Path) -> None:
    result = snakemake(
        tmp_path, "-n", "--workflow-profile", str(REPO / "workflow" / "profiles" / profile)
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for rule in (
        "synth",
        "tile",
        "init_encoder",
        "pretrain",
        "extract",
        "mil",
        "mine",
        "finetune",
        "report",
    ):
        assert re.search(rf"^{rule}\s+\d+", result.stdout, re.M), f"{rule} missing from the DAG"


def planned_jobs(result: subprocess.CompletedProcess[str]) -> dict[str, int]:
    """Rule -> job count from a dry run's job table."""
    return {name: int(n) for name, n in re.findall(r"^(\w+)\s+(\d+)$", result.stdout, re.M)}


@pytest.mark.parametrize(
    ("overlay", "pretrained"),
    [
        ({}, True),
        ({"encoder": {"weights": "WEIGHTS"}}, False),
        ({"pretrain": {"epochs": 0}}, False),
    ],
    ids=["no-weights", "weights-given", "epochs-0"],
)
def test_round0_encoder_is_pretrained_only_without_weights(
    overlay: dict, pretrained: bool, tmp_path: Path
) -> None:
    """rules/common.smk: pretrain makes results/r0/encoder.pt from init_encoder's random weights
    when no weights file is given (and epochs > 0); else init_encoder writes it, as before."""
    weights = tmp_path / "weights.pt"
    weights.write_bytes(b"")  # a dry run only needs the input to exist
    if "encoder" in overlay:
        overlay = {"encoder": {"weights": str(weights)}}
    config = tmp_path / "overlay.yaml"
    config.write_text(yaml.safe_dump(overlay))
    result = snakemake(
        tmp_path, "-n", "--configfile", str(REPO / "config" / "config.yaml"), str(config)
    )
    assert result.returncode == 0, result.stdout + result.stderr
    jobs = planned_jobs(result)
    assert jobs.get("init_encoder") == 1
    assert jobs.get("pretrain", 0) == (1 if pretrained else 0), jobs
    initial = "results/pretrain/initial_encoder.pt" if pretrained else "results/r0/encoder.pt"
    init_job = re.search(r"rule init_encoder:\n(?:\s+.*\n)*?\s+output: (\S+)", result.stdout)
    assert init_job and init_job.group(1) == initial, result.stdout[:3000]
    # ... and the dry run says so, once.
    said = (
        "from SimCLR pretraining"
        if pretrained
        else (f"weights in {weights}" if "encoder" in overlay else "from a RANDOM")
    )
    starts = [line for line in result.stderr.splitlines() if "round 0 starts" in line]
    assert len(starts) == 1 and said in starts[0], result.stderr[:3000]


@pytest.mark.parametrize(
    ("overlay", "said"),
    [
        ("", "from SimCLR pretraining of a random resnet18 on the cohort's train slides (20 epoch"),
        ("pretrain={epochs: 0}", "WARNING: round 0 starts from a RANDOM resnet18 encoder"),
    ],
    ids=["paper", "paper-epochs-0"],
)
def test_dry_run_of_the_paper_config_says_where_round0_starts(
    overlay: str, said: str, tmp_path: Path, paper_plan: subprocess.CompletedProcess[str]
) -> None:
    """config/paper.yaml has no encoder.weights: a dry run says before any job that round 0 is
    SimCLR-pretrained on the cohort, or warns that it starts from a random encoder."""
    files = [str(REPO / "config" / name) for name in ("config.yaml", "paper.yaml")]
    result = (
        snakemake(tmp_path, "-n", "--configfile", *files, "--config", overlay)
        if overlay
        else paper_plan
    )
    assert result.returncode == 0, result.stdout + result.stderr
    starts = [line for line in result.stderr.splitlines() if "round 0 starts" in line]
    assert len(starts) == 1 and said in starts[0], result.stderr[:3000]
    if not overlay:  # `--quiet all` (demo.sh's second parse, for the report) keeps it quiet
        quiet = snakemake(tmp_path, "-n", "--quiet", "all", "--configfile", *files)
        assert quiet.returncode == 0 and "round 0 starts" not in quiet.stderr, quiet.stderr[:3000]


@pytest.mark.parametrize("per_job", [1, 5, 1000])
def test_extraction_jobs_take_slides_per_job_slides(per_job: int, tmp_path: Path) -> None:
    """One extract job per slide, or per batch of slides_per_job slides, in every round: one rule
    either way, the batch a wildcard."""
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    slides = sum(n for split in config["demo"]["slides"].values() for n in split.values())
    rounds = config["rounds"] + 1
    overlay = tmp_path / "batches.yaml"
    overlay.write_text(yaml.safe_dump({"extract": {"slides_per_job": per_job}}))
    result = snakemake(
        tmp_path, "-n", "--configfile", str(REPO / "config" / "config.yaml"), str(overlay)
    )
    assert result.returncode == 0, result.stdout + result.stderr
    jobs = dict(re.findall(r"^(extract\S*)\s+(\d+)$", result.stdout, re.M))
    if per_job == 1:
        assert jobs == {"extract": str(slides * rounds)}
    else:
        sheet = demo_sheet(config["demo"]["slides"], "slides", "annotations")
        batches = batches_by_split(dict(zip(sheet["slide_id"], sheet["split"])), per_job)
        assert jobs == {"extract": str(len(batches) * rounds)}
        assert wildcards_run(result, "extract", "batch") == set(batches)


@pytest.mark.parametrize("per_job", [1, 8])
def test_slurm_bundles_single_slide_tiling_jobs_only(per_job: int, tmp_path: Path) -> None:
    """The SLURM profile's per_slide group bundles one-slide tiling jobs; a batch tiling job
    already holds its slides and is submitted on its own (50 batches would ask for days)."""
    result = snakemake(
        tmp_path, "-n", "--workflow-profile", str(REPO / "workflow" / "profiles" / "slurm"),
        "--config", f"tile={{slides_per_job: {per_job}}}",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"^tile\s+\d+$", result.stdout, re.M)
    assert ("Group job per_slide" in result.stdout) == (per_job == 1)


@pytest.mark.parametrize("overlays", [["paper"], ["paper", "its2clr"], ["paper", "dsmil"]])
def test_ready_made_configs_validate_and_plan(
    overlays: list[str], tmp_path: Path, paper_plan: subprocess.CompletedProcess[str]
) -> None:
    """The configs the README offers, layered as it says, pass the schema and make a DAG."""
    files = [str(REPO / "config" / f"{name}.yaml") for name in ("config", *overlays)]
    result = (
        paper_plan if overlays == ["paper"] else snakemake(tmp_path, "-n", "--configfile", *files)
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rounds = 0 if "dsmil" in overlays else 20
    finetunes = re.search(r"^finetune\s+(\d+)$", result.stdout, re.M)
    assert (int(finetunes.group(1)) if finetunes else 0) == rounds


@pytest.mark.parametrize("overlays", [["paper"], ["paper", "its2clr"]])
def test_paper_config_trains_mil_with_the_authors_protocol(
    overlays: list[str], tmp_path: Path, paper_plan: subprocess.CompletedProcess[str]
) -> None:
    """paper.yaml's MIL job, alone or under a comparison, gets the authors' protocol on its
    command line: their DSMIL bag branch, StepLR stepped twice per epoch, the epoch-199 snapshot
    of 350 and Youden's threshold (chosen on validation)."""
    files = [str(REPO / "config" / f"{name}.yaml") for name in ("config", *overlays)]
    result = (
        paper_plan
        if overlays == ["paper"]
        else snakemake(
            tmp_path, "-n", "-p", "--configfile", *files, "--", "results/r0/mil/metrics.json"
        )
    )
    assert result.returncode == 0, result.stdout + result.stderr
    command = next(
        line
        for line in result.stdout.splitlines()
        if "hnm mil" in line and "results/r0/mil" in line
    )
    for flag in (
        "--dsmil reference",
        "--epochs 350",
        "--step-size 75",
        "--scheduler-steps-per-epoch 2",
        "--select fixed_epoch",
        "--fixed-epoch 199",
        "--threshold-method youden",
    ):
        assert flag in command, flag


def test_a_bad_sheet_stops_the_run_before_any_job(tmp_path: Path) -> None:
    sheet = tmp_path / "sheet.tsv"
    sheet.write_text("slide_id\tpath\tlabel\tsplit\na/b\tnowhere.svs\ttumor\ttrain\n")
    result = snakemake(tmp_path, "-n", "--config", f"sheet={sheet}")
    assert result.returncode != 0
    text = result.stdout + result.stderr
    assert "row 2 (slide_id 'a/b')" in text and "slide file not found" in text
    assert "train split has only label(s) [1]" in text


def test_config_schema_rejects_unknown_and_bad_settings(tmp_path: Path) -> None:
    result = snakemake(tmp_path, "-n", "--config", "rounds=-1")
    assert result.returncode != 0 and "rounds" in result.stdout + result.stderr


def test_a_second_cohort_in_its_own_folder_does_not_see_the_firsts_files(tmp_path: Path) -> None:
    """README, "Predicting new slides": one run folder per cohort (`--directory`). A dry run of a
    second cohort in its own folder, started from the first's folder, plans what it plans in an
    empty folder and writes nothing into the first's; in the first's folder it would reuse files
    of the first (its sheet and initial encoder) as its own."""
    first = tmp_path / "demo run"
    for name in ("results/sheet.tsv", "results/pretrain/initial_encoder.pt", "results/final/x"):
        (first / name).parent.mkdir(parents=True, exist_ok=True)
        (first / name).write_text("the first cohort's\n")
    before = sorted((p, p.stat().st_mtime_ns) for p in first.rglob("*"))
    slides = tmp_path / "own slides"
    slides.mkdir()
    rows = ["slide_id\tpath\tlabel\tsplit"]
    for split in ("train", "train", "val", "test"):
        for label in ("tumor", "normal"):
            slide_id = f"own_{split}_{label}_{len(rows)}"
            (slides / f"{slide_id}.svs").write_text(slide_id)  # a dry run opens no slide
            rows.append(f"{slide_id}\t{slide_id}.svs\t{label}\t{split}")
    sheet = slides / "sheet.tsv"
    sheet.write_text("\n".join(rows) + "\n")

    def plan(workdir: Path, cwd: Path) -> dict[str, int]:
        workdir.mkdir(exist_ok=True)
        result = subprocess.run(
            [
                sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"),
                "--directory", str(workdir), "-n", "--config", f"sheet={sheet}",
            ],
            cwd=cwd, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        assert "demo_" not in result.stdout
        return planned_jobs(result)

    own = plan(tmp_path / "own run", cwd=first)
    assert own == plan(tmp_path / "empty", cwd=tmp_path)
    assert own["tile"] == len(rows) - 1 and own["check_sheet"] == 1 and own["init_encoder"] == 1
    assert sorted((p, p.stat().st_mtime_ns) for p in first.rglob("*")) == before
    assert [p.name for p in (tmp_path / "own run").iterdir()] == [".snakemake"]
    mixed = plan(first, cwd=first)
    assert "check_sheet" not in mixed and "init_encoder" not in mixed, mixed


def test_feature_quality_runs_where_annotations_exist(tmp_path: Path) -> None:
    """rules/probe.smk: one probe job per round when the sheet names annotations (the demo's do),
    read by rule final; none without them, and rule final passes no probe file. The probe's
    settings reach the probe job only, so changing them re-runs nothing else."""
    demo = snakemake(tmp_path, "-n", "-p")
    assert demo.returncode == 0, demo.stdout + demo.stderr
    rounds = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["rounds"]
    assert planned_jobs(demo)["probe"] == rounds + 1
    probes = " ".join(f"results/r{r}/eval/probe.json" for r in range(rounds + 1))
    assert f"--probe-metrics {probes} --failures" in demo.stdout
    for line in re.findall(r"python -m hnm (?:evaluate|heatmaps|mined|figures) .*", demo.stdout):
        assert "--mil-seeds" not in line and "--probe-c" not in line, line
    assert re.search(r"python -m hnm probe .*--mil-seeds '\[1, 2\]'", demo.stdout)

    slides = tmp_path / "slides"
    slides.mkdir()
    rows = ["slide_id\tpath\tlabel\tsplit"]
    for split in ("train", "train", "val", "test"):
        for label in ("tumor", "normal"):
            slide_id = f"{split}_{label}_{len(rows)}"
            (slides / f"{slide_id}.svs").write_text(slide_id)  # a dry run opens no slide
            rows.append(f"{slide_id}\t{slide_id}.svs\t{label}\t{split}")
    (slides / "sheet.tsv").write_text("\n".join(rows) + "\n")
    workdir = tmp_path / "unannotated"
    workdir.mkdir()
    plain = snakemake(workdir, "-n", "-p", "--config", f"sheet={slides / 'sheet.tsv'}")
    assert plain.returncode == 0, plain.stdout + plain.stderr
    assert "probe" not in planned_jobs(plain)
    assert re.search(r"python -m hnm report .*--probe-metrics\s+--failures", plain.stdout)
