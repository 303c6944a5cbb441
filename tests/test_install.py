"""`pip install .` alone gives a working hnm: every module imports and the workflow plans.

requirements.txt pins what CI runs; pyproject.toml is what a user's `pip install .` gets. A module
that imports a package pyproject.toml does not declare (matplotlib once was one) passes every
other test, which run in the pinned virtualenv, and fails only for the user; this test installs
the package into a fresh virtualenv from pyproject.toml alone (no requirements.txt) and imports
every module of it from there.
"""

from __future__ import annotations

import shutil
import subprocess
import venv
from pathlib import Path

import pytest

from tests.workflow_runner import REPO

pytestmark = pytest.mark.slow


IMPORT_ALL = """
import importlib, pkgutil, sys
import hnm
failed = []
for module in pkgutil.walk_packages(hnm.__path__, "hnm."):
    if module.name == "hnm.__main__":  # runs the CLI
        continue
    try:
        importlib.import_module(module.name)
    except Exception as error:
        failed.append(f"{module.name}: {type(error).__name__}: {error}")
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""


def test_pip_install_dot_imports_every_module_and_plans(tmp_path: Path) -> None:
    # a copy of what git tracks, so the build leaves nothing in the checkout (setuptools builds
    # in the source tree) and nothing untracked (a local results/ or .venv/) leaks into it
    source = tmp_path / "source"
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True
    ).stdout.split(b"\0")
    for name in filter(None, (item.decode() for item in tracked)):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, source / name)
    env = tmp_path / "venv"
    venv.create(env, with_pip=True)
    python = env / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", f"{source}[workflow]"],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    # from a folder outside the checkout, so the installed copy is what imports
    imported = subprocess.run(
        [str(python), "-c", IMPORT_ALL],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
    )
    assert imported.returncode == 0, imported.stdout + imported.stderr[-3000:]
    located = subprocess.run(
        [str(python), "-c", "import hnm; print(hnm.__file__)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert str(env) in located.stdout, located.stdout
    planned = subprocess.run(
        [str(env / "bin" / "snakemake"), "-s", str(REPO / "Snakefile"), "-d", str(tmp_path / "run")]
        + ["-n", "--quiet", "all"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert planned.returncode == 0, planned.stdout[-2000:] + planned.stderr[-3000:]
