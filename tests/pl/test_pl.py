"""Plots: spots vs enhanced sub-spots maps, training curves, accuracy distributions.

The SpatialData is built here with the layout :func:`soscope.enhance` writes back (shapes
``<spots>_soscope`` with ``spot_id`` / ``subspot`` columns, table ``<table>_soscope`` whose instance key
matches the shapes' index, ``X`` = expected counts per sub-spot polygon), so these tests do not depend on
the model.
"""

from __future__ import annotations

import anndata as ad
import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
from matplotlib.image import imread
from spatialdata import SpatialData
from spatialdata.models import Image2DModel, ShapesModel, TableModel
from spatialdata.transformations import Scale

from soscope import pl
from soscope._errors import SoscopeInputError

SCALE = 2.0  # intrinsic units → "global"
SIDE = 10.0  # spot side / circle diameter (intrinsic)


def _squares(cx: np.ndarray, cy: np.ndarray, half: float) -> np.ndarray:
    return shapely.box(cx - half, cy - half, cx + half, cy + half)


def _toy(
    n: int = 12, kind: str = "square", image: bool = True, n_features: int = 6, seed: int = 0
) -> SpatialData:
    """n×n spots, each split into 2×2 square sub-spots; enhanced X = even split (parent density × area)."""
    rng = np.random.default_rng(seed)
    jj, ii = np.meshgrid(np.arange(n), np.arange(n))
    cx = (jj.ravel() + 0.5) * SIDE
    cy = (ii.ravel() + 0.5) * SIDE
    n_spots = cx.size
    tf = {"global": Scale([SCALE, SCALE], axes=("x", "y"))}
    if kind == "circle":
        spots = gpd.GeoDataFrame(
            {"radius": np.full(n_spots, SIDE * 0.275)},
            geometry=shapely.points(cx, cy),
            index=np.arange(n_spots),
        )
        foot_area = np.pi * (SIDE * 0.275) ** 2 * SCALE**2
    else:
        spots = gpd.GeoDataFrame(geometry=_squares(cx, cy, SIDE / 2), index=np.arange(n_spots))
        foot_area = SIDE**2 * SCALE**2
    spots = ShapesModel.parse(spots, transformations=tf)

    var = pd.DataFrame(index=[f"gene_{i}" for i in range(n_features)])
    counts = rng.poisson(rng.uniform(2, 40, (n_spots, n_features))).astype(np.float32)
    obs = pd.DataFrame({"region": pd.Categorical(["spots"] * n_spots), "spot_id": np.arange(n_spots)})
    obs.index = obs.index.astype(str)
    table = TableModel.parse(
        ad.AnnData(counts, obs=obs, var=var), region="spots", region_key="region", instance_key="spot_id"
    )

    # 2x2 sub-spots tiling each spot's lattice cell
    offs = np.array([[-1, -1], [1, -1], [-1, 1], [1, 1]]) * SIDE / 4
    sx = (cx[:, None] + offs[:, 0]).ravel()
    sy = (cy[:, None] + offs[:, 1]).ravel()
    parent = np.repeat(np.arange(n_spots), 4)
    sub_idx = np.tile(np.arange(4), n_spots)
    geoms = _squares(sx, sy, SIDE / 4)
    sub_area = (SIDE / 2) ** 2 * SCALE**2
    density = counts / foot_area
    expected = (density[parent] * sub_area).astype(np.float32)

    def subspot_elements(name: str, x: np.ndarray, marker: dict | None):
        gdf = gpd.GeoDataFrame(
            {"spot_id": parent, "subspot": sub_idx},
            geometry=geoms,
            index=pd.RangeIndex(len(parent), name="subspot_id"),
        )
        gdf = ShapesModel.parse(gdf, transformations=tf)
        o = pd.DataFrame(
            {
                "spot_id": parent,
                "subspot": sub_idx,
                "region": pd.Categorical([name] * len(parent)),
                "subspot_id": np.arange(len(parent)),
            }
        )
        o.index = o.index.astype(str)
        a = ad.AnnData(x, obs=o, var=var.copy())
        if marker is not None:
            a.uns["soscope"] = marker
        return gdf, TableModel.parse(a, region=name, region_key="region", instance_key="subspot_id")

    history = {
        "epoch": list(range(40)),
        "train_loss": list(np.linspace(10, 2, 40)),
        "validation_loss": list(np.linspace(11, 2.5, 40)),
        "lr": list(np.full(40, 1e-3)),
        "best_epoch": 35,
    }
    enh_shapes, enh_table = subspot_elements(
        "spots_soscope", expected, {"history": history, "likelihood": "nb"}
    )
    truth_x = rng.poisson(expected * rng.uniform(0.5, 1.5, expected.shape)).astype(np.float32)
    truth_shapes, truth_table = subspot_elements("spots_truth_subspots", truth_x, None)

    images = {}
    if image:
        h = w = int(n * SIDE)
        yy, xx = np.mgrid[0:h, 0:w]
        rgb = np.stack([(xx * 255 // w), (yy * 255 // h), np.full_like(xx, 128)]).astype(np.uint8)
        images["image"] = Image2DModel.parse(
            rgb, dims=("c", "y", "x"), scale_factors=[2, 2], transformations=tf
        )
    return SpatialData(
        images=images,
        shapes={"spots": spots, "spots_soscope": enh_shapes, "spots_truth_subspots": truth_shapes},
        tables={"table": table, "table_soscope": enh_table, "truth": truth_table},
    )


@pytest.fixture(scope="module")
def toy() -> SpatialData:
    """Return a 12x12 grid of square spots with enhanced and truth sub-spots and an RGB image."""
    return _toy()


def _png_ok(path, min_bytes: int = 10_000) -> tuple[int, int]:
    assert path.is_file()
    assert path.stat().st_size > min_bytes, f"{path} is only {path.stat().st_size} bytes"
    img = imread(path)
    return img.shape[0], img.shape[1]


# --------------------------------------------------------------------------------------------- enhanced
def test_enhanced_writes_png(toy, tmp_path):
    """Two features → two rows of spots | soscope panels, saved with the figure's pixel size."""
    out = tmp_path / "maps.png"
    fig = pl.enhanced(toy, ["gene_0", "gene_1"], save=out, dpi=80)
    h, w = _png_ok(out)
    fw, fh = fig.get_size_inches() * 80
    assert abs(w - fw) <= 2 and abs(h - fh) <= 2
    assert w > h  # two panels side by side per feature, two feature rows
    panels = [a for a in fig.axes if a.get_label() != "<colorbar>"]
    assert len(panels) == 4
    assert [p.get_title().split(" ")[0] for p in panels[:2]] == ["spots", "soscope"]
    assert [p.get_ylabel() for p in panels] == ["gene_0", "", "gene_1", ""]


def test_enhanced_values_per_unit_area_share_one_scale(toy):
    """Enhanced X is the even split here, so every sub-spot shows exactly its parent's density."""
    # the values drawn: matplotlib's arrays (test_pl_backends.py: spatialdata-plot draws the same colours)
    fig = pl.enhanced(toy, "gene_3", show_image=False, backend="matplotlib")
    spot_ax, sub_ax = [a for a in fig.axes if a.get_label() != "<colorbar>"]
    spot_vals = np.asarray(spot_ax.collections[0].get_array())
    sub_vals = np.asarray(sub_ax.collections[0].get_array())
    counts = toy.tables["table"].X[:, 3]
    np.testing.assert_allclose(spot_vals, counts / (SIDE**2 * SCALE**2), rtol=1e-6)
    np.testing.assert_allclose(sub_vals, np.repeat(spot_vals, 4), rtol=1e-5)
    assert spot_ax.collections[0].norm.vmax == sub_ax.collections[0].norm.vmax


def test_enhanced_circles_use_footprint_area():
    """Circles are coloured by counts / (pi r^2) in the coordinate system's units."""
    sdata = _toy(n=6, kind="circle", image=False)
    fig = pl.enhanced(sdata, "gene_0", backend="matplotlib")
    spot_ax = fig.axes[0]
    vals = np.asarray(spot_ax.collections[0].get_array())
    r = SIDE * 0.275
    np.testing.assert_allclose(vals, sdata.tables["table"].X[:, 0] / (np.pi * r**2 * SCALE**2), rtol=1e-6)


def test_enhanced_truth_panel_and_image(toy, tmp_path):
    """A truth table adds a third panel; the image is drawn under every panel unless disabled."""
    fig = pl.enhanced(toy, ["gene_0"], truth="truth", save=tmp_path / "t.png")
    panels = [a for a in fig.axes if a.get_label() != "<colorbar>"]
    assert len(panels) == 3
    assert "truth" in panels[2].get_title()
    assert all(len(a.images) == 1 for a in panels)  # the image is drawn under every panel
    no_img = pl.enhanced(toy, ["gene_0"], show_image=False)
    assert all(len(a.images) == 0 for a in no_img.axes)
    _png_ok(tmp_path / "t.png")


def test_enhanced_image_is_mapped_to_the_coordinate_system(toy):
    """The image is placed with its transformation to the coordinate system."""
    fig = pl.enhanced(toy, "gene_0")
    im = fig.axes[0].images[0]
    # the image's transform takes scale0 pixels to "global": the far corner lands on the spots' far corner
    far = im.get_transform().transform([[SIDE * 12, SIDE * 12]]) - fig.axes[0].transData.transform([[0, 0]])
    expected = fig.axes[0].transData.transform([[SIDE * 12 * SCALE] * 2]) - fig.axes[0].transData.transform(
        [[0, 0]]
    )
    np.testing.assert_allclose(far, expected, rtol=1e-6)


def test_enhanced_into_given_axes(toy):
    """Drawing into the caller's Axes; a wrong number of Axes is a clear error."""
    from matplotlib.figure import Figure

    fig = Figure()
    axes = fig.subplots(1, 2)
    out = pl.enhanced(toy, "gene_2", ax=axes)
    assert out is fig
    with pytest.raises(SoscopeInputError, match="must hold 2 Axes"):
        pl.enhanced(toy, "gene_2", ax=axes[:1])


def test_enhanced_errors_name_what_to_do(toy):
    """Unknown features, key_added, truth, or no output at all: errors say what to pass."""
    with pytest.raises(SoscopeInputError, match="close matches: \\['gene_1'"):
        pl.enhanced(toy, "gene_1x")
    with pytest.raises(SoscopeInputError, match="key_added"):
        pl.enhanced(toy, "gene_1", key_added="other")
    with pytest.raises(SoscopeInputError, match="truth"):
        pl.enhanced(toy, "gene_1", truth="nope")
    bare = SpatialData(shapes={"spots": toy.shapes["spots"]}, tables={"table": toy.tables["table"]})
    with pytest.raises(SoscopeInputError, match="soscope.enhance"):
        pl.enhanced(bare, "gene_1")


def test_enhanced_on_synthetic_with_truth(tmp_path):
    """The layout of `soscope.datasets.synthetic` (circles, hex7 truth, multiscale image)."""
    from soscope.datasets import synthetic

    sdata = synthetic(n_spots=120, n_features=10, seed=1)
    truth = sdata.tables["truth"]
    sub = sdata.shapes["spots_truth_subspots"]
    gdf = gpd.GeoDataFrame(sub[["spot_id", "subspot"]].copy(), geometry=sub.geometry.values, index=sub.index)
    gdf.attrs = {}
    from spatialdata.transformations import get_transformation

    sdata.shapes["spots_soscope"] = ShapesModel.parse(
        gdf, transformations=get_transformation(sub, get_all=True)
    )
    o = truth.obs[["spot_id", "subspot", "subspot_id"]].copy()
    o["region"] = pd.Categorical(["spots_soscope"] * len(o))
    a = ad.AnnData(np.asarray(truth.layers["mean"], dtype=np.float32), obs=o, var=truth.var.copy())
    a.uns["soscope"] = {"version": "test"}
    sdata.tables["table_soscope"] = TableModel.parse(
        a, region="spots_soscope", region_key="region", instance_key="subspot_id"
    )

    out = tmp_path / "syn.png"
    fig = pl.enhanced(sdata, ["gene_0", "gene_1"], truth="truth", save=out)
    h, w = _png_ok(out, 30_000)
    assert len([a for a in fig.axes if a.get_label() != "<colorbar>"]) == 6
    assert w > 600 and h > 400


@pytest.mark.timeout(300)  # a hang guard, not a speed test (timings belong to benchmarks)
def test_enhanced_renders_30k_subspots(tmp_path):
    """31k sub-spots (x2 with the truth) render into one figure with soscope's own drawing path.

    (spatialdata-plot, the default when installed, is checked on small data in test_pl_backends.py; above
    10,000 shapes it hands over to datashader, which is its code, not ours.)
    """
    sdata = _toy(n=88, image=True, n_features=2)  # 7,744 spots, 30,976 sub-spots
    pl.enhanced(sdata, ["gene_0"], truth="truth", save=tmp_path / "big.png", backend="matplotlib")
    _png_ok(tmp_path / "big.png")


# --------------------------------------------------------------------------------------------- training
def test_training_from_sdata_dict_and_object(toy, tmp_path):
    """Loss curves from a SpatialData, a dict, a model with `.history`, a DataFrame."""
    from dataclasses import dataclass, field

    out = tmp_path / "train.png"
    fig = pl.training(toy, save=out)  # uns["soscope"]["history"] of the enhanced table
    _png_ok(out)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["train loss", "validation loss", "best epoch (35)"]

    hist = toy.tables["table_soscope"].uns["soscope"]["history"]
    assert len(pl.training(dict(hist), show_lr=True).axes) == 2

    @dataclass
    class History:
        epoch: list = field(default_factory=lambda: [0, 1, 2])
        train_loss: list = field(default_factory=lambda: [3.0, 2.0, 1.5])
        validation_loss: list = field(default_factory=list)

        def as_dict(self):
            return dict(self.__dict__)

    class Model:
        history = History()

    assert pl.training(Model()).axes[0].get_lines()[0].get_ydata().tolist() == [3.0, 2.0, 1.5]
    assert pl.training(pd.DataFrame({"train_loss": [2.0, 1.0]})).axes
    with pytest.raises(SoscopeInputError, match="no loss curve"):
        pl.training({"epoch": [0, 1]})


# --------------------------------------------------------------------------------------------- accuracy
def test_accuracy_boxes_per_method(tmp_path):
    """One box per method, soscope first, then by median; other metrics and layouts."""
    rng = np.random.default_rng(0)
    df = pd.DataFrame(
        {
            "pearson_soscope": rng.uniform(0.6, 0.9, 40),
            "pearson_even_split": rng.uniform(0.3, 0.6, 40),
            "pearson_gaussian_interpolation": rng.uniform(0.4, 0.7, 40),
            "rmse_soscope": rng.uniform(0, 1, 40),
            "truth_mean": rng.uniform(0, 1, 40),
        },
        index=[f"g{i}" for i in range(40)],
    )
    out = tmp_path / "acc.png"
    fig = pl.accuracy(df, save=out)
    _png_ok(out)
    ticks = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert ticks == ["soscope", "gaussian interpolation", "even split"]  # reference first, then by median
    assert pl.accuracy(df, metric="rmse").axes
    long = pd.DataFrame({"method": ["a"] * 5 + ["soscope"] * 5, "pearson": np.linspace(0, 1, 10)})
    assert [t.get_text() for t in pl.accuracy(long).axes[0].get_xticklabels()] == ["soscope", "a"]
    with pytest.raises(SoscopeInputError, match="metrics present"):
        pl.accuracy(df, metric="ssim")
