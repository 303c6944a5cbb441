"""The conda-pins tier's pins (scripts/conda_pins.py) and the check that gives them meaning.

The tier installs with pip the versions envs/*.yaml pin, so that the code runs, in CI, with what
`snakemake --use-conda` gives a user. These tests are static (no virtualenv is built here;
`bash scripts/test.sh --conda-pins` builds one and runs the tests in it): the pins are read from
the envs as conda reads them, each env pin becomes exactly one pip pin, and pyproject.toml's lower
bounds equal the envs' versions, so that an env pinned below a bound, or a bound that nothing
proves, fails here.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def _load_conda_pins() -> ModuleType:
    """scripts/conda_pins.py as a module (scripts/ is no package: the file must run with a bare
    python3, before any virtualenv exists)."""
    spec = importlib.util.spec_from_file_location("conda_pins", REPO / "scripts" / "conda_pins.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


conda_pins = _load_conda_pins()
ENVS = sorted((REPO / "envs").glob("*.yaml"))


def yaml_dependencies(path: Path) -> list[str]:
    return [" ".join(dep.split()) for dep in yaml.safe_load(path.read_text())["dependencies"]]


def test_env_files_are_read_as_yaml_reads_them() -> None:
    assert len(ENVS) >= 4
    for path in ENVS:
        ours = [" ".join(dep.split()) for dep in conda_pins.env_dependencies(path)]
        assert ours == yaml_dependencies(path), path.name


def test_every_env_pin_becomes_one_pip_pin_of_the_tier() -> None:
    requirements = conda_pins.tier_requirements()
    names = [conda_pins.requirement_name(line) for line in requirements]
    assert len(names) == len(set(names)), "a package pinned twice"
    by_name = dict(zip(names, requirements))
    for path in ENVS:
        for dep in yaml_dependencies(path):
            conda_name, version = re.fullmatch(r"(\S+) =(\S+)", dep).groups()
            if conda_name == "python":
                assert "python" not in by_name
                continue
            pip_name = conda_pins.CONDA_TO_PIP.get(conda_name, conda_name)
            wanted = (
                f"{pip_name}=={conda_pins.OVERRIDES[pip_name].version}"
                if pip_name in conda_pins.OVERRIDES
                else f"{pip_name}=={version}.*"
            )
            assert by_name[conda_pins.normalize(pip_name)] == wanted, (path.name, dep)
    # the names conda-forge gives otherwise
    assert by_name["torch"] == "torch==2.13.0"
    assert by_name["openslide-bin"] == "openslide-bin==4.0.*"
    assert by_name["pyvips-binary"] == "pyvips-binary==8.16.*"
    assert by_name["matplotlib"] == "matplotlib==3.10.*"
    # everything else at requirements.txt's versions, but what the tier leaves out
    for line in (REPO / "requirements.txt").read_text().splitlines():
        name = conda_pins.requirement_name(line)
        if name is None or name in conda_pins.tier_specs():
            continue
        if name in {conda_pins.normalize(left) for left in conda_pins.LEFT_OUT}:
            assert name not in by_name
        else:
            assert by_name[name] == line.strip()


def test_overrides_and_exclusions_name_packages_that_exist() -> None:
    """A stale entry (an override of a package no env pins, or the exclusion of one
    requirements.txt no longer lists) would silently do nothing."""
    pinned = {pin.pip_name for pin in conda_pins.env_pins().values()}
    assert set(conda_pins.OVERRIDES) <= pinned
    listed = {
        conda_pins.requirement_name(line)
        for line in (REPO / "requirements.txt").read_text().splitlines()
    }
    assert {conda_pins.normalize(name) for name in conda_pins.LEFT_OUT} <= listed
    used = {dep.split()[0] for path in ENVS for dep in yaml_dependencies(path)}
    assert set(conda_pins.CONDA_TO_PIP) <= used


def test_two_envs_pinning_one_package_differently_are_refused(tmp_path: Path) -> None:
    """One virtualenv can prove one version of a package, so the envs must agree."""
    for path in ENVS:
        shutil.copy(path, tmp_path / path.name)
    viz = tmp_path / "viz.yaml"
    viz.write_text(viz.read_text().replace("scipy =1.15", "scipy =1.16"))
    with pytest.raises(ValueError, match=r"scipy: viz.yaml pins 1.16, .*report.yaml.* 1.15"):
        conda_pins.env_pins(tmp_path)


def test_pyproject_lower_bounds_are_the_envs_pins() -> None:
    assert conda_pins.bound_problems() == []


@pytest.mark.parametrize(
    ("file", "old", "new", "said"),
    [
        (
            "envs/report.yaml",
            "numpy =2.2",
            "numpy =2.1",
            "report.yaml pins numpy =2.1, below pyproject.toml's numpy>=2.2",
        ),
        (
            "envs/torch.yaml",
            "pytorch =2.6",
            "pytorch =2.5",
            "torch.yaml pins pytorch =2.5, below pyproject.toml's torch>=2.6",
        ),
        (
            "pyproject.toml",
            '"pandas>=2.2"',
            '"pandas>=2.1"',
            "pyproject.toml's pandas>=2.1 is below report.yaml's pandas =2.2, the version the "
            "conda-pins tier proves: raise it",
        ),
        ("envs/viz.yaml", "  - pyyaml =6.0", "  - pyyaml =6.0\n  - zarr =2.18", "zarr"),
        (
            "requirements.txt",
            "scipy==1.17.1",
            "scipy==1.14.1",
            "requirements.txt pins scipy==1.14.1, below pyproject.toml's >=1.15",
        ),
    ],
    ids=[
        "env-below-bound",
        "torch-env-below-bound",
        "bound-below-envs",
        "undeclared",
        "venv-below",
    ],
)
def test_the_check_names_each_kind_of_disagreement(
    file: str, old: str, new: str, said: str, tmp_path: Path
) -> None:
    for name in ("envs", "pyproject.toml", "requirements.txt"):
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, tmp_path / name)
        else:
            shutil.copy(source, tmp_path / name)
    changed = tmp_path / file
    assert old in changed.read_text()
    changed.write_text(changed.read_text().replace(old, new))
    problems = conda_pins.bound_problems(
        tmp_path / "envs", tmp_path / "pyproject.toml", tmp_path / "requirements.txt"
    )
    # one problem, said once per env file that pins the package
    assert problems and said in problems[0], problems
    assert len({re.sub(r"\w+\.yaml", "ENV", problem) for problem in problems}) == 1, problems
    if file == "envs/viz.yaml":
        assert problems == ["viz.yaml pins zarr, which pyproject.toml lacks"]


@pytest.mark.parametrize(
    ("version", "spec", "wanted"),
    [
        ("2.2.6", "numpy==2.2.*", True),
        ("2.2", "numpy==2.2.*", True),
        ("2.20.0", "numpy==2.2.*", False),
        ("2.4.6", "numpy==2.2.*", False),
        ("19.0.1", "pyarrow==19.*", True),
        ("190.0", "pyarrow==19.*", False),
        ("2.13.0+cpu", "torch==2.13.0", True),
        ("2.13.1", "torch==2.13.0", False),
    ],
)
def test_installed_versions_match_pins_as_pip_reads_them(
    version: str, spec: str, wanted: bool
) -> None:
    assert conda_pins.matches(version, spec) is wanted


def test_verify_names_every_pin_the_interpreter_lacks(monkeypatch: pytest.MonkeyPatch) -> None:
    """What scripts/test.sh --conda-pins runs before the tests: a tier holding another version
    (here, requirements.txt's numpy, and no pandas) is refused, naming each difference."""
    specs = conda_pins.tier_specs()
    installed = {
        spec.split("==")[0]: spec.split("==")[1].replace("*", "9") for spec in specs.values()
    }
    installed["numpy"] = "2.4.6"
    del installed["pandas"]

    def version(name: str) -> str:
        if name not in installed:
            raise conda_pins.metadata.PackageNotFoundError(name)
        return installed[name]

    monkeypatch.setattr(conda_pins.metadata, "version", version)
    assert conda_pins.verify() == [
        "numpy: 2.4.6 installed, wanted numpy==2.2.*",
        "pandas: not installed (wanted pandas==2.2.*)",
    ]
    installed["numpy"] = "2.2.6"
    installed["pandas"] = "2.2.3"
    assert conda_pins.verify() == []
