"""Baselines: conservation, constant fields, exact recovery of a linear image signal."""

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely

from soscope._errors import SoscopeInputError
from soscope.evaluate import even_split, gaussian_interpolation, image_regression, spot_density
from soscope.geometry import make_subspots


def _hex_circles(n_row=8, n_col=9, spacing=100.0, diameter=55.0):
    r, c = np.divmod(np.arange(n_row * n_col), n_col)
    xy = np.column_stack([c * spacing + (r % 2) * spacing / 2, r * spacing * np.sqrt(3) / 2]) + 500.0
    gdf = gpd.GeoDataFrame({"radius": np.full(len(xy), diameter / 2)}, geometry=shapely.points(xy))
    gdf.index = pd.RangeIndex(len(xy))
    return gdf, xy


def _squares(n=7, side=50.0):
    r, c = np.divmod(np.arange(n * n), n)
    x0, y0 = c * side, r * side
    return gpd.GeoDataFrame(geometry=shapely.box(x0, y0, x0 + side, y0 + side))


@pytest.fixture(scope="module")
def hexes():
    gdf, xy = _hex_circles()
    return gdf, xy, make_subspots(gdf, "hex7", spacing=100.0)


def test_even_split_conserves_footprint_counts(hexes):
    gdf, xy, lay = hexes
    rng = np.random.default_rng(0)
    counts = rng.poisson(50, (len(gdf), 12))
    pred = even_split(counts, lay)
    assert pred.shape == (lay.n_subspots, 12)
    back = np.zeros(counts.shape)
    np.add.at(back, lay.spot_index, pred * lay.footprint_weight[:, None])
    np.testing.assert_allclose(back, counts, rtol=1e-5)
    # squares tile: the plain sum is conserved
    sq = _squares()
    lay_sq = make_subspots(sq, "grid:3")
    c_sq = rng.poisson(20, (len(sq), 4))
    p_sq = even_split(c_sq, lay_sq)
    np.testing.assert_allclose(p_sq.reshape(len(sq), 9, 4).sum(axis=1), c_sq, rtol=1e-5)


def test_interpolation_of_constant_density(hexes):
    gdf, xy, lay = hexes
    fa = np.bincount(lay.spot_index, weights=lay.area * lay.footprint_weight)
    dens = np.array([0.5, 2.0, 0.01])
    counts = fa[:, None] * dens[None, :]
    np.testing.assert_allclose(spot_density(counts, lay), np.broadcast_to(dens, counts.shape), rtol=1e-12)
    pred = gaussian_interpolation(counts, xy, lay)
    np.testing.assert_allclose(pred, lay.area[:, None] * dens[None, :], rtol=1e-5)
    # an explicit sigma and a sparse input behave the same
    import scipy.sparse as sp

    pred2 = gaussian_interpolation(sp.csr_matrix(counts), xy, lay, sigma=30.0)
    np.testing.assert_allclose(pred2, pred, rtol=1e-5)


def test_interpolation_is_smooth_between_spots(hexes):
    gdf, xy, lay = hexes
    fa = np.bincount(lay.spot_index, weights=lay.area * lay.footprint_weight)
    counts = (fa * (xy[:, 0] / 100.0))[:, None]  # density linear in x
    pred = gaussian_interpolation(counts, xy, lay)[:, 0] / lay.area
    even = even_split(counts, lay)[:, 0] / lay.area
    truth = lay.centroid[:, 0] / 100.0
    inner = (lay.centroid[:, 0] > xy[:, 0].min() + 150) & (lay.centroid[:, 0] < xy[:, 0].max() - 150)
    assert np.abs(pred - truth)[inner].mean() < np.abs(even - truth)[inner].mean()


def test_image_regression_recovers_linear_signal(hexes):
    gdf, xy, lay = hexes
    rng = np.random.default_rng(1)
    z = rng.normal(size=(lay.n_subspots, 3))
    dens = np.column_stack([5 + z @ [1.0, -0.5, 0.2], 3 + 0.8 * z[:, 2]])  # positive densities
    assert (dens > 0).all()
    counts = np.zeros((len(gdf), 2))
    np.add.at(counts, lay.spot_index, dens * (lay.area * lay.footprint_weight)[:, None])
    pred = image_regression(counts, z, lay, alpha=1e-9)
    np.testing.assert_allclose(pred / lay.area[:, None], dens, rtol=1e-4, atol=1e-4)
    # NaN rows are tolerated (filled with feature means)
    z_nan = z.copy()
    z_nan[0] = np.nan
    assert np.isfinite(image_regression(counts, z_nan, lay)).all()


def test_bad_shapes_raise(hexes):
    gdf, xy, lay = hexes
    with pytest.raises(SoscopeInputError):
        even_split(np.ones((3, 2)), lay)
    with pytest.raises(SoscopeInputError):
        image_regression(np.ones((len(gdf), 2)), np.ones((5, 2)), lay)


def _footprint_sums(pred, lay):
    back = np.zeros((lay.n_spots, pred.shape[1]))
    np.add.at(back, lay.spot_index, pred * lay.footprint_weight[:, None])
    return back


def test_closed_form_splits_conserve_counts_and_follow_their_evidence(hexes):
    from soscope.evaluate import image_ridge_split, interpolation_split

    gdf, xy, lay = hexes
    rng = np.random.default_rng(2)
    z = rng.normal(size=(lay.n_subspots, 3))
    dens = np.column_stack([5 + z @ [1.0, -0.5, 0.2], 3 + 0.8 * z[:, 2]])
    counts = np.zeros((len(gdf), 2))
    np.add.at(counts, lay.spot_index, dens * (lay.area * lay.footprint_weight)[:, None])
    for pred in (interpolation_split(counts, xy, lay), image_ridge_split(counts, z, lay)):
        assert pred.shape == (lay.n_subspots, 2) and (pred >= 0).all()
        np.testing.assert_allclose(_footprint_sums(pred, lay), counts, rtol=1e-4)
    # the image carries the sub-spot densities: its split recovers them, the even split cannot
    ridge = image_ridge_split(counts, z, lay) / lay.area[:, None]
    even = even_split(counts, lay) / lay.area[:, None]
    assert np.abs(ridge - dens).mean() < 0.2 * np.abs(even - dens).mean()
    # a constant density: the interpolation split is the even split
    fa = np.bincount(lay.spot_index, weights=lay.area * lay.footprint_weight)
    flat = fa[:, None] * np.array([[2.0]])
    np.testing.assert_allclose(interpolation_split(flat, xy, lay), even_split(flat, lay), rtol=1e-5)
