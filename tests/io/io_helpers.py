"""Builders of small SpatialData objects for the io tests (imported by conftest.py and the tests)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

sd = pytest.importorskip("spatialdata")
from spatialdata.models import Image2DModel, ShapesModel, TableModel  # noqa: E402
from spatialdata.transformations import Scale, get_transformation  # noqa: E402

N_X, N_Y, N_FEAT = 5, 4, 6
SPACING = 10.0


def make_spots(n_x: int = N_X, n_y: int = N_Y, *, cs: str = "global", scale: float = 2.0):
    """Circles on a square lattice, index 0..N-1, Scale to ``cs``."""
    xy = np.array([(x * SPACING + 5.0, y * SPACING + 5.0) for y in range(n_y) for x in range(n_x)])
    return ShapesModel.parse(
        xy,
        geometry=0,
        radius=np.full(len(xy), 3.0),
        transformations={cs: Scale([scale, scale], axes=("x", "y"))},
    )


def make_table(
    region: str | list[str] = "spots",
    n_per_region: int | list[int] = N_X * N_Y,
    *,
    n_feat: int = N_FEAT,
    sparse: bool = False,
    seed: int = 0,
):
    """Integer counts annotating ``region`` (instance ids 0..n-1 in each region)."""
    regions = [region] if isinstance(region, str) else list(region)
    counts = [n_per_region] * len(regions) if isinstance(n_per_region, int) else list(n_per_region)
    n = sum(counts)
    rng = np.random.default_rng(seed)
    x = rng.poisson(3.0, (n, n_feat)).astype(np.float32)
    obs = pd.DataFrame(
        {
            "region": pd.Categorical(np.repeat(regions, counts)),
            "spot_id": np.concatenate([np.arange(c) for c in counts]).astype(np.int64),
        },
        index=[f"cell{i}" for i in range(n)],
    )
    var = pd.DataFrame(index=[f"gene{j}" for j in range(n_feat)])
    adata = ad.AnnData(X=sp.csr_matrix(x) if sparse else x, obs=obs, var=var)
    return TableModel.parse(
        adata, region=regions if len(regions) > 1 else regions[0], region_key="region", instance_key="spot_id"
    )


def make_image(cs: str = "global", *, channels: int = 3, seed: int = 0):
    """Make a small uint8 RGB image (c, y, x) with a Scale transformation to ``cs``."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (channels, 80, 100), dtype=np.uint8)
    return Image2DModel.parse(
        arr, dims=("c", "y", "x"), transformations={cs: Scale([1.0, 1.0], axes=("x", "y"))}
    )


def make_sdata(*, sparse: bool = False, image: bool = True):
    """One section: shapes 'spots', table 'table', image 'he', all in 'global'."""
    return sd.SpatialData(
        shapes={"spots": make_spots()},
        tables={"table": make_table(sparse=sparse)},
        images={"he": make_image()} if image else {},
    )


def make_outputs(sdata, *, spots: str = "spots", key: str = "soscope", factor: float = 0.5):
    """Fake soscope results: 2 sub-spots per spot, a table annotating them, marked as soscope output."""
    parent = sdata.shapes[spots]
    n = len(parent)
    centres = np.array([[p.x, p.y] for p in parent.geometry])
    xy = np.concatenate([centres - 1.0, centres + 1.0])
    sub = ShapesModel.parse(
        xy,
        geometry=0,
        radius=np.full(len(xy), 1.0),
        transformations=get_transformation(parent, get_all=True),
    )
    sub["spot_id"] = np.tile(np.asarray(parent.index), 2)
    sub["subspot"] = np.repeat([0, 1], n)
    name = f"{spots}_{key}"
    x = np.full((2 * n, N_FEAT), factor, np.float32)
    obs = pd.DataFrame(
        {"region": pd.Categorical([name] * (2 * n)), "subspot_id": np.arange(2 * n, dtype=np.int64)},
        index=[f"sub{i}" for i in range(2 * n)],
    )
    adata = ad.AnnData(X=x, obs=obs, var=pd.DataFrame(index=[f"gene{j}" for j in range(N_FEAT)]))
    adata.uns["soscope"] = {"version": "test", "factor": factor}
    table = TableModel.parse(adata, region=name, region_key="region", instance_key="subspot_id")
    return {name: sub}, {f"table_{key}": table}


def tree_digest(root: Path) -> dict[str, str]:
    """Relative path → sha1 of every file under ``root`` (directories included as '<dir>')."""
    out = {}
    for p in sorted(Path(root).rglob("*")):
        rel = p.relative_to(root).as_posix()
        out[rel] = "<dir>" if p.is_dir() else hashlib.sha1(p.read_bytes()).hexdigest()
    return out
