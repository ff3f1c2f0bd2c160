"""Fixtures for the io tests: one small section (circles + integer counts + RGB image) in a zarr store."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

sd = pytest.importorskip("spatialdata")
from io_helpers import make_sdata  # noqa: E402


@pytest.fixture(scope="session")
def base_store(tmp_path_factory) -> Path:
    """Write the one-section SpatialData once (consolidated metadata, zarr v3)."""
    path = tmp_path_factory.mktemp("base") / "sample.zarr"
    make_sdata().write(path)
    return path


@pytest.fixture
def store(base_store: Path, tmp_path: Path) -> Path:
    """Copy the base store for one test."""
    dst = tmp_path / "sample.zarr"
    shutil.copytree(base_store, dst)
    return dst


@pytest.fixture
def backed(store: Path):
    """Read the store back: a SpatialData backed by zarr."""
    return sd.read_zarr(store)
