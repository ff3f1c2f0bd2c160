"""Property-based tests: ``soscope.enhance`` on random small SpatialData objects.

Every run either raises one of soscope's documented errors (:class:`~soscope.SoscopeError` and its subclasses)
or succeeds, and then its output satisfies the invariants:

* the output table annotates the output shapes (region, region key and instance key valid; every sub-spot
  polygon has exactly one row and every row a polygon), with the spots' transformations;
* every spot with a table row has exactly K sub-spots, numbered ``0..K-1``, for the scheme used;
* a spot's sub-spots do not overlap and lie inside the parent's cell: the parent polygon for ``grid:K`` on
  polygon spots (they tile it); for circles, the square lattice cell (``grid:K``) or the regular hexagonal
  lattice cell (``hex7``) centred on the spot, which the sub-spots tile;
* footprint weights lie in [0, 1]; enhanced counts are finite and non-negative.

Set ``SOSCOPE_PROPERTY_EXAMPLES`` to explore more examples (random, not derandomised) than the 20 fixed ones.
"""

from __future__ import annotations

import logging
import os
import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import shapely
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

sd = pytest.importorskip("spatialdata")
import anndata as ad  # noqa: E402
import geopandas as gpd  # noqa: E402
from spatialdata.models import Image2DModel, ShapesModel, TableModel  # noqa: E402
from spatialdata.transformations import Identity, Scale, get_transformation  # noqa: E402

import soscope  # noqa: E402
from soscope import SoscopeError  # noqa: E402

_EXTRA = int(os.environ.get("SOSCOPE_PROPERTY_EXAMPLES", "0"))
SETTINGS = settings(
    max_examples=_EXTRA or 20,
    deadline=None,
    derandomize=not _EXTRA,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
IMAGE_PIXELS = 160  # longest side of the random images: small enough to keep a run well under a second


def _positions(rng: np.random.Generator, n: int, layout: str, spacing: float, jitter: float) -> np.ndarray:
    cols = int(np.ceil(np.sqrt(n)))
    r, c = np.divmod(np.arange(n), cols)
    if layout == "hex":
        xy = np.column_stack([c + 0.5 * (r % 2), r * np.sqrt(3) / 2]) * spacing
    elif layout == "square":
        xy = np.column_stack([c, r]).astype(float) * spacing
    elif layout == "line":
        xy = np.column_stack([np.arange(n), np.zeros(n)]) * spacing
    else:  # irregular: uniform in a square of about the same area
        xy = rng.uniform(0, cols * spacing, (n, 2))
    xy = xy + rng.normal(0, jitter * spacing, xy.shape)
    return xy - xy.min(0) + 2 * spacing  # positive coordinates, a margin for the image


@st.composite
def small_sdata(draw):
    """Draw a random one-section SpatialData and the enhance arguments to run on it."""
    params = dict(
        n=draw(st.sampled_from([2, 1, *range(3, 37)])),  # a single spot now and then (refused)
        layout=draw(st.sampled_from(["hex", "square", "irregular", "line"])),
        duplicates=draw(st.sampled_from([0, 0, 0, 1, 3])),  # spots sharing a centre (e.g. stacked sections)
        offset=draw(st.sampled_from([0.0, 0.0, 1e6])),  # far from the origin (float precision)
        jitter=draw(st.sampled_from([0.0, 0.05, 0.2])),
        shape=draw(st.sampled_from(["circle", "square", "rotated"])),
        odd=draw(st.sampled_from([None, None, None, "pentagon", "bowtie", "flat"])),  # one odd polygon
        size=draw(st.floats(0.15, 0.95)),  # radius (circles) or side (squares) relative to the spacing
        size_spread=draw(st.sampled_from([0.0, 0.3])),  # random radii / sides
        spacing=draw(st.sampled_from([1.0, 50.0, 3000.0])),
        scale=draw(st.sampled_from([None, 0.5, 2.0])),  # spots' Scale to the coordinate system
        n_feat=draw(st.integers(1, 6)),
        mean=draw(st.sampled_from([0.2, 3.0, 40.0])),
        zero_frac=draw(st.sampled_from([0.0, 0.2, 0.6])),
        sparse=draw(st.booleans()),
        shuffle_rows=draw(st.booleans()),
        sections=draw(st.sampled_from([1, 1, 2])),  # spots split at random between sections (section_key)
        image=draw(st.sampled_from([None, None, "rgb", "grey"])),
        subspots=draw(st.sampled_from(["auto", "hex7", "grid:2", "grid:3"])),
        seed=draw(st.integers(0, 2**31 - 1)),
    )
    return build_case(**params)


class Case(tuple):
    """``(sdata, enhance kwargs)``, shown in failure reports by the parameters that made it."""

    def __new__(cls, sdata, kwargs, params):  # noqa: D102
        obj = super().__new__(cls, (sdata, kwargs))
        obj.params = params
        return obj

    def __repr__(self) -> str:
        return f"build_case(**{self.params})"


def build_case(
    *, n, layout, duplicates, offset, jitter, shape, odd, size, size_spread, spacing, scale, n_feat, mean,
    zero_frac, sparse, shuffle_rows, sections, image, subspots, seed,
) -> Case:  # fmt: skip
    """Build one case from its parameters (``repr`` of a failing case reproduces it)."""
    params = dict(locals())
    rng = np.random.default_rng(seed)
    xy = _positions(rng, n, layout, spacing, jitter)
    if duplicates and n > duplicates + 1:
        xy[-duplicates:] = xy[:duplicates]
    xy = xy + offset
    sizes = size * spacing * (1 + size_spread * rng.uniform(-1, 1, n))
    transformations = {"global": Identity() if scale is None else Scale([scale, scale], axes=("x", "y"))}
    if shape == "circle":
        spots = ShapesModel.parse(xy, geometry=0, radius=sizes, transformations=transformations)
    else:
        h = sizes / 2
        polys = shapely.box(xy[:, 0] - h, xy[:, 1] - h, xy[:, 0] + h, xy[:, 1] + h)
        if shape == "rotated":
            angle = rng.uniform(0, 90)
            polys = np.array(
                [shapely.affinity.rotate(p, angle, origin="centroid") for p in polys], dtype=object
            )
        (x0, y0), h0 = xy[0], h[0]
        if odd == "pentagon":  # not a quadrilateral: grid:K refuses it, hex7 splits its lattice cell
            polys[0] = shapely.Polygon(
                [(x0 - h0, y0 - h0), (x0 + h0, y0 - h0), (x0 + h0, y0), (x0, y0 + h0), (x0 - h0, y0)]
            )
        elif odd == "bowtie":  # self-intersecting (invalid)
            polys[0] = shapely.Polygon(
                [(x0 - h0, y0 - h0), (x0 + h0, y0 + h0), (x0 - h0, y0 + h0), (x0 + h0, y0 - h0)]
            )
        elif odd == "flat":  # no area
            polys[0] = shapely.Polygon([(x0 - h0, y0), (x0, y0), (x0 + h0, y0)])
        spots = ShapesModel.parse(gpd.GeoDataFrame(geometry=list(polys)), transformations=transformations)

    x = rng.poisson(mean, (n, n_feat)).astype(np.float32)
    x[rng.random(n) < zero_frac] = 0
    rows = rng.permutation(n) if shuffle_rows else np.arange(n)
    obs = pd.DataFrame(
        {"region": pd.Categorical(["spots"] * n), "spot_id": np.asarray(spots.index)[rows].astype(np.int64)},
        index=[f"s{i}" for i in range(n)],
    )
    x = x[rows]
    if sections > 1:
        obs["slide"] = pd.Categorical(rng.choice([f"slide{i}" for i in range(sections)], n))
    var = pd.DataFrame(index=[f"f{j}" for j in range(n_feat)])
    adata = ad.AnnData(X=sp.csr_matrix(x) if sparse else x, obs=obs, var=var)
    table = TableModel.parse(adata, region="spots", region_key="region", instance_key="spot_id")

    images = {}
    if image is not None:
        extent = (xy.max(0) + 2 * spacing) * (1.0 if scale is None else scale)  # in the coordinate system
        px = extent.max() / IMAGE_PIXELS
        shape_yx = np.maximum(np.ceil(extent[::-1] / px).astype(int), 8)
        arr = rng.integers(0, 256, (3 if image == "rgb" else 1, *shape_yx), dtype=np.uint8)
        to_cs = {"global": Scale([px, px], axes=("x", "y"))}
        images["image"] = Image2DModel.parse(arr, dims=("c", "y", "x"), transformations=to_cs)
    sdata = sd.SpatialData(shapes={"spots": spots}, tables={"table": table}, images=images)
    kwargs = {"subspots": subspots} | ({"section_key": "slide"} if sections > 1 else {})
    return Case(sdata, kwargs, params)


def _n_subspots(scheme: str) -> int:
    if scheme == "hex7":
        return 7
    kind, k = scheme.split(":")
    k = int(k)
    return k * k if kind == "grid" else 1 + 3 * k * (k + 1)


def _check_cells(spots, sub, scheme: str) -> None:
    """Each spot's sub-spots: K of them, numbered 0..K-1, not overlapping, inside the parent's cell."""
    k = _n_subspots(scheme)
    circles = "radius" in spots.columns
    parents = dict(zip(spots.index, spots.geometry, strict=True))
    areas = []
    for sid, part in sub.groupby("spot_id"):
        assert sorted(part["subspot"]) == list(range(k)), (sid, sorted(part["subspot"]))
        geoms = np.asarray(part.geometry.values, dtype=object)
        assert shapely.is_valid(geoms).all()
        area = shapely.area(geoms)
        total = float(area.sum())
        assert total > 0
        union = shapely.union_all(geoms)
        np.testing.assert_allclose(union.area, total, rtol=1e-6)  # no overlaps
        parent = parents[sid]
        tol = 1e-6 * np.sqrt(total)
        if not circles and scheme.startswith("grid"):
            # grid parts tile the (quadrilateral) parent polygon
            assert shapely.buffer(parent, tol).contains(union), sid
            np.testing.assert_allclose(total, parent.area, rtol=1e-6)
        else:
            # the lattice cell centred on the spot: a square (grid) or a regular hexagon (hex7 / rings)
            centre = np.array([parent.centroid.x, parent.centroid.y])
            if scheme.startswith("grid"):
                radius = np.sqrt(total) / np.sqrt(2)
            else:
                radius = np.sqrt(2 * total / (3 * np.sqrt(3)))  # circumradius of a hexagon of that area
                np.testing.assert_allclose(area, total / k, rtol=1e-6)  # K equal parts
            vertices = shapely.get_coordinates(geoms)
            assert np.linalg.norm(vertices - centre, axis=1).max() <= radius * (1 + 1e-6) + tol, sid
            np.testing.assert_allclose(
                union.area, shapely.convex_hull(union).area, rtol=1e-6
            )  # a convex cell
        areas.append(total)
    if circles or not scheme.startswith("grid"):  # one lattice spacing serves the whole element
        np.testing.assert_allclose(areas, areas[0], rtol=1e-6)


def _check_output(sdata) -> None:
    spots, sub = sdata.shapes["spots"], sdata.shapes["spots_soscope"]
    table = sdata.tables["table_soscope"]
    ShapesModel.validate(sub)
    TableModel().validate(table)
    attrs = table.uns["spatialdata_attrs"]
    region = attrs["region"]
    assert (region if isinstance(region, str) else list(region)) in ("spots_soscope", ["spots_soscope"])
    assert set(table.obs[attrs["region_key"]].astype(str)) == {"spots_soscope"}
    ids = table.obs[attrs["instance_key"]].to_numpy()
    assert len(set(ids)) == len(ids) == len(sub) and set(ids) == set(sub.index)
    # the table's rows describe the polygons they point to
    by_id = sub.loc[ids]
    np.testing.assert_array_equal(by_id["spot_id"].to_numpy(), table.obs["spot_id"].to_numpy())
    np.testing.assert_array_equal(by_id["subspot"].to_numpy(), table.obs["subspot"].to_numpy())
    assert get_transformation(sub, get_all=True) == get_transformation(spots, get_all=True)
    # every spot with a row is enhanced, no other
    assert set(sub["spot_id"]) == set(sdata.tables["table"].obs["spot_id"])
    scheme = table.uns["soscope"]["subspots"]
    _check_cells(spots, sub, scheme)
    w = table.obs["footprint_weight"].to_numpy()
    assert ((w >= -1e-6) & (w <= 1 + 1e-6)).all()
    x = table.X.toarray() if sp.issparse(table.X) else np.asarray(table.X)
    assert x.shape == (len(sub), sdata.tables["table"].n_vars)
    assert np.isfinite(x).all() and (x >= 0).all()


_BASE = dict(
    layout="square", offset=0.0, jitter=0.05, shape="rotated", odd=None, size=0.9, size_spread=0.3,
    spacing=3000.0, scale=None, n_feat=3, mean=40.0, zero_frac=0.2, sparse=False, shuffle_rows=False,
    sections=1, image=None,
)  # fmt: skip


@SETTINGS
@given(case=small_sdata(), epochs=st.sampled_from([1, 2]))
def test_enhance_random_inputs(case, epochs):
    sdata, kwargs = case
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("soscope").setLevel(logging.ERROR)
        try:
            soscope.enhance(sdata, epochs=epochs, progress=False, **kwargs)
        except SoscopeError as e:  # documented: bad input, clearly explained
            assert str(e), "a documented error must say what is wrong"
            event(f"refused: {type(e).__name__}: {str(e)[:60]}")
            return
        finally:
            logging.getLogger("soscope").setLevel(logging.NOTSET)
    event(f"enhanced with {sdata.tables['table_soscope'].uns['soscope']['subspots']}")
    event(f"enhanced {'with' if sdata.images else 'without'} an image")
    _check_output(sdata)


@pytest.mark.parametrize(
    "params",
    [
        # centroids of rotated squares sharing a centre differ by rounding (~1e-12): the lattice spacing came
        # out ~1e-12 and the sub-spots were specks
        dict(_BASE, n=9, duplicates=3, subspots="hex7", seed=133),
        # every centre duplicated (stacked sections): each spot's nearest neighbour was at 0 and the spacing
        # "undefined" ("All spot centres coincide")
        dict(_BASE, shape="circle", n=6, duplicates=3, subspots="grid:3", seed=7),
    ],
    ids=["near-duplicate-centroids", "all-centres-duplicated"],
)
def test_duplicated_centres_found_by_hypothesis(params):
    """Regressions found by the property test: spots sharing a centre are enhanced like any other."""
    sdata, kwargs = build_case(**params)
    soscope.enhance(sdata, epochs=1, progress=False, **kwargs)
    _check_output(sdata)
    sub = sdata.shapes["spots_soscope"]
    cell_area = shapely.area(np.asarray(sub.geometry.values, dtype=object)).sum() / sub["spot_id"].nunique()
    assert (
        0.5 * params["spacing"] ** 2 < cell_area < 2 * params["spacing"] ** 2
    )  # the lattice cell, not a speck
