"""Fixtures for the inventory tests (helpers live in inventory_testlib)."""

from __future__ import annotations

from pathlib import Path

import pytest
from inventory_testlib import EXAMPLES


@pytest.fixture
def seed_text() -> str:
    return (EXAMPLES / "seed-cluster.yaml").read_text()


@pytest.fixture
def local_text() -> str:
    return (EXAMPLES / "local.yaml").read_text()


@pytest.fixture
def write(tmp_path):
    """write(text, name=...) -> path of a new inventory file holding ``text``."""
    def _write(text: str | bytes, name: str = "cluster.yaml") -> Path:
        path = tmp_path / name
        path.write_bytes(text.encode() if isinstance(text, str) else text)
        return path
    return _write
