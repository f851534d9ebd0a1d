"""Fixtures shared by the integration tests."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def shm():
    """A scratch folder on tmpfs when there is one: the embedded Qdrant engine is disk-bound."""
    root = Path(tempfile.mkdtemp(prefix="vectune-it-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
    yield root
    shutil.rmtree(root, ignore_errors=True)
