"""Synthetic spot layouts for the geometry tests (factories, so each test picks its own size)."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import shapely


def _rotate(xy: np.ndarray, theta: float) -> np.ndarray:
    c, s = np.cos(theta), np.sin(theta)
    return xy @ np.array([[c, s], [-s, c]])


def hex_centres(
    n_rows: int, n_cols: int, spacing: float = 100.0, theta: float = 0.0, origin=(1000.0, 2000.0)
) -> np.ndarray:
    """Visium-like hexagonal lattice: rows offset by half a spacing; first neighbour at angle theta."""
    rows, cols = np.meshgrid(np.arange(n_rows), np.arange(n_cols), indexing="ij")
    x = cols * spacing + (rows % 2) * spacing / 2
    y = rows * spacing * np.sqrt(3) / 2
    return _rotate(np.stack([x.ravel(), y.ravel()], axis=1), theta) + np.asarray(origin)


@pytest.fixture
def hex_circles():
    """``hex_circles(n_rows, n_cols, spacing=100, radius=27.5, theta=0, scale=1, jitter=0)``."""

    def make(n_rows=12, n_cols=12, spacing=100.0, radius=27.5, theta=0.0, scale=1.0, jitter=0.0, seed=0):
        xy = hex_centres(n_rows, n_cols, spacing, theta) * scale
        if jitter:
            xy = xy + np.random.default_rng(seed).uniform(-jitter, jitter, xy.shape)
        return gpd.GeoDataFrame(
            {"radius": np.full(len(xy), radius * scale)},
            geometry=gpd.points_from_xy(xy[:, 0], xy[:, 1]),
            index=[f"spot{i}" for i in range(len(xy))],
        )

    return make


@pytest.fixture
def square_spots():
    """``square_spots(n, side=8, theta=0, aspect=1)``: an n x n grid of touching squares/rectangles."""

    def make(n=6, side=8.0, theta=0.0, aspect=1.0, origin=(50.0, 70.0)):
        rows, cols = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        centres = np.stack([cols.ravel() * side, rows.ravel() * side * aspect], axis=1)
        half = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * [side / 2, side * aspect / 2]
        corners = _rotate(centres[:, None, :] + half[None], theta) + np.asarray(origin)
        polys = shapely.polygons(np.concatenate([corners, corners[:, :1]], axis=1))
        return gpd.GeoDataFrame({"id": np.arange(n * n)}, geometry=polys)

    return make


@pytest.fixture
def square_circles():
    """Circles on a square lattice (DBiT-like pixels drawn as circles)."""

    def make(n=8, spacing=10.0, radius=4.0):
        rows, cols = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        return gpd.GeoDataFrame(
            {"radius": np.full(n * n, radius)},
            geometry=gpd.points_from_xy(cols.ravel() * spacing, rows.ravel() * spacing),
        )

    return make
