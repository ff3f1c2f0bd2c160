"""Stain (Macenko, Reinhard) and intensity (percentile) normalisation, and per-section standardisation."""

from __future__ import annotations

import numpy as np
import pytest

from soscope._errors import SoscopeInputError
from soscope.features import (
    MACENKO_REFERENCE,
    PercentileScaling,
    SectionStandardiser,
    StainNormaliser,
    macenko_stains,
    normalise_stain,
    reinhard_statistics,
    standardise_per_section,
)
from soscope.features._stain import _reference_render


def _render(stains: np.ndarray, conc: np.ndarray) -> np.ndarray:
    """Beer-Lambert: ``(3, N)`` RGB in [0, 1] from ``(3, 2)`` stain vectors and ``(2, N)`` concentrations."""
    return np.clip(np.exp(-(stains @ conc)), 0.0, 1.0)


def _unit_columns(m: np.ndarray) -> np.ndarray:
    return m / np.linalg.norm(m, axis=0, keepdims=True)


@pytest.fixture(scope="module")
def reference_and_shifted():
    """Render a reference H&E (the reference stains) and the same tissue with other stains and staining."""
    ref = _reference_render(seed=3, n=20_000)
    stains, max_c = MACENKO_REFERENCE
    conc = np.linalg.pinv(stains) @ -np.log(np.clip(ref, 1 / 255, 1))
    # another scanner / lab: stain vectors rotated (bluer haematoxylin, pinker eosin), 1.3x / 0.8x staining
    shifted_stains = _unit_columns(np.array([[0.65, 0.28], [0.70, 0.78], [0.30, 0.56]]))
    shifted = _render(shifted_stains, conc * np.array([[1.3], [0.8]]))
    return ref, shifted, shifted_stains


def test_macenko_recovers_known_stain_vectors(reference_and_shifted):
    """The stain vectors estimated from an image rendered from known vectors are those vectors."""
    ref, shifted, shifted_stains = reference_and_shifted
    stains, _ = macenko_stains(ref)
    np.testing.assert_allclose(stains, MACENKO_REFERENCE[0], atol=2e-3)
    stains, _ = macenko_stains(shifted)
    np.testing.assert_allclose(stains, shifted_stains, atol=2e-3)


def test_macenko_normalises_shifted_stains_back_to_the_reference(reference_and_shifted):
    """An image with shifted stain vectors and intensities normalises back close to the reference."""
    ref, shifted, _ = reference_and_shifted
    before = np.abs(shifted - ref).mean()
    out = StainNormaliser.fit(shifted, "macenko")(shifted)
    after = np.abs(out - ref).mean()
    assert out.dtype == np.float32 and out.shape == ref.shape
    assert before > 0.03 and after < 0.002, (before, after)
    # the reference itself is left (almost exactly) as it is
    np.testing.assert_allclose(StainNormaliser.fit(ref, "macenko")(ref), ref, atol=1e-3)


def test_reinhard_undoes_a_colour_shift(reference_and_shifted):
    """A known shift of brightness, contrast and colour cast (affine in Lab) is undone.

    Other stains come close to the reference statistics.
    """
    from skimage.color import lab2rgb, rgb2lab

    ref, stained, _ = reference_and_shifted
    lab = rgb2lab(ref.T)
    cast = np.clip(lab2rgb(lab * np.array([0.9, 1.2, 1.1]) + np.array([6.0, -3.0, 4.0])).T, 0, 1)
    out = StainNormaliser.fit(cast, "reinhard", reference=ref)(cast)
    before, after = np.abs(cast - ref).mean(), np.abs(out - ref).mean()
    assert before > 0.02 and after < 0.1 * before, (before, after)
    mean, std = reinhard_statistics(StainNormaliser.fit(stained, "reinhard", reference=ref)(stained))
    ref_mean, ref_std = reinhard_statistics(ref)
    np.testing.assert_allclose(mean, ref_mean, atol=2.0)  # Lab units (L 0-100); out-of-gamut colours clip
    np.testing.assert_allclose(std, ref_std, rtol=0.2)


def test_pixelwise_so_tiles_agree(reference_and_shifted):
    """Normalising pieces of an image gives the pieces of the normalised image (tile independence)."""
    _, shifted, _ = reference_and_shifted
    image = shifted.reshape(3, 100, 200)
    for method in ("macenko", "reinhard"):
        norm = StainNormaliser.fit(image, method)
        whole = norm(image)
        np.testing.assert_array_equal(norm(image[:, :37, 50:]), whole[:, :37, 50:])


def test_normalise_stain_convenience_channels_last(reference_and_shifted):
    """``normalise_stain`` takes (H, W, 3) uint8 and returns float32 in [0, 1], deterministically."""
    _, shifted, _ = reference_and_shifted
    img = (shifted.reshape(3, 100, 200).transpose(1, 2, 0) * 255).round().astype(np.uint8)
    a = normalise_stain(img, "macenko")
    assert a.shape == img.shape and a.dtype == np.float32 and 0 <= a.min() and a.max() <= 1
    np.testing.assert_array_equal(a, normalise_stain(img, "macenko"))


def test_stain_errors():
    """Unknown method, a blank image and a fluorescence image give clear errors."""
    with pytest.raises(SoscopeInputError, match="macenko"):
        StainNormaliser.fit(np.ones((3, 10, 10)), "vahadane")
    with pytest.raises(SoscopeInputError, match="blank"):
        macenko_stains(np.ones((3, 10, 10)))
    with pytest.raises(SoscopeInputError, match="3 channels"):
        macenko_stains(np.ones((2, 10, 10)))


def test_percentile_scaling_per_channel():
    """Each channel's low / high percentile maps to 0 / 1, whatever the exposure (a 16-bit image x10)."""
    rng = np.random.default_rng(0)
    dim = rng.gamma(2.0, 50.0, size=(2, 64, 64))
    bright = dim * 10.0
    a = PercentileScaling.fit(dim)(dim)
    b = PercentileScaling.fit(bright)(bright)
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert a.min() == 0.0 and a.max() == 1.0
    for c in range(2):
        assert np.mean(a[c] == 0.0) == pytest.approx(0.01, abs=0.005)
    constant = PercentileScaling.fit(np.full((1, 8, 8), 7.0))(np.full((1, 8, 8), 7.0))
    assert np.all(constant == 0.0)


def test_per_section_standardisation():
    """Each section is standardised with its own statistics; chunks agree with the whole."""
    rng = np.random.default_rng(1)
    a = rng.normal(0.0, 1.0, size=(300, 4))
    sections = np.array(["A"] * 300 + ["B"] * 300 + ["C"] * 10)
    features = np.vstack([a, a * 3.0 + 5.0, rng.normal(size=(10, 4))]).astype(np.float32)
    features[[5, 305]] = np.nan
    z = standardise_per_section(features, sections)
    # section B is section A with another brightness and contrast: the same standardised values
    np.testing.assert_allclose(z[300:600], z[:300], atol=1e-4)
    assert np.all(z[5] == 0.0)
    st = SectionStandardiser.fit(features, sections, fallback_mean=np.zeros(4), fallback_std=np.ones(4))
    assert st.fallback.tolist() == [False, False, True]  # C has only 10 rows: the fallback statistics
    rows = np.array([609, 3, 450])
    whole = st.standardise(features, sections)
    np.testing.assert_array_equal(st.standardise(features[rows], sections[rows]), whole[rows])
    np.testing.assert_allclose(st.standardise(features[600:], sections[600:]), features[600:], atol=1e-6)
    with pytest.raises(SoscopeInputError, match="not seen"):
        st.standardise(features[:2], np.array(["A", "Z"]))


# ------------------------------------------------------------------------------------------- morphology
def _morphology_sdata(image: np.ndarray):
    """Build an image in its own pixel frame and a grid of circles split into grid:2 sub-spots."""
    import geopandas as gpd
    import spatialdata as sd
    from shapely.geometry import Point
    from spatialdata.models import Image2DModel, ShapesModel
    from spatialdata.transformations import Identity

    from soscope.geometry import make_subspots

    el = Image2DModel.parse(image, dims=("c", "y", "x"), scale_factors=[2], chunks=(image.shape[0], 64, 64))
    xy = np.stack(np.meshgrid(np.arange(20.0, 380.0, 40.0), np.arange(20.0, 380.0, 40.0)), -1).reshape(-1, 2)
    spots = gpd.GeoDataFrame({"radius": np.full(len(xy), 15.0)}, geometry=[Point(*p) for p in xy])
    spots = ShapesModel.parse(spots, transformations={"global": Identity()})
    return sd.SpatialData(images={"img": el}, shapes={"spots": spots}), make_subspots(spots, "grid:2")


@pytest.fixture(scope="module")
def he_morphology(reference_and_shifted):
    _, shifted, _ = reference_and_shifted
    tissue = shifted.reshape(3, 100, 200)
    image = (np.tile(tissue, (1, 4, 2)) * 255).round().astype(np.uint8)  # 400 x 400
    return _morphology_sdata(image)


@pytest.mark.parametrize("norm", ["macenko", "reinhard", "percentile"])
def test_morphology_on_a_normalised_image(he_morphology, norm):
    """'morphology:<normalisation>' measures the normalised image: other values, same names, tile-free."""
    from soscope.features import subspot_image_features

    sdata, layout = he_morphology

    def run(extractor, tile):
        return subspot_image_features(
            sdata, "img", layout, "spots", coordinate_system="global", extractor=extractor, tile_size=tile
        )

    plain = run("morphology", 4096)
    f = run(f"morphology:{norm}", 4096)
    assert f.names == plain.names and f.extractor == f"morphology:{norm}"
    assert f.provenance["normalisation"] == norm
    assert not np.allclose(f.values, plain.values, equal_nan=True)
    np.testing.assert_allclose(run(f"morphology:{norm}", 96).values, f.values, rtol=1e-5, atol=1e-6)


def test_morphology_normalisation_errors(he_morphology):
    from soscope.features import subspot_image_features

    sdata, layout = he_morphology
    with pytest.raises(SoscopeInputError, match="macenko"):
        subspot_image_features(
            sdata, "img", layout, "spots", coordinate_system="global", extractor="morphology:vahadane"
        )
    grey, layout = _morphology_sdata(np.random.default_rng(0).integers(0, 4000, (1, 200, 200), np.uint16))
    with pytest.raises(SoscopeInputError, match="H&E"):
        subspot_image_features(
            grey, "img", layout, "spots", coordinate_system="global", extractor="morphology:macenko"
        )
