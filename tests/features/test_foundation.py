"""FoundationModel: µm-sized patches, embedding, PCA fitted once and reused, provenance, clear errors.

The networks are small and randomly initialised: nothing is downloaded.
"""

from __future__ import annotations

import logging
import sys
import types

import geopandas as gpd
import numpy as np
import pytest
import shapely
import torch
from shapely.geometry import Point, box

from soscope._errors import SoscopeInputError
from soscope.features import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    FoundationModel,
    image_microns_per_pixel,
    subspot_image_features,
)
from soscope.geometry import PolygonArray
from soscope.geometry._layout import SubspotLayout

UM_PER_PX = 0.5  # the test images' pixels, in µm (the coordinate system "global" is in µm)
RED = np.array([220, 20, 30], dtype=np.uint8)


class TinyCNN(torch.nn.Module):
    """``(B, 3, H, W) -> (B, 16)``: two convolutions and a global average (random weights)."""

    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(8, 16, 3, stride=2, padding=1)

    def forward(self, x):  # noqa: D102
        return torch.relu(self.conv2(torch.relu(self.conv1(x)))).mean(dim=(2, 3))


class MeanColour(torch.nn.Module):
    """``(B, 3, H, W) -> (B, 3)``: each channel's mean (what the model is shown, after normalisation)."""

    def forward(self, x):  # noqa: D102
        return x.mean(dim=(2, 3))


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _cnn(seed: int = 0) -> TinyCNN:
    torch.manual_seed(seed)
    return TinyCNN()


def _layout(n_side: int = 24, size_um: float = 10.0, seed: int = 1) -> SubspotLayout:
    """Build a jittered grid of ~10 µm boxes over the 300 µm image, 4 per spot, and two boxes off it.

    µm are the spots' intrinsic units.
    """
    rng = np.random.default_rng(seed)
    polys = []
    for j in range(n_side):
        for i in range(n_side):
            x0, y0 = 12.5 * i + rng.uniform(0, 2), 12.5 * j + rng.uniform(0, 2)
            polys.append(box(x0, y0, x0 + size_um, y0 + size_um))
    polys += [box(900, 900, 910, 910), box(-50, -50, -40, -40)]
    m = len(polys)
    geoms = np.empty(m, dtype=object)
    geoms[:] = polys
    spot_index = np.arange(m, dtype=np.int64) // 4
    n = int(spot_index[-1]) + 1
    offsets = np.searchsorted(spot_index, np.arange(n + 1)).astype(np.int64)
    cen = shapely.centroid(geoms)
    return SubspotLayout(
        polygons=PolygonArray.from_shapely(geoms),
        spot_index=spot_index,
        subspot=(np.arange(m) - offsets[spot_index]).astype(np.int32),
        offsets=offsets,
        area=shapely.area(geoms),
        footprint_weight=np.ones(m),
        centroid=np.stack([shapely.get_x(cen), shapely.get_y(cen)], axis=1),
        scheme="test",
    )


def _he_image(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.integers(120, 250, size=(3, 600, 600), dtype=np.uint8)
    yy, xx = np.mgrid[0:600, 0:600]
    dots = ((yy + 5 * seed) % 24 < 6) & ((xx % 24) < 6)  # dark "nuclei"
    img[0][dots], img[1][dots], img[2][dots] = 60, 30, 110
    img[:, 100:300, 100:300] = RED[:, None, None]  # a flat red square (50-150 µm)
    return img


def _sdata(image: np.ndarray, *, image_scale: float = UM_PER_PX, c_coords=None, n_spots: int = 150):
    """Build an image (``image_scale`` µm per pixel to "global", 3 levels) and point spots in µm."""
    import spatialdata as sd
    from spatialdata.models import Image2DModel, ShapesModel
    from spatialdata.transformations import Identity, Scale

    t = Identity() if image_scale == 1.0 else Scale([image_scale, image_scale], axes=("x", "y"))
    el = Image2DModel.parse(
        image, dims=("c", "y", "x"), c_coords=c_coords, scale_factors=[2, 2],
        chunks=(image.shape[0], 128, 128), transformations={"global": t},
    )  # fmt: skip
    xy = np.stack([np.arange(n_spots) % 12 * 25.0, np.arange(n_spots) // 12 * 25.0], axis=1)
    spots = gpd.GeoDataFrame({"radius": np.full(n_spots, 4.0)}, geometry=[Point(*p) for p in xy])
    spots = ShapesModel.parse(spots, transformations={"global": Identity()})
    return sd.SpatialData(images={"img": el}, shapes={"spots": spots})


@pytest.fixture(scope="module")
def he_a():
    return _sdata(_he_image(0))


@pytest.fixture(scope="module")
def he_b():
    return _sdata(_he_image(1))


@pytest.fixture(scope="module")
def layout():
    return _layout()


def _features(sdata, layout, fm, **kwargs):
    return subspot_image_features(
        sdata, "img", layout, "spots", coordinate_system="global", extractor=fm, **kwargs
    )


def _fm(**kwargs) -> FoundationModel:
    args = dict(um_per_pixel=1.0, tile_um=16.0, input_size=16, n_components=4, batch_size=64)
    return FoundationModel(_cnn(), **{**args, **kwargs})


# ------------------------------------------------------------------------------------------- features
def test_shape_names_and_fitted_pca(he_a, layout):
    """(sub-spots × n_components) float32, PC names, NaN off the image; the fitted PCA is handed back."""
    fm = _fm()
    f = _features(he_a, layout, fm)
    m = layout.n_subspots
    assert f.values.shape == (m, 4) and f.values.dtype == np.float32
    assert f.names == ["fm_pc1", "fm_pc2", "fm_pc3", "fm_pc4"] and f.extractor == "foundation"
    assert np.isnan(f.values[-2:]).all() and np.isfinite(f.values[:-2]).all() and f.n_missing == 2
    assert fm.pca is None, "the caller's object is left unfitted"
    fitted = f.fitted
    assert fitted.pca is not None and fitted.model is fm.model
    ratio = fitted.pca.explained_variance_ratio
    assert ratio.shape == (4,) and np.all(np.diff(ratio) <= 0) and 0 < ratio.sum() <= 1
    # the PCA's scores: centred, decorrelated, variances in decreasing order
    scores = f.values[:-2].astype(np.float64)
    np.testing.assert_allclose(scores.mean(0), 0, atol=1e-4)
    cov = np.cov(scores.T)
    np.testing.assert_allclose(cov - np.diag(np.diag(cov)), 0, atol=1e-4 * cov.max())


def test_deterministic(he_a, layout):
    a = _features(he_a, layout, _fm()).values
    b = _features(he_a, layout, _fm()).values
    np.testing.assert_array_equal(a, b)


def test_tiled_equals_untiled(he_a, layout):
    """Tiles of 64 px give the features of one tile (embeddings, and the PCA fitted on them)."""
    raw = _fm(n_components=None)
    whole = _features(he_a, layout, raw, tile_size=4096).values
    tiled = _features(he_a, layout, raw, tile_size=64).values
    np.testing.assert_allclose(tiled, whole, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        _features(he_a, layout, _fm(), tile_size=64).values,
        _features(he_a, layout, _fm(), tile_size=4096).values,
        rtol=1e-4, atol=1e-5,
    )  # fmt: skip


def test_fitted_pca_is_reused_on_another_section(he_a, he_b, layout):
    """A fitted model projects a new image on the training components (no refit)."""
    fitted = _features(he_a, layout, _fm()).fitted
    pca_before = fitted.pca
    new = _features(he_b, layout, fitted)
    assert new.fitted is fitted and fitted.pca is pca_before
    raw_b = _features(he_b, layout, fitted.embeddings_only()).values
    np.testing.assert_allclose(new.values, fitted.reduce(raw_b), rtol=1e-5, atol=1e-5)
    refit = _features(he_b, layout, _fm()).values
    assert not np.allclose(new.values[:-2], refit[:-2], atol=1e-3), "a refit would differ"


def test_patches_normalised_and_resampled(he_a, layout):
    """A sub-spot inside a red square shows the model red, normalised with the ImageNet mean and std."""
    fm = FoundationModel(MeanColour(), um_per_pixel=1.0, tile_um=8.0, input_size=7, n_components=None)
    assert fm.mean == IMAGENET_MEAN and fm.std == IMAGENET_STD
    f = _features(he_a, layout, fm)
    centres = np.asarray(layout.centroid)
    red = (centres[:, 0] > 60) & (centres[:, 0] < 140) & (centres[:, 1] > 60) & (centres[:, 1] < 140)
    expected = (RED / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(f.values[red], np.broadcast_to(expected, (red.sum(), 3)), atol=1e-4)
    # 8 µm at 0.5 µm per pixel: level scale1 (1 µm per pixel, the model's input resolution), 8 px patches
    assert f.level == "scale1" and f.provenance["tile_px"] == 8
    assert f.provenance["image_um_per_pixel"] == pytest.approx(UM_PER_PX)
    assert "µm" in f.provenance["um_per_pixel_source"]


def test_timm_style_model_and_name_without_timm(monkeypatch):
    """A timm model's pretrained_cfg sets input size and normalisation; names build with pretrained=False."""
    net = _cnn()
    net.pretrained_cfg = {
        "architecture": "tiny_test",
        "input_size": (3, 48, 48),
        "mean": (0.5,) * 3,
        "std": (0.25,) * 3,
    }
    fm = FoundationModel(net, um_per_pixel=0.5)
    assert fm.input_size == 48 and fm.mean == (0.5,) * 3 and fm.std == (0.25,) * 3
    assert fm.tile_um == 24.0 and fm.name == "timm:tiny_test" and fm.normalisation_source == "timm"
    calls = []

    def create_model(name, **kwargs):
        calls.append((name, kwargs))
        return _cnn()

    monkeypatch.setitem(sys.modules, "timm", types.SimpleNamespace(create_model=create_model))
    fm = FoundationModel("tiny_test", um_per_pixel=0.5, n_components=2)
    assert calls == [("tiny_test", {"pretrained": False, "num_classes": 0})]
    assert fm.name == "timm:tiny_test" and fm.input_size == 224
    monkeypatch.setitem(sys.modules, "timm", None)  # not installed
    with pytest.raises(SoscopeInputError, match=r"soscope\[timm\]"):
        FoundationModel("tiny_test", um_per_pixel=0.5)


# ------------------------------------------------------------------------------------------- fluorescence
@pytest.mark.parametrize("n_channels", [1, 2])
def test_fluorescence_channels_mapped_to_rgb(layout, n_channels):
    """1 channel → grey; 2 channels → (c0, c1, mean): what the model sees, scaled by percentiles."""
    rng = np.random.default_rng(2)
    img = rng.gamma(2.0, 300.0, size=(n_channels, 600, 600)).astype(np.uint16)
    sdata = _sdata(img, c_coords=["DAPI", "CD3"][:n_channels])
    fm = FoundationModel(
        MeanColour(),
        um_per_pixel=1.0,
        tile_um=8.0,
        input_size=8,
        n_components=None,
        mean=(0, 0, 0),
        std=(1, 1, 1),
    )
    f = _features(sdata, layout, fm)
    v = f.values[:-2]
    assert f.provenance["image_kind"] == "fluorescence" and 0 <= v.min() and v.max() <= 1
    if n_channels == 1:
        np.testing.assert_allclose(v[:, 0], v[:, 1], atol=1e-6)
        np.testing.assert_allclose(v[:, 0], v[:, 2], atol=1e-6)
    else:
        np.testing.assert_allclose(v[:, 2], (v[:, 0] + v[:, 1]) / 2, atol=1e-5)
        assert not np.allclose(v[:, 0], v[:, 1])
    # a brighter exposure of the same tissue gives the same features (percentile scaling per image)
    bright = _features(
        _sdata((img.astype(np.float32) * 7.0), c_coords=["DAPI", "CD3"][:n_channels]), layout, fm
    )
    np.testing.assert_allclose(bright.values[:-2], v, atol=2e-3)


def test_fluorescence_channel_choice(layout):
    """More than 3 channels need channels= (by name or index); stain normalisation is refused."""
    img = np.random.default_rng(3).integers(0, 4000, size=(4, 600, 600), dtype=np.uint16)
    sdata = _sdata(img, c_coords=["DAPI", "CD3", "CD20", "PanCK"])
    with pytest.raises(SoscopeInputError, match="channels="):
        _features(sdata, layout, _fm())
    f = _features(sdata, layout, _fm(channels=["DAPI", 3]))
    assert list(f.provenance["channels"]) == [0, 3]
    with pytest.raises(SoscopeInputError, match="not in the image"):
        _features(sdata, layout, _fm(channels=["CD8"]))
    with pytest.raises(SoscopeInputError, match="H&E"):
        _features(sdata, layout, _fm(channels=[0], stain_normalise="macenko"))


def test_stain_normalised_he(he_a, layout):
    """stain_normalise= is applied and recorded; the result differs from the raw image's."""
    f = _features(he_a, layout, _fm(stain_normalise="macenko", n_components=None))
    assert f.provenance["stain_normalise"] == "macenko" and f.provenance["stain_source"].shape == (8,)
    raw = _features(he_a, layout, _fm(n_components=None))
    assert not np.allclose(f.values[:-2], raw.values[:-2])


# ------------------------------------------------------------------------------------------- errors
def test_no_microns_per_pixel_derivable(layout):
    """An image in its own pixel grid, spots no Visium lattice: a clear error; microns_per_unit= fixes it."""
    sdata = _sdata(_he_image(0), image_scale=1.0)
    with pytest.raises(SoscopeInputError, match="microns_per_unit"):
        _features(sdata, layout, _fm())
    f = _features(sdata, layout, _fm(microns_per_unit=0.5))
    assert f.provenance["image_um_per_pixel"] == pytest.approx(0.5)
    assert f.provenance["um_per_pixel_source"] == "microns_per_unit=0.5"


def test_visium_lattice_gives_the_scale():
    """Visium-like circles (diameter / spacing 0.55) on a hexagonal lattice: 100 µm between spots."""
    import spatialdata as sd
    from spatialdata.models import Image2DModel, ShapesModel
    from spatialdata.transformations import Identity

    # a lattice 200 px apart in the image's pixel grid: 0.5 µm per pixel
    rows, cols = np.mgrid[0:6, 0:6]
    xy = np.stack(
        [cols.ravel() * 200.0 + (rows.ravel() % 2) * 100.0, rows.ravel() * 200.0 * np.sqrt(3) / 2], 1
    )
    spots = gpd.GeoDataFrame({"radius": np.full(len(xy), 55.0)}, geometry=[Point(*p) for p in xy])
    image = Image2DModel.parse(
        np.zeros((3, 64, 64), np.uint8), dims=("c", "y", "x"), transformations={"global": Identity()}
    )
    sdata = sd.SpatialData(
        images={"img": image},
        shapes={"spots": ShapesModel.parse(spots, transformations={"global": Identity()})},
    )
    mpp, source = image_microns_per_pixel(sdata, "spots", "img", "global")
    assert mpp == pytest.approx(0.5) and "Visium" in source


def test_tile_smaller_than_a_pixel(he_a, layout):
    with pytest.raises(SoscopeInputError, match="smaller than one pixel"):
        _features(he_a, layout, _fm(tile_um=0.2, input_size=1, um_per_pixel=0.2))


def test_more_components_than_features(he_a, layout):
    with pytest.raises(SoscopeInputError, match="n_components=20 exceeds the model's 16"):
        _features(he_a, layout, _fm(n_components=20))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"um_per_pixel": 0}, "um_per_pixel"),
        ({"tile_um": -1}, "tile_um"),
        ({"input_size": 0}, "input_size"),
        ({"n_components": 1.5}, "n_components"),
        ({"std": (1, 0, 1)}, "std"),
        ({"mean": (0.5, 0.5)}, "mean"),
        ({"stain_normalise": "vahadane"}, "stain_normalise"),
        ({"channels": [0, 1, 2, 3]}, "channels"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(SoscopeInputError, match=match):
        _fm(**kwargs)


def test_not_a_module():
    with pytest.raises(SoscopeInputError, match="torch.nn.Module"):
        FoundationModel(lambda x: x, um_per_pixel=0.5)


def test_resolution_mismatch_is_logged(caplog):
    with caplog.at_level(logging.WARNING, logger="soscope.features"):
        _fm(um_per_pixel=0.25, tile_um=64.0, input_size=16)
    assert "training resolution" in caplog.text


# ------------------------------------------------------------------------------------------- with the model
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Train a small SoScope with a FoundationModel and save it; also return the user's extractor."""
    import soscope

    sdata = soscope.datasets.synthetic(n_spots=120, n_features=20, k=7, image=True, seed=0)
    fm = FoundationModel(_cnn(), um_per_pixel=1.5, tile_um=30.0, input_size=20, n_components=4)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = soscope.SoScope(
            sdata, table="table", image_features=fm, n_hidden=16, n_latent=4, device="cpu", progress=False
        )
        model.train(epochs=2)
    finally:
        torch.set_num_threads(before)
    path = tmp_path_factory.mktemp("fm_model")
    model.save(path)
    return sdata, model, fm, path


def test_soscope_fits_the_pca_on_its_training_data_and_records_provenance(trained, tmp_path):
    """SoScope keeps the PCA fitted on its sub-spots; uns["soscope"]["image_features"] says how."""
    import anndata as ad

    sdata, model, fm, _ = trained
    assert fm.pca is None and model._image_extractor.pca is not None
    # the foundation model's components, then the nuclei (segmentation="auto" detects them on the image)
    assert [n for n in model.image_feature_names if not n.startswith("nuclei:")] == [
        "fm_pc1",
        "fm_pc2",
        "fm_pc3",
        "fm_pc4",
    ]
    assert model.settings["image_features"] == f"foundation:{__name__}:TinyCNN"
    out = model.enhance(sdata, inplace=False)
    uns = out.tables["table_soscope"].uns["soscope"]["image_features"]
    assert uns["extractor"] == "foundation" and uns["model"] == f"{__name__}:TinyCNN"
    assert uns["um_per_pixel"] == 1.5 and uns["tile_um"] == 30.0 and uns["input_size"] == 20
    assert uns["n_components"] == 4 and len(uns["explained_variance_ratio"]) == 4
    np.testing.assert_allclose(uns["mean"], IMAGENET_MEAN)
    section = uns["sections"]["spots"]
    assert section["image_um_per_pixel"] == pytest.approx(1.5) and section["tile_px"] == 20
    ad.AnnData(uns={"soscope": out.tables["table_soscope"].uns["soscope"]}).write_zarr(tmp_path / "uns.zarr")


def test_saved_pca_projects_a_new_section(trained):
    """Saved and loaded, the model projects another section with the training PCA (never refitted)."""
    import soscope

    _, model, _, path = trained
    loaded = soscope.SoScope.load(path, device="cpu", progress=False, image_features=TinyCNN)
    fitted, again = model._image_extractor, loaded._image_extractor
    assert isinstance(again, FoundationModel) and again.config() == fitted.config()
    np.testing.assert_array_equal(again.pca.components, fitted.pca.components)
    np.testing.assert_array_equal(again.pca.mean, fitted.pca.mean)
    assert torch.equal(again.model.conv1.weight, fitted.model.conv1.weight), "the saved weights"
    other = soscope.datasets.synthetic(n_spots=100, n_features=20, k=7, image=True, seed=5)
    new = loaded._prepare_other(other).data.image_features
    np.testing.assert_allclose(new, model._prepare_other(other).data.image_features, rtol=1e-6, atol=1e-6)
    assert loaded._image_extractor.pca is again.pca, "applying does not refit"
    out = loaded.enhance(other, inplace=False)
    uns = out.tables["table_soscope"].uns["soscope"]["image_features"]
    np.testing.assert_array_equal(uns["explained_variance_ratio"], fitted.pca.explained_variance_ratio)
    # trusted module: rebuilt from its import path, without being given
    trusted = soscope.SoScope.load(path, device="cpu", progress=False, trusted_modules=[__name__])
    np.testing.assert_array_equal(trusted._image_extractor.pca.components, fitted.pca.components)
