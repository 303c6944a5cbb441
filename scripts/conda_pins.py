#!/usr/bin/env python3
"""The conda-pins test tier's package versions, derived from envs/*.yaml.

`snakemake --use-conda` builds its environments from envs/*.yaml (conda-forge), while .venv and CI
run requirements.txt's newer releases. The conda-pins tier (scripts/setup-venv-conda-pins.sh,
`bash scripts/test.sh --conda-pins`) installs, with pip, the versions the envs pin, so that the
code also runs with what a conda user gets. This file is the one place that turns the envs' pins
into pip requirements, so the tier can never drift from the envs:

    python3 scripts/conda_pins.py requirements   the tier's requirements file, on stdout
    python3 scripts/conda_pins.py table          conda pin -> pip pin, one line per package
    python3 scripts/conda_pins.py verify         in the tier's Python: every pin is installed
    python3 scripts/conda_pins.py check          pyproject.toml's lower bounds are the envs' pins

Standard library only: it runs before any virtualenv exists (the env files are read with a small
parser of conda's list form, which tests/test_conda_pins.py checks against PyYAML).
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# conda-forge name -> PyPI name, where the two differ. The C libraries that conda-forge ships as
# packages of their own come on PyPI as wheels of the same library version.
CONDA_TO_PIP = {
    "pytorch": "torch",
    "openslide": "openslide-bin",  # the OpenSlide C library
    "libvips": "pyvips-binary",  # the libvips C library, for pyvips
    "matplotlib-base": "matplotlib",  # conda-forge's matplotlib without the Qt backend
    "pyyaml": "PyYAML",
}
# conda packages that are no pip package: the interpreter is the virtualenv's own.
NOT_PIP = {"python"}


@dataclass(frozen=True)
class Override:
    """A package the tier cannot install at the envs' version, the version it runs instead and
    why (README.md and docs/software.md say the same)."""

    version: str
    why: str


# Every package not named here is installed at exactly the envs' version.
OVERRIDES = {
    "torch": Override(
        "2.13.0",
        "PyPI's torch 2.6.0 for Linux x86-64 is a CUDA build, 3.1 GB of wheels (torch 767 MB, "
        "13 nvidia-* wheels 2.0 GB, triton 253 MB), too large for CI, as is every older torch "
        "there; 2.13.0, the version requirements.txt runs, is the only CPU build the project's "
        "test machines hold",
    ),
}


# requirements.txt packages the tier leaves out. With --use-conda, Snakemake and its executor
# plugins run in the user's own Snakemake environment, never in envs/*.yaml's: what they require
# does not bind the envs, and where it conflicts with an env's pin the tier goes without them.
LEFT_OUT = {
    "snakemake-executor-plugin-slurm": "2.8 requires numpy>=2.4.5 and pandas>=2.3.3, above the "
    "envs' numpy 2.2 and pandas 2.2 (the SLURM dry run is left out of the tier with it)",
}


@dataclass(frozen=True)
class Pin:
    """One package as the envs pin it: conda's `name =version` means version.* (any release
    whose version starts with it)."""

    pip_name: str
    conda_name: str
    version: str
    envs: tuple[str, ...]

    @property
    def spec(self) -> str:
        """The pip requirement of this conda pin."""
        return f"{self.pip_name}=={self.version}.*"


def normalize(name: str) -> str:
    """PEP 503's normal form of a package name (PyYAML, pyyaml and py_yaml are one package)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def env_dependencies(path: Path) -> list[str]:
    """The `dependencies:` list of a conda env file, comments stripped: ["numpy =2.2", ...]."""
    items: list[str] = []
    inside = False
    for line in path.read_text().splitlines():
        text = line.split("#", 1)[0].rstrip()
        if not text.strip():
            continue
        if not text.startswith((" ", "-")):  # a top-level key
            inside = text.strip() == "dependencies:"
            continue
        item = re.match(r"\s*-\s+(.+)$", text)
        if inside and item:
            items.append(item.group(1).strip())
    return items


def parse_dependency(dep: str) -> tuple[str, str]:
    """`name =2.2` or `name=2.2` or `name ==2.2.1` -> (name, "2.2"); anything else is an error,
    since an unpinned or range dependency gives the tier no version to install."""
    match = re.fullmatch(r"([A-Za-z0-9_.\-]+)\s*==?\s*(\d[\w.]*)", dep)
    if not match:
        raise ValueError(f"not a `name =version` pin: {dep!r}")
    return match.group(1), match.group(2)


def pip_dependencies(envs: Path) -> Iterator[tuple[Path, str, str, str]]:
    """(env file, conda name, pinned version, pip name) of every pip-installable dependency of
    every env, in file order: what both the tier's pins and the bound check read."""
    for path in sorted(envs.glob("*.yaml")):
        for dep in env_dependencies(path):
            conda_name, version = parse_dependency(dep)
            if conda_name not in NOT_PIP:
                yield path, conda_name, version, CONDA_TO_PIP.get(conda_name, conda_name)


def env_pins(envs: Path = REPO / "envs") -> dict[str, Pin]:
    """pip name (normalized) -> the envs' pin. Every env must pin a package at the same version:
    one virtualenv can prove only one version of it."""
    seen: dict[str, Pin] = {}
    for path, conda_name, version, pip_name in pip_dependencies(envs):
        key = normalize(pip_name)
        if key in seen and seen[key].version != version:
            raise ValueError(
                f"{conda_name}: {path.name} pins {version}, {', '.join(seen[key].envs)} "
                f"{seen[key].version}; the conda-pins tier needs one version"
            )
        envs_so_far = seen[key].envs if key in seen else ()
        seen[key] = Pin(pip_name, conda_name, version, (*envs_so_far, path.name))
    return seen


def tier_specs(pins: dict[str, Pin] | None = None) -> dict[str, str]:
    """pip name (normalized) -> the requirement the tier installs: the envs' pin, or the override."""
    pins = env_pins() if pins is None else pins
    specs = {}
    for key, pin in pins.items():
        override = OVERRIDES.get(pin.pip_name)
        specs[key] = f"{pin.pip_name}=={override.version}" if override else pin.spec
    return specs


def requirement_name(line: str) -> str | None:
    """The normalized package name of a requirements.txt line; None for comments and blanks."""
    text = line.split("#", 1)[0].strip()
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9_.\-]*", text)
    return normalize(match.group(0)) if match else None


def tier_requirements(requirements: Path = REPO / "requirements.txt") -> list[str]:
    """The tier's requirements: the envs' pins, and requirements.txt's exact versions of everything
    the envs do not name (snakemake, pytest, ruff and the packages' own dependencies) but LEFT_OUT."""
    specs = tier_specs()
    left_out = {normalize(name) for name in LEFT_OUT}
    rest = [
        line.strip()
        for line in requirements.read_text().splitlines()
        if (name := requirement_name(line)) and name not in specs and name not in left_out
    ]
    return [*sorted(specs.values(), key=str.lower), *rest]


def matches(version: str, spec: str) -> bool:
    """Whether an installed version satisfies `==X.Y.*` or `==X.Y.Z` (a local tag like +cpu is
    ignored, as pip does)."""
    wanted = spec.split("==", 1)[1]
    release = version.split("+", 1)[0]
    if wanted.endswith(".*"):
        return (release + ".").startswith(wanted[:-1])
    return release == wanted


def verify() -> list[str]:
    """The problems with the running interpreter's packages: a pin not installed, or installed at
    another version. Empty when the tier holds exactly what it should."""
    problems = []
    for spec in tier_specs().values():
        name = spec.split("==", 1)[0]
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            problems.append(f"{name}: not installed (wanted {spec})")
            continue
        if not matches(installed, spec):
            problems.append(f"{name}: {installed} installed, wanted {spec}")
    return problems


def release(version: str) -> tuple[int, ...]:
    """A dotted version as numbers for comparing, trailing zeros dropped (6 == 6.0)."""
    parts = [int(part) for part in re.findall(r"\d+", version)]
    while parts and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def lower_bounds(pyproject: Path = REPO / "pyproject.toml") -> dict[str, str | None]:
    """Normalized name -> the `>=` bound of every dependency pyproject.toml declares, extras
    included (None where it has no lower bound)."""
    project = tomllib.loads(pyproject.read_text())["project"]
    declared = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        declared += extra
    bounds: dict[str, str | None] = {}
    for requirement in declared:
        name = re.match(r"[A-Za-z0-9][A-Za-z0-9_.\-]*", requirement)
        bound = re.search(r">=\s*([\w.]+)", requirement)
        if name:
            bounds[normalize(name.group(0))] = bound.group(1) if bound else None
    return bounds


def bound_problems(
    envs: Path = REPO / "envs",
    pyproject: Path = REPO / "pyproject.toml",
    requirements: Path = REPO / "requirements.txt",
) -> list[str]:
    """Where the pins disagree; empty when they mean what docs/software.md says they mean:

    - every package an env pins is declared in pyproject.toml with a lower bound;
    - no env pins a package below that bound (a conda user would run an untested older release);
    - the bound is the envs' version, the one the conda-pins tier runs (a bound below it is
      proven by nothing; for a package in OVERRIDES the tier runs the override instead);
    - requirements.txt (.venv, CI) pins no package below the bound either.
    """
    bounds = lower_bounds(pyproject)
    problems = []
    for path, conda_name, version, pip_name in pip_dependencies(envs):
        key = normalize(pip_name)
        if key not in bounds:
            problems.append(f"{path.name} pins {conda_name}, which pyproject.toml lacks")
        elif bounds[key] is None:
            problems.append(f"pyproject.toml's {pip_name} has no >= bound")
        elif release(version) < release(bounds[key]):
            problems.append(
                f"{path.name} pins {conda_name} ={version}, below pyproject.toml's "
                f"{pip_name}>={bounds[key]}"
            )
        elif release(version) > release(bounds[key]):
            proves = (
                f"(the conda-pins tier runs {OVERRIDES[pip_name].version} instead)"
                if pip_name in OVERRIDES
                else "the version the conda-pins tier proves"
            )
            problems.append(
                f"pyproject.toml's {pip_name}>={bounds[key]} is below {path.name}'s "
                f"{conda_name} ={version}, {proves}: raise it"
            )
    for line in requirements.read_text().splitlines():
        name = requirement_name(line)
        pinned = re.search(r"==\s*([\w.]+)", line.split("#", 1)[0])
        if name in bounds and bounds[name] and pinned:
            if release(pinned.group(1)) < release(bounds[name]):
                problems.append(
                    f"requirements.txt pins {line.strip()}, below pyproject.toml's >={bounds[name]}"
                )
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["requirements", "table", "verify", "check"])
    args = parser.parse_args(argv)
    if args.command == "requirements":
        print("# The conda-pins tier: generated by scripts/conda_pins.py from envs/*.yaml and")
        print("# requirements.txt; do not edit (edit the envs).")
        print("\n".join(tier_requirements()))
    elif args.command == "table":
        specs = tier_specs()
        for key, pin in sorted(env_pins().items()):
            note = (
                f"  (envs: {pin.version}; {OVERRIDES[pin.pip_name].why})"
                if pin.pip_name in OVERRIDES
                else ""
            )
            print(f"{pin.conda_name + ' =' + pin.version:<24} -> {specs[key]}{note}")
    elif args.command == "check":
        problems = bound_problems()
        for problem in problems:
            print(problem, file=sys.stderr)
        return 1 if problems else 0
    else:
        problems = verify()
        for problem in problems:
            print(f"conda-pins tier: {problem}", file=sys.stderr)
        if problems:
            return 1
        print(f"conda-pins tier: all {len(tier_specs())} pins installed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
