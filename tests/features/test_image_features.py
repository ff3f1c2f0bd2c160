"""Tests of soscope.features: coordinates, level choice, tiling invariance, extractors."""

from __future__ import annotations

import logging

import geopandas as gpd
import numpy as np
import pytest
import shapely
from shapely.geometry import Point, box

from soscope._errors import SoscopeInputError
from soscope.features import (
    choose_level,
    morphology_feature_names,
    precomputed_features,
    spots_to_image_pixels,
    subspot_image_features,
)
from soscope.geometry import PolygonArray
from soscope.geometry._layout import SubspotLayout

RED = np.array([220, 20, 30], dtype=np.uint8)
BLUE = np.array([30, 40, 200], dtype=np.uint8)
# spots intrinsic -> global: x*4 + 10, y*4 + 20; image pixel -> global: *2  =>  spots -> pixel: 2x+5, 2y+10
EXPECTED_AFFINE = np.array([[2.0, 0.0, 5.0], [0.0, 2.0, 10.0], [0.0, 0.0, 1.0]])


def _to_px(x, y):
    return 2 * x + 5, 2 * y + 10


def _to_intrinsic_box(px0, py0, px1, py1):
    """Express a box given in scale0 pixels in the spots' intrinsic coordinates."""
    return box((px0 - 5) / 2, (py0 - 10) / 2, (px1 - 5) / 2, (py1 - 10) / 2)


def make_layout(polys: list, per_spot: int = 4) -> SubspotLayout:
    """Build a SubspotLayout straight from polygons (``per_spot`` consecutive polygons per spot)."""
    m = len(polys)
    geoms = np.empty(m, dtype=object)
    geoms[:] = polys
    spot_index = np.arange(m, dtype=np.int64) // per_spot
    n = int(spot_index[-1]) + 1
    offsets = np.searchsorted(spot_index, np.arange(n + 1)).astype(np.int64)
    subspot = (np.arange(m) - offsets[spot_index]).astype(np.int32)
    cen = shapely.centroid(geoms)
    return SubspotLayout(
        polygons=PolygonArray.from_shapely(geoms),
        spot_index=spot_index,
        subspot=subspot,
        offsets=offsets,
        area=shapely.area(geoms),
        footprint_weight=np.ones(m),
        centroid=np.stack([shapely.get_x(cen), shapely.get_y(cen)], axis=1),
        scheme="test",
    )


def _rgb_image(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.integers(120, 250, size=(3, 600, 600), dtype=np.uint8)  # textured background
    img[:, 100:300, 100:300] = RED[:, None, None]
    img[:, 300:500, 320:520] = BLUE[:, None, None]
    # a dark "nuclei" pattern
    yy, xx = np.mgrid[0:600, 0:600]
    dots = ((yy % 24) < 6) & ((xx % 24) < 6) & (yy > 500)
    img[0][dots], img[1][dots], img[2][dots] = 60, 30, 110
    return img


def _spots_gdf(n: int):
    from spatialdata.models import ShapesModel
    from spatialdata.transformations import Scale, Sequence, Translation

    xy = np.stack([np.arange(n) % 30 * 10.0, np.arange(n) // 30 * 10.0], axis=1)
    gdf = gpd.GeoDataFrame({"radius": np.full(n, 4.0)}, geometry=[Point(*p) for p in xy])
    t = Sequence([Scale([4.0, 4.0], axes=("x", "y")), Translation([10.0, 20.0], axes=("x", "y"))])
    return ShapesModel.parse(gdf, transformations={"global": t})


@pytest.fixture(scope="module")
def rgb_sdata():
    """SpatialData with a 600×600 multiscale RGB image (scale 2 to global) and circles (scale 4 + shift)."""
    import spatialdata as sd
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import Scale

    image = Image2DModel.parse(
        _rgb_image(),
        dims=("c", "y", "x"),
        scale_factors=[2, 2],
        chunks=(3, 128, 128),
        transformations={"global": Scale([2.0, 2.0], axes=("x", "y"))},
    )
    return sd.SpatialData(images={"he": image}, shapes={"spots": _spots_gdf(240)})


@pytest.fixture(scope="module")
def grid_layout():
    """Sub-spots: a jittered grid of boxes ~ 20 px (scale0) across, a few off the image."""
    rng = np.random.default_rng(1)
    polys = []
    for j in range(30):
        for i in range(30):
            px0 = 20 * i + rng.uniform(-3, 3)
            py0 = 20 * j + rng.uniform(-3, 3)
            polys.append(_to_intrinsic_box(px0, py0, px0 + 19.3, py0 + 21.7))
    polys += [
        _to_intrinsic_box(130, 130, 150, 150),  # inside the red square   (row 900)
        _to_intrinsic_box(2000, 2000, 2020, 2020),  # off the image       (row 901)
        _to_intrinsic_box(590, 100, 610, 120),  # half off the image      (row 902)
        _to_intrinsic_box(-40, -40, -20, -20),  # off the image           (row 903)
    ]
    return make_layout(polys)


def test_affine_composes_spots_and_image(rgb_sdata):
    """The affine is image⁻¹ ∘ spots, and the levels' downscale factors are read from the pyramid."""
    affine, levels = spots_to_image_pixels(rgb_sdata, "spots", "he", "global")
    np.testing.assert_allclose(affine, EXPECTED_AFFINE, atol=1e-12)
    assert [lv.name for lv in levels] == ["scale0", "scale1", "scale2"]
    assert levels[0].shape == (600, 600) and levels[1].shape == (300, 300)
    assert levels[2].downscale == (4.0, 4.0)


def test_wrong_coordinate_system(rgb_sdata, grid_layout):
    """A coordinate system that the elements lack raises, naming the systems they have."""
    with pytest.raises(SoscopeInputError, match="global"):
        spots_to_image_pixels(rgb_sdata, "spots", "he", "aligned")
    with pytest.raises(SoscopeInputError, match="coordinate_system"):
        subspot_image_features(rgb_sdata, "he", grid_layout, "spots", coordinate_system="aligned")


def test_red_region_mean(rgb_sdata, grid_layout):
    """A sub-spot inside the painted red square has red's mean colour, at scale0 and scale1."""
    for level in (0, 1):
        f = subspot_image_features(
            rgb_sdata, "he", grid_layout, "spots", coordinate_system="global", target_resolution=level
        )
        names = f.names
        assert names == morphology_feature_names("rgb", ("R", "G", "B"))
        row = f.values[900]
        got = row[[names.index("mean_R"), names.index("mean_G"), names.index("mean_B")]]
        np.testing.assert_allclose(got, RED / 255.0, atol=1 / 255 + 1e-6)
        assert row[names.index("std_R")] < 2 / 255
        assert row[names.index("grad_mean")] < 1e-3
        assert f.values.dtype == np.float32 and f.values.shape == (904, len(names))


def test_outside_image_is_nan(rgb_sdata, grid_layout, caplog):
    """Sub-spots off the image get NaN rows and a warning count; half-inside ones are computed."""
    with caplog.at_level(logging.WARNING, logger="soscope.features"):
        f = subspot_image_features(rgb_sdata, "he", grid_layout, "spots", coordinate_system="global")
    assert np.isnan(f.values[901]).all() and np.isnan(f.values[903]).all()
    assert np.isfinite(f.values[902]).all()  # half inside: computed on its inside pixels
    assert np.isfinite(f.values[:901]).all()
    assert f.n_missing == 2
    assert "2 of 904" in caplog.text


def test_level_choice(rgb_sdata, grid_layout):
    """The coarsest level keeping ``min_pixels`` across a sub-spot is chosen; it can be forced."""
    # sub-spots are ~20 px across at scale0, 10 at scale1, 5 at scale2
    f = subspot_image_features(rgb_sdata, "he", grid_layout, "spots", coordinate_system="global")
    assert f.level == "scale0" and 18 < f.pixels_across < 23
    f = subspot_image_features(
        rgb_sdata, "he", grid_layout, "spots", coordinate_system="global", min_pixels=8
    )
    assert f.level == "scale1"
    _, levels = spots_to_image_pixels(rgb_sdata, "spots", "he", "global")
    assert choose_level(levels, 100.0, min_pixels=12) == 2
    assert choose_level(levels, 100.0, target_resolution="scale1") == 1
    with pytest.raises(SoscopeInputError, match="scale0"):
        choose_level(levels, 100.0, target_resolution="scale7")


@pytest.mark.parametrize("level", [0, 1])
def test_tiled_equals_untiled(rgb_sdata, grid_layout, level):
    """Small tiles give the same features as one tile holding everything."""
    kw = dict(coordinate_system="global", target_resolution=level)
    tiled = subspot_image_features(rgb_sdata, "he", grid_layout, "spots", tile_size=64, **kw)
    untiled = subspot_image_features(rgb_sdata, "he", grid_layout, "spots", tile_size=10**6, **kw)
    np.testing.assert_allclose(tiled.values, untiled.values, atol=1e-6, rtol=0, equal_nan=True)
    # the features carry signal: colours, the nuclei pattern and the texture differ between regions
    v = untiled.values[:900]
    varying = [i for i, n in enumerate(untiled.names) if n != "tissue_frac"]  # no background here
    assert np.nanstd(v[:, varying], axis=0).min() > 0


def test_rgb_thresholds_background_and_nuclei():
    """Background is found only when a bright, slide-like class exists; nuclei by Otsu on tissue H."""
    from soscope.features._morphology import fit_spec, rgb_to_hed

    rng = np.random.default_rng(0)
    pink, purple, white = np.array([230, 160, 200]), np.array([90, 60, 150]), np.array([244, 244, 246])
    px = np.concatenate([np.tile(pink, (600, 1)), np.tile(purple, (200, 1)), np.tile(white, (400, 1))])
    px = np.clip(px + rng.normal(0, 4, px.shape), 0, 255).astype(np.uint8)
    with_bg = fit_spec(px.T[:, None, :], "rgb", ("R", "G", "B"), 255.0)
    no_bg = fit_spec(px[:800].T[:, None, :], "rgb", ("R", "G", "B"), 255.0)
    grey = lambda c: float(c @ [0.2125, 0.7154, 0.0721]) / 255  # noqa: E731
    assert grey(pink) < with_bg.thresholds[0] < grey(white)
    assert no_bg.thresholds[0] == np.inf
    h = lambda c: float(rgb_to_hed(c[None] / 255.0)[0, 0])  # noqa: E731
    for spec in (with_bg, no_bg):
        assert h(pink) < spec.thresholds[1] < h(purple)


def test_distributed_client_matches(rgb_sdata, grid_layout):
    """An active dask.distributed client runs the tasks with the same results."""
    distributed = pytest.importorskip("distributed")
    ref = subspot_image_features(
        rgb_sdata, "he", grid_layout, "spots", coordinate_system="global", tile_size=128
    )
    with distributed.Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None):
        got = subspot_image_features(
            rgb_sdata, "he", grid_layout, "spots", coordinate_system="global", tile_size=128
        )
    np.testing.assert_allclose(got.values, ref.values, atol=1e-6, equal_nan=True)


def test_greyscale_single_channel():
    """A single-channel uint16 image gives fluorescence features normalised by dtype."""
    import spatialdata as sd
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import Scale

    img = np.full((1, 200, 260), 1000, dtype=np.uint16)
    img[0, 50:150, 60:160] = 40000
    image = Image2DModel.parse(
        img,
        dims=("c", "y", "x"),
        c_coords=["DAPI"],
        transformations={"global": Scale([2.0, 2.0], axes=("x", "y"))},
    )
    sdata = sd.SpatialData(images={"dapi": image}, shapes={"spots": _spots_gdf(4)})
    layout = make_layout(
        [
            _to_intrinsic_box(70, 60, 90, 80),  # bright
            _to_intrinsic_box(5, 5, 25, 25),  # dark
            _to_intrinsic_box(140, 90, 170, 110),  # straddles the edge of the bright square
            _to_intrinsic_box(900, 900, 910, 910),  # outside
        ]
    )
    f = subspot_image_features(sdata, "dapi", layout, "spots", coordinate_system="global", tile_size=32)
    assert f.names == morphology_feature_names("fluorescence", ("DAPI",))
    assert f.names[:3] == ["mean_DAPI", "std_DAPI", "high_frac_DAPI"]
    v = f.values
    np.testing.assert_allclose(v[0, 0], 40000 / 65535, atol=1e-6)
    np.testing.assert_allclose(v[1, 0], 1000 / 65535, atol=1e-6)
    assert v[0, 2] == 1.0 and v[1, 2] == 0.0 and 0.3 < v[2, 2] < 0.8
    assert v[2, f.names.index("grad_mean")] > v[0, f.names.index("grad_mean")]
    assert np.isnan(v[3]).all()


def test_callable_extractor(rgb_sdata, grid_layout):
    """A callable receives (B, 32, 32, C) float patches; its output comes back in sub-spot order."""
    seen = []

    def centre_pixel(patches: np.ndarray) -> np.ndarray:
        seen.append((patches.shape, patches.dtype, float(patches.min()), float(patches.max())))
        return patches[:, 16, 16, :] * 255.0

    f = subspot_image_features(
        rgb_sdata,
        "he",
        grid_layout,
        "spots",
        coordinate_system="global",
        extractor=centre_pixel,
        tile_size=100,
    )
    assert f.names == ["emb_0", "emb_1", "emb_2"] and f.extractor == "callable"
    for shape, dtype, lo, hi in seen:
        assert shape[1:] == (32, 32, 3) and dtype == np.float32 and 0.0 <= lo <= hi <= 1.0
    # + the probe patch; the centroids of 901, 902 (on the right edge) and 903 are outside
    assert sum(s[0][0] for s in seen) == 900 + 1 + 1
    # sub-spot order: the centre pixel of each sub-spot, read directly from the image
    img = _rgb_image()
    cen = grid_layout.centroid
    px, py = _to_px(cen[:, 0], cen[:, 1])
    r = np.floor(py - 16 + 0.5).astype(int) + 16
    c = np.floor(px - 16 + 0.5).astype(int) + 16
    ok = (r >= 0) & (r < 600) & (c >= 0) & (c < 600)
    np.testing.assert_allclose(f.values[ok], img[:, r[ok], c[ok]].T, atol=1e-3)
    np.testing.assert_allclose(f.values[900], RED, atol=1e-3)
    assert np.isnan(f.values[[901, 902, 903]]).all() and f.n_missing == 3
    # tile size does not matter
    g = subspot_image_features(
        rgb_sdata,
        "he",
        grid_layout,
        "spots",
        coordinate_system="global",
        extractor=centre_pixel,
        tile_size=10**6,
    )
    np.testing.assert_array_equal(f.values, g.values)


def test_torch_extractor(rgb_sdata, grid_layout):
    """A torch module receives (B, C, H, W) tensors and matches the equivalent callable."""
    torch = pytest.importorskip("torch")
    module = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    f = subspot_image_features(
        rgb_sdata,
        "he",
        grid_layout,
        "spots",
        coordinate_system="global",
        extractor=module,
        patch_size=8,
        batch_size=50,
    )
    g = subspot_image_features(
        rgb_sdata,
        "he",
        grid_layout,
        "spots",
        coordinate_system="global",
        extractor=lambda p: p.mean(axis=(1, 2)),
        patch_size=8,
    )
    assert f.extractor == "torch" and f.values.shape == (904, 3)
    np.testing.assert_allclose(f.values, g.values, atol=1e-5, equal_nan=True)
    np.testing.assert_allclose(f.values[900], RED / 255.0, atol=1e-5)


def test_bad_extractor_output(rgb_sdata, grid_layout):
    """Extractors returning the wrong number of rows, and unknown names, raise input errors."""
    with pytest.raises(SoscopeInputError, match="extractor"):
        subspot_image_features(
            rgb_sdata, "he", grid_layout, "spots", coordinate_system="global", extractor=lambda p: p[:1, 0, 0]
        )
    with pytest.raises(SoscopeInputError, match="morphology"):
        subspot_image_features(
            rgb_sdata, "he", grid_layout, "spots", coordinate_system="global", extractor="resnet"
        )


def test_precomputed_per_spot(rgb_sdata):
    """Per-spot obsm features are aligned by instance id and broadcast to sub-spots."""
    import anndata as ad
    import pandas as pd
    import spatialdata as sd
    from spatialdata.models import TableModel

    spots = rgb_sdata["spots"]
    n = len(spots)
    obs = pd.DataFrame({"region": pd.Categorical(["spots"] * n), "instance_id": spots.index.to_numpy()[::-1]})
    table = ad.AnnData(np.zeros((n, 1), dtype=np.float32), obs=obs)
    table.obs_names = [f"s{i}" for i in range(n)]
    table.obsm["emb"] = np.arange(n)[::-1, None] * np.ones((1, 2), np.float32)  # row = spot position
    table = TableModel.parse(table, region="spots", region_key="region", instance_key="instance_id")
    sdata = sd.SpatialData(shapes={"spots": spots}, tables={"t": table})
    layout = make_layout([box(0, 0, 1, 1)] * 12, per_spot=3)  # 4 spots x 3 sub-spots
    f = precomputed_features(sdata, "t", "emb", layout, "spots")
    np.testing.assert_array_equal(f.values[:, 0], np.repeat(np.arange(4), 3))
    g = subspot_image_features(
        sdata, "ignored", layout, "spots", coordinate_system="global", extractor="obsm:t:emb"
    )
    np.testing.assert_array_equal(f.values, g.values)
    with pytest.raises(SoscopeInputError, match="obsm"):
        precomputed_features(sdata, "t", "nope", layout, "spots")
