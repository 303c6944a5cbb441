"""Shared fixtures: the real slides in ../shared/slides, and small synthetic slides made on demand."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# ../shared/slides beside the repository; HNM_TEST_SLIDES points elsewhere (e.g. on a GPU machine).
SHARED_SLIDES = Path(os.environ.get("HNM_TEST_SLIDES", REPO.parent / "shared" / "slides"))


@pytest.fixture(scope="session")
def shared_slides() -> Path:
    """The folder of real slide files; tests that need it skip, saying why, where it is absent."""
    if not (SHARED_SLIDES / "cmu-1-small-region.svs").exists():
        pytest.skip(f"real test slides not found at {SHARED_SLIDES} (../shared/slides beside the repo)")
    return SHARED_SLIDES


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO
