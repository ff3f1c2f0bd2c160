"""soscope.pl.enhanced draws with spatialdata-plot when installed, else with matplotlib: the same colours.

A short real run (synthetic data, 5 epochs) so the tables and shapes are exactly those soscope writes: the
enhanced table must annotate its sub-spot shapes so that spatialdata-plot joins them unchanged.
"""

from __future__ import annotations

import sys

import matplotlib
import numpy as np
import pytest
import shapely
from scipy.spatial import cKDTree
from spatialdata.transformations import get_transformation

import soscope
from soscope._errors import SoscopeInputError
from soscope.pl import _maps

matplotlib.use("Agg")

FEATURES = ["gene_0", "gene_3"]
#: panels per feature: spots, soscope, truth
PANELS = 3


@pytest.fixture(scope="module")
def run():
    sdata = soscope.datasets.synthetic(n_spots=60, n_features=10, seed=0)
    soscope.enhance(sdata, table="table", epochs=5, progress=False)
    return sdata


def _elements(sdata) -> list[tuple[str, str]]:
    """(shapes element, table) of the three panels, in panel order."""
    return [("spots", "table"), ("spots_soscope", "table_soscope"), ("spots_truth_subspots", "truth")]


def _expected(sdata, element: str, table: str, feature: str, per_area: bool) -> tuple[np.ndarray, np.ndarray]:
    """Centroids of the element's shapes and the value each is coloured by (from the table)."""
    gdf = sdata.shapes[element]
    t = sdata.tables[table]
    key = t.uns["spatialdata_attrs"]["instance_key"]
    x = t[:, feature].X
    x = np.asarray(x.toarray() if hasattr(x, "toarray") else x, dtype=float).ravel()
    value = dict(zip(t.obs[key].to_numpy(), x, strict=True))
    vals = np.array([value[i] for i in gdf.index])
    geoms = np.asarray(gdf.geometry.values, dtype=object)
    m = _affine(gdf)
    if per_area:
        # circles (Point + radius) have area pi r^2, polygons their own; times the transformation's scaling
        points = shapely.get_type_id(geoms) == 0
        area = np.where(points, np.pi * np.asarray(gdf.get("radius", 0.0), dtype=float) ** 2, 0.0)
        area = np.where(points, area, shapely.area(geoms)) * abs(np.linalg.det(m[:2, :2]))
        vals = vals / area
    return _centres(gdf), vals


def _affine(gdf) -> np.ndarray:
    """Return the element's affine matrix (x, y) to "global", the coordinate system the maps are drawn in."""
    return get_transformation(gdf, "global").to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y"))


def _centres(gdf) -> np.ndarray:
    """Centroids of the element's shapes in "global"."""
    m = _affine(gdf)
    xy = shapely.get_coordinates(shapely.centroid(np.asarray(gdf.geometry.values, dtype=object)))
    return xy @ m[:2, :2].T + m[:2, 2]


def _drawn(ax) -> tuple[np.ndarray, np.ndarray, list]:
    """Centres and RGBA face colours of every path drawn in ``ax``'s collections (with their collections)."""
    centres, colours, colls = [], [], []
    for coll in ax.collections:
        coll.update_scalarmappable()  # face colours from the colour map, as when drawn
        paths = coll.get_paths()
        face = np.asarray(coll.get_facecolor())
        if len(face) == 1 and len(paths) > 1:
            face = np.repeat(face, len(paths), axis=0)
        centres += [np.asarray(shapely.Polygon(p.vertices).centroid.coords[0]) for p in paths]
        colours.append(face)
        colls.append(coll)
    return np.asarray(centres), np.concatenate(colours) if colours else np.zeros((0, 4)), colls


def _order(centres: np.ndarray, shape_centres: np.ndarray) -> np.ndarray:
    """For each drawn path, the shape whose centroid is nearest (paths and shapes matched one to one)."""
    dist, idx = cKDTree(shape_centres).query(centres)
    assert len(np.unique(idx)) == len(idx), "two drawn paths matched the same shape"
    assert dist.max() < 1e-3 * np.ptp(shape_centres), dist.max()
    return idx


def _figure(sdata, backend: str, per_area: bool = True):
    return soscope.pl.enhanced(sdata, FEATURES, truth="truth", backend=backend, per_area=per_area, dpi=40)


@pytest.mark.parametrize("per_area", [True, False])
def test_matplotlib_draws_every_shape_coloured_by_the_table(run, per_area):
    fig = _figure(run, "matplotlib", per_area)
    axes = fig.axes[: len(FEATURES) * PANELS]
    for i, feature in enumerate(FEATURES):
        for c, (element, table) in enumerate(_elements(run)):
            centres, _, colls = _drawn(axes[i * PANELS + c])
            shape_centres, values = _expected(run, element, table, feature, per_area)
            assert len(centres) == len(run.shapes[element])  # one path per shape
            drawn = np.concatenate([np.asarray(coll.get_array(), dtype=float) for coll in colls])
            np.testing.assert_allclose(drawn, values[_order(centres, shape_centres)], rtol=1e-5)


@pytest.mark.parametrize("per_area", [True, False])
def test_spatialdata_plot_draws_the_same_colours_as_matplotlib(run, per_area):
    pytest.importorskip("spatialdata_plot")
    sdp = _figure(run, "spatialdata-plot", per_area)
    mpl = _figure(run, "matplotlib", per_area)
    n = len(FEATURES) * PANELS
    for k, (a_sdp, a_mpl) in enumerate(zip(sdp.axes[:n], mpl.axes[:n], strict=True)):
        element = _elements(run)[k % PANELS][0]
        shape_centres = _centres(run.shapes[element])
        c_sdp, rgba_sdp, _ = _drawn(a_sdp)
        c_mpl, rgba_mpl, _ = _drawn(a_mpl)
        assert len(c_sdp) == len(c_mpl) == len(run.shapes[element])
        by_shape_sdp = np.empty_like(rgba_sdp)
        by_shape_sdp[_order(c_sdp, shape_centres)] = rgba_sdp
        by_shape_mpl = np.empty_like(rgba_mpl)
        by_shape_mpl[_order(c_mpl, shape_centres)] = rgba_mpl
        # same colour map, norm and opacity: the colours agree shape by shape (not merely in distribution)
        np.testing.assert_allclose(by_shape_sdp, by_shape_mpl, atol=2e-3)
        assert len(np.unique(by_shape_sdp.round(3), axis=0)) > 5  # the shapes are not one flat colour
        assert a_sdp.get_title() == a_mpl.get_title()


def test_auto_uses_spatialdata_plot_when_installed_and_matplotlib_when_blocked(run, monkeypatch):
    pytest.importorskip("spatialdata_plot")
    calls: list[str] = []
    sdp_draw, mpl_draw = _maps._draw_map_sdata_plot, _maps._draw_map
    monkeypatch.setattr(
        _maps, "_draw_map_sdata_plot", lambda *a, **k: (calls.append("sdp"), sdp_draw(*a, **k))[1]
    )
    monkeypatch.setattr(_maps, "_draw_map", lambda *a, **k: (calls.append("mpl"), mpl_draw(*a, **k))[1])
    soscope.pl.enhanced(run, "gene_0", dpi=40)
    assert calls == ["sdp", "sdp"]  # spots and sub-spots
    calls.clear()
    monkeypatch.setitem(sys.modules, "spatialdata_plot", None)  # `import spatialdata_plot` now fails
    fig = soscope.pl.enhanced(run, "gene_0", dpi=40)
    assert calls == ["mpl", "mpl"]
    assert [len(a.collections[0].get_paths()) for a in fig.axes[:2]] == [60, 420]


def test_spatialdata_plot_requested_but_missing_says_how_to_install(run, monkeypatch):
    monkeypatch.setitem(sys.modules, "spatialdata_plot", None)
    with pytest.raises(SoscopeInputError, match=r"pip install spatialdata-plot.*soscope\[plot\]"):
        soscope.pl.enhanced(run, "gene_0", backend="spatialdata-plot")
    with pytest.raises(SoscopeInputError, match="Unknown `backend="):
        soscope.pl.enhanced(run, "gene_0", backend="plotly")


def test_enhanced_table_joins_its_shapes_in_spatialdata_plot_unchanged(run):
    """The written output, as is, renders with spatialdata-plot: region / instance key match the shapes."""
    pytest.importorskip("spatialdata_plot")
    from matplotlib.figure import Figure

    attrs = run.tables["table_soscope"].uns["spatialdata_attrs"]
    assert list(np.atleast_1d(attrs["region"])) == ["spots_soscope"]
    obs = run.tables["table_soscope"].obs
    assert set(obs[attrs["region_key"]].astype(str)) == {"spots_soscope"}
    assert sorted(obs[attrs["instance_key"]]) == sorted(run.shapes["spots_soscope"].index)
    ax = Figure().subplots()
    run.pl.render_shapes("spots_soscope", color="gene_0", table_name="table_soscope").pl.show(
        ax=ax, show=False, colorbar=False
    )
    centres, rgba, _ = _drawn(ax)
    shape_centres, values = _expected(run, "spots_soscope", "table_soscope", "gene_0", per_area=False)
    order = _order(centres, shape_centres)
    # brighter (viridis: more yellow, i.e. more green+red) where the table's value is higher
    lum = rgba[:, 0] + rgba[:, 1]
    assert np.corrcoef(lum, values[order])[0, 1] > 0.9
