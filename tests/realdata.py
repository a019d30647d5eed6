"""Where the shared real data live: ``../shared/realdata/`` beside the repository, or
``CLSMON_REALDATA``. Tests that need it skip with the folder's name when it is absent (it is
present on the team's machines and in CI, so they run there)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def realdata_dir() -> Path:
    """The shared real-data folder (it may not exist)."""
    return Path(os.environ.get("CLSMON_REALDATA") or ROOT.parent / "shared" / "realdata")


def need(relative: str) -> Path:
    """``realdata_dir() / relative``, or skip the test naming the missing folder."""
    path = realdata_dir() / relative
    if not path.exists():
        pytest.skip(f"real data not found: {path} is missing (set CLSMON_REALDATA to the "
                    "folder holding mimic3-demo/ and mimic3-demo-review.csv)")
    return path
