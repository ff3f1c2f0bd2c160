"""Tests of nucleus detection (soscope.features.segment_nuclei) and per-polygon nucleus statistics."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import shapely
from shapely.geometry import box

from soscope.features import (
    NUCLEI_COLUMNS,
    NucleusDetector,
    match_points,
    nuclear_channel,
    nuclei_per_polygon,
    segment_nuclei,
)
from soscope.geometry import PolygonArray

UM_PER_PX = 0.5
DIAMETER_UM = 8.0


def random_centres(rng: np.random.Generator, n: int, shape: tuple[int, int], min_sep_px: float) -> np.ndarray:
    """Up to ``n`` random (x, y) centres at least ``min_sep_px`` apart and a radius away from the border."""
    margin = min_sep_px / 2
    out: list[np.ndarray] = []
    for _ in range(50 * n):
        p = rng.uniform([margin, margin], [shape[1] - margin, shape[0] - margin])
        if all(np.hypot(*(p - q)) >= min_sep_px for q in out):
            out.append(p)
        if len(out) == n:
            break
    return np.array(out)


def disc_image(
    rng: np.random.Generator,
    centres: np.ndarray,
    shape: tuple[int, int],
    radius_px: float,
    *,
    brightness: tuple[float, float] = (0.5, 1.0),
    noise: float = 0.03,
) -> np.ndarray:
    """Fluorescence-like image in 0..1: blurred discs of random brightness on a dark, noisy background."""
    from scipy import ndimage as ndi

    yy, xx = np.mgrid[: shape[0], : shape[1]]
    img = np.zeros(shape)
    for x, y in centres:
        r = radius_px * rng.uniform(0.85, 1.15)
        img[(xx - x) ** 2 + (yy - y) ** 2 <= r**2] = rng.uniform(*brightness)
    img = ndi.gaussian_filter(img, 1.0) + rng.normal(0.0, noise, shape)
    return np.clip(img, 0.0, 1.0)


def precision_recall(table: pd.DataFrame, centres_px: np.ndarray, max_um: float = 5.0) -> tuple[float, float]:
    """Match detections to true centres (µm) one-to-one; return (precision, recall)."""
    ia, _ = match_points(centres_px * UM_PER_PX, table[["x_um", "y_um"]].to_numpy(), max_um)
    return len(ia) / max(len(table), 1), len(ia) / len(centres_px)


@pytest.fixture(scope="module")
def synthetic():
    """Make a 400 x 400 px (200 µm) fluorescence field with ~70 nuclei of 8 µm, some touching (9 µm apart)."""
    rng = np.random.default_rng(3)
    shape = (400, 400)
    radius = DIAMETER_UM / 2 / UM_PER_PX
    centres = random_centres(rng, 70, shape, min_sep_px=9.0 / UM_PER_PX)
    return disc_image(rng, centres, shape, radius), centres


# ----------------------------------------------------------------------------------------------------
# detection
# ----------------------------------------------------------------------------------------------------
def test_detects_synthetic_nuclei(synthetic):
    """Known discs are found: recall and precision >= 0.9, areas near the discs' area."""
    img, centres = synthetic
    table = segment_nuclei(img, microns_per_pixel=UM_PER_PX, nucleus_diameter_um=DIAMETER_UM)
    assert list(table.columns) == list(NUCLEI_COLUMNS)
    precision, recall = precision_recall(table, centres)
    assert recall >= 0.9 and precision >= 0.9, (precision, recall, len(table), len(centres))
    nominal = np.pi * (DIAMETER_UM / 2) ** 2
    assert 0.5 * nominal < table["area_um2"].median() < 1.5 * nominal
    assert table["label"].is_unique and (table["label"] > 0).all()
    np.testing.assert_allclose(table["x_um"], table["x_px"] * UM_PER_PX)
    assert table.attrs["detector"]["stain"] == "fluorescence"


def test_sizes_are_in_microns(synthetic):
    """The same tissue at half the resolution gives the same nuclei (µm positions, areas in µm²)."""
    from skimage.transform import downscale_local_mean

    img, centres = synthetic
    fine = segment_nuclei(img, microns_per_pixel=UM_PER_PX, nucleus_diameter_um=DIAMETER_UM)
    coarse = segment_nuclei(
        downscale_local_mean(img, (2, 2)), microns_per_pixel=2 * UM_PER_PX, nucleus_diameter_um=DIAMETER_UM
    )
    ia, _ = match_points(fine[["x_um", "y_um"]].to_numpy(), coarse[["x_um", "y_um"]].to_numpy(), 2.0)
    assert len(ia) >= 0.9 * max(len(fine), len(coarse))
    assert abs(np.log(coarse["area_um2"].median() / fine["area_um2"].median())) < 0.25


def test_tiled_equals_untiled(synthetic):
    """Dask tiles with halos give the same nuclei and labels as the whole image; edge nuclei counted once."""
    da = pytest.importorskip("dask.array")
    img, _ = synthetic
    whole, labels_whole = segment_nuclei(
        img, microns_per_pixel=UM_PER_PX, nucleus_diameter_um=DIAMETER_UM, return_labels=True
    )
    # 9 tiles whose edges cut many nuclei; the halo (>= 2 diameters) is wider than every filter's reach
    tiled, labels_tiled = segment_nuclei(
        da.from_array(img, chunks=(140, 140)),
        microns_per_pixel=UM_PER_PX,
        nucleus_diameter_um=DIAMETER_UM,
        return_labels=True,
    )
    assert tiled.attrs["detector"]["tiles"] > 1
    assert tiled.attrs["detector"]["halo_px"] >= 2 * DIAMETER_UM / UM_PER_PX
    pd.testing.assert_frame_equal(whole, tiled)
    np.testing.assert_array_equal(labels_whole, np.asarray(labels_tiled))
    # every table label is present in the labels image, and nothing else is
    assert set(np.unique(labels_whole)) - {0} == set(whole["label"])


def test_tiled_equals_untiled_when_downsampled(synthetic):
    """With a working-resolution factor of 2, odd dask chunk edges are snapped so tiles still agree."""
    da = pytest.importorskip("dask.array")
    img, centres = synthetic
    det = NucleusDetector(nucleus_diameter_um=DIAMETER_UM, working_pixels_per_diameter=8.0)
    assert det.factor(UM_PER_PX) == 2
    whole, labels_whole = segment_nuclei(img, microns_per_pixel=UM_PER_PX, detector=det, return_labels=True)
    tiled, labels_tiled = segment_nuclei(
        da.from_array(img, chunks=(141, 133)), microns_per_pixel=UM_PER_PX, detector=det, return_labels=True
    )
    assert whole.attrs["detector"]["downsampling"] == 2 and tiled.attrs["detector"]["tiles"] > 1
    pd.testing.assert_frame_equal(whole, tiled)
    np.testing.assert_array_equal(labels_whole, np.asarray(labels_tiled))
    precision, recall = precision_recall(whole, centres)  # still finds the nuclei, in full-resolution px
    assert recall >= 0.9 and precision >= 0.9


def test_tile_size_on_numpy_equals_whole(synthetic):
    """``tile_size`` tiles a numpy image; the result is the untiled one."""
    img, _ = synthetic
    whole = segment_nuclei(img, microns_per_pixel=UM_PER_PX, nucleus_diameter_um=DIAMETER_UM)
    tiled = segment_nuclei(img, microns_per_pixel=UM_PER_PX, nucleus_diameter_um=DIAMETER_UM, tile_size=64)
    halo = tiled.attrs["detector"]["halo_px"]
    assert tiled.attrs["detector"]["tiles"] == (400 // max(64, halo)) ** 2  # a tile is at least the halo
    pd.testing.assert_frame_equal(whole, tiled)


def test_channel_chosen_by_name():
    """The DAPI channel is found by name (numpy + channel_names, and a DataArray's ``c`` coordinate)."""
    xr = pytest.importorskip("xarray")
    rng = np.random.default_rng(7)
    shape = (240, 240)
    radius = DIAMETER_UM / 2 / UM_PER_PX
    nuclei = random_centres(rng, 20, shape, 2.5 * radius)
    # the other channel holds large blobs elsewhere: detecting on it would miss the nuclei
    decoy = random_centres(rng, 6, shape, 6 * radius)
    img = np.stack([disc_image(rng, decoy, shape, 2.5 * radius), disc_image(rng, nuclei, shape, radius)])

    assert nuclear_channel(["CD45", "Hoechst 33342"]) == 1
    assert nuclear_channel(["a", "b"]) == 0
    assert nuclear_channel(["a", "b"], "b") == 1
    by_name = segment_nuclei(
        img, microns_per_pixel=UM_PER_PX, channel_names=["membrane", "DAPI"], nucleus_diameter_um=DIAMETER_UM
    )
    assert by_name.attrs["detector"]["channel"] == "DAPI"
    precision, recall = precision_recall(by_name, nuclei)
    assert recall >= 0.9 and precision >= 0.9

    arr = xr.DataArray(img, dims=("c", "y", "x"), coords={"c": ["membrane", "DAPI"]})
    from_xr = segment_nuclei(arr, microns_per_pixel=UM_PER_PX, nucleus_diameter_um=DIAMETER_UM)
    pd.testing.assert_frame_equal(by_name, from_xr)

    # without names the first channel is used; channel= overrides
    first = segment_nuclei(img, microns_per_pixel=UM_PER_PX, nucleus_diameter_um=DIAMETER_UM)
    assert first.attrs["detector"]["channel"] == 0
    assert precision_recall(first, nuclei)[1] < 0.5
    forced = segment_nuclei(img, microns_per_pixel=UM_PER_PX, channel=1, nucleus_diameter_um=DIAMETER_UM)
    pd.testing.assert_frame_equal(by_name.drop(columns=[]), forced, check_like=True)
    with pytest.raises(ValueError, match="not among"):
        segment_nuclei(img, microns_per_pixel=UM_PER_PX, channel="Hoechst", channel_names=["a", "b"])


def test_several_planes_are_projected():
    """``channel=[...]`` finds the nuclei of every plane; one plane finds only its own.

    Two z-planes each hold half of the nuclei, in different intensity units (the second ×1000 with an
    offset): only per-plane normalisation before the maximum lets both halves be found.
    """
    da = pytest.importorskip("dask.array")
    rng = np.random.default_rng(5)
    shape = (320, 320)
    radius = DIAMETER_UM / 2 / UM_PER_PX
    centres = random_centres(rng, 40, shape, 9.0 / UM_PER_PX)
    half_a, half_b = centres[::2], centres[1::2]
    img = np.stack(
        [disc_image(rng, half_a, shape, radius), 500.0 + 1000.0 * disc_image(rng, half_b, shape, radius)]
    )
    names = ["dapi_z0", "dapi_z1"]
    kw = {"microns_per_pixel": UM_PER_PX, "nucleus_diameter_um": DIAMETER_UM, "channel_names": names}

    both = segment_nuclei(img, channel=names, **kw)
    assert both.attrs["detector"]["channel"] == names
    precision, recall = precision_recall(both, centres)
    assert recall >= 0.9 and precision >= 0.9, (precision, recall)
    pd.testing.assert_frame_equal(both, segment_nuclei(img, channel=[0, 1], **kw))  # indices = names

    for plane, own in ((0, half_a), (1, half_b)):
        one = segment_nuclei(img, channel=plane, **kw)
        assert precision_recall(one, own)[1] >= 0.9  # its own half …
        assert precision_recall(one, centres)[1] <= 0.6  # … and not the other

    # the projection is tiled like a single channel: same nuclei, same labels
    whole, labels_whole = segment_nuclei(img, channel=[0, 1], return_labels=True, **kw)
    tiled, labels_tiled = segment_nuclei(
        da.from_array(img, chunks=(2, 110, 110)), channel=[0, 1], return_labels=True, **kw
    )
    assert tiled.attrs["detector"]["tiles"] > 1
    pd.testing.assert_frame_equal(whole, tiled)
    np.testing.assert_array_equal(labels_whole, np.asarray(labels_tiled))

    with pytest.raises(ValueError, match="twice"):
        segment_nuclei(img, channel=[0, "dapi_z0"], **kw)
    with pytest.raises(ValueError, match="out of range"):
        segment_nuclei(img, channel=[0, 2], **kw)


def test_he_by_colour_deconvolution():
    """H&E (hed2rgb, channels last, uint8) is recognised automatically; nuclei are found on haematoxylin."""
    from skimage.color import hed2rgb

    rng = np.random.default_rng(11)
    shape = (300, 300)
    radius = DIAMETER_UM / 2 / UM_PER_PX
    centres = random_centres(rng, 40, shape, 9.0 / UM_PER_PX)
    hema = disc_image(rng, centres, shape, radius, brightness=(0.6, 1.0), noise=0.01)
    hed = np.stack([0.08 * hema, np.full(shape, 0.02), np.zeros(shape)], axis=-1)  # stain densities
    rgb = (np.clip(hed2rgb(hed), 0, 1) * 255).astype(np.uint8)
    assert np.median(rgb.mean(axis=-1)) > 128  # a bright background, as on a slide

    table = segment_nuclei(rgb, microns_per_pixel=UM_PER_PX, nucleus_diameter_um=DIAMETER_UM)
    assert table.attrs["detector"]["stain"] == "he"
    precision, recall = precision_recall(table, centres)
    assert recall >= 0.9 and precision >= 0.9, (precision, recall)
    forced = segment_nuclei(rgb, microns_per_pixel=UM_PER_PX, stain="he", nucleus_diameter_um=DIAMETER_UM)
    pd.testing.assert_frame_equal(table, forced)
    # the same image as floats in 0..255 (white is then its maximum) and in 0..1: nuclei found alike
    for scale in (1.0, 1 / 255):
        as_float = segment_nuclei(
            rgb.astype(np.float32) * scale, microns_per_pixel=UM_PER_PX, nucleus_diameter_um=DIAMETER_UM
        )
        assert as_float.attrs["detector"]["stain"] == "he"
        assert min(precision_recall(as_float, centres)) >= 0.9 and abs(len(as_float) - len(table)) <= 1
    # read as fluorescence instead (the red channel, bright background), it finds no such nuclei
    wrong = segment_nuclei(rgb, microns_per_pixel=UM_PER_PX, stain="fluorescence", nucleus_diameter_um=8.0)
    assert precision_recall(wrong, centres)[1] < 0.5


def test_empty_image_gives_empty_table():
    """A blank image yields an empty table with the documented columns, not an error."""
    table = segment_nuclei(np.zeros((100, 120)), microns_per_pixel=UM_PER_PX)
    assert len(table) == 0 and list(table.columns) == list(NUCLEI_COLUMNS)


def test_detector_lengths_scale_with_pixel_size():
    """Every length of the detector is in µm: halving the pixel size doubles them in pixels."""
    det = NucleusDetector(nucleus_diameter_um=10.0)
    a, b = det.in_pixels(1.0), det.in_pixels(0.5)
    for key in ("diameter", "log_sigma", "smoothing", "min_distance", "background"):
        assert b[key] == pytest.approx(2 * a[key])
    assert b["min_area"] == pytest.approx(4 * a["min_area"])
    assert det.halo(0.5) >= 2 * det.halo(1.0) - 1


# ----------------------------------------------------------------------------------------------------
# matching and per-polygon statistics
# ----------------------------------------------------------------------------------------------------
def test_match_points_is_one_to_one_and_optimal():
    """Each point is used once; the assignment minimises total distance; far pairs are never matched."""
    a = np.array([[0.0, 0.0], [3.0, 0.0], [100.0, 0.0]])
    b = np.array([[2.0, 0.0], [4.5, 0.0], [0.0, 50.0]])
    ia, ib = match_points(a, b, 5.0)
    pairs = set(zip(ia.tolist(), ib.tolist(), strict=True))
    # greedy nearest would pair a1-b0 (1.0) and leave a0 with b1 (4.5); optimal is a0-b0 (2) + a1-b1 (1.5)
    assert pairs == {(0, 0), (1, 1)}
    assert len(match_points(a, np.zeros((0, 2)), 5.0)[0]) == 0


def hand_nuclei() -> pd.DataFrame:
    """Five nuclei: three in box A (0-10), one in box B (20-30), one outside both."""
    return pd.DataFrame(
        {
            "x_um": [1.0, 5.0, 9.0, 25.0, 50.0],
            "y_um": [1.0, 5.0, 2.0, 25.0, 50.0],
            "area_um2": [30.0, 40.0, 50.0, 60.0, 70.0],
            "eccentricity": [0.1, 0.2, 0.3, 0.9, 0.5],
            "mean_intensity": [0.4, 0.5, 0.6, 0.8, 0.1],
        }
    )


@pytest.mark.parametrize("kind", ["shapely", "polygon_array", "geoseries"])
def test_nuclei_per_polygon_hand_case(kind):
    """Counts, density per µm², area mean/sd, eccentricity and intensity means against a hand computation."""
    gpd = pytest.importorskip("geopandas")
    polys = np.array([box(0, 0, 10, 10), box(20, 20, 30, 30), box(100, 100, 104, 104)])
    arg = {
        "shapely": polys,
        "polygon_array": PolygonArray.from_shapely(polys),
        "geoseries": gpd.GeoSeries(polys),
    }[kind]
    out = nuclei_per_polygon(hand_nuclei(), arg, chunk_size=2)  # chunks: the result must not depend on them
    assert out["n_nuclei"].tolist() == [3, 1, 0]
    np.testing.assert_allclose(out["nuclei_per_um2"], [3 / 100, 1 / 100, 0.0])
    np.testing.assert_allclose(out["area_um2_mean"][:2], [40.0, 60.0])
    np.testing.assert_allclose(out["area_um2_sd"][:2], [np.std([30.0, 40.0, 50.0]), 0.0])
    np.testing.assert_allclose(out["eccentricity_mean"][:2], [0.2, 0.9])
    np.testing.assert_allclose(out["intensity_mean"][:2], [0.5, 0.8])
    assert out.iloc[2][["area_um2_mean", "eccentricity_mean", "intensity_mean"]].isna().all()


def test_nuclei_per_polygon_pixels_and_overlaps():
    """Pixel polygons (xy_columns, microns_per_unit); a centroid in two overlapping polygons counts twice."""
    nuc = hand_nuclei().assign(x_px=lambda d: d["x_um"] / 0.5, y_px=lambda d: d["y_um"] / 0.5)
    polys = [box(0, 0, 20, 20), box(8, 8, 20, 20)]  # px; the second overlaps the first
    out = nuclei_per_polygon(nuc, polys, xy_columns=("x_px", "y_px"), microns_per_unit=0.5)
    assert out["n_nuclei"].tolist() == [3, 1]  # (5, 5) µm = (10, 10) px lies in both
    np.testing.assert_allclose(out["nuclei_per_um2"], [3 / 100.0, 1 / 36.0])


def test_nuclei_per_polygon_from_detection(synthetic):
    """Counts per grid square sum to the nuclei inside the grid, and match counting by hand."""
    img, _ = synthetic
    table = segment_nuclei(img, microns_per_pixel=UM_PER_PX, nucleus_diameter_um=DIAMETER_UM)
    squares = np.array([box(x, y, x + 50, y + 50) for y in range(0, 200, 50) for x in range(0, 200, 50)])
    out = nuclei_per_polygon(table, squares)
    assert out["n_nuclei"].sum() == len(table)
    xy = table[["x_um", "y_um"]].to_numpy()
    expected = [int(shapely.contains_xy(s, xy[:, 0], xy[:, 1]).sum()) for s in squares]
    assert out["n_nuclei"].tolist() == expected


# ----------------------------------------------------------------------------------------------------
# real data (skipped when the shared data folder is absent)
# ----------------------------------------------------------------------------------------------------
COSMX_UM_PER_PX = 0.18  # the CosMx instrument's pixel size, as stated in the data's PROVENANCE.txt


def _cosmx_fields():
    from soscope.datasets._real import shared_data_dir

    root = shared_data_dir(required=False)
    folder = None if root is None else root / "cosmx_lung_mini"
    if folder is None or not folder.is_dir():
        pytest.skip("shared CosMx data not found")
    return folder


@pytest.mark.parametrize("fov", ["F002", "F003"])
def test_cosmx_recall_precision(fov):
    """On the CosMx lung mini, nuclei match the cell masks: recall and precision >= 0.8 within 5 µm."""
    folder = _cosmx_fields()
    tifffile = pytest.importorskip("tifffile")
    from PIL import Image
    from scipy import ndimage as ndi

    img = np.asarray(Image.open(folder / "CellComposite" / f"CellComposite_{fov}.jpg"))
    labels = tifffile.imread(folder / "CellLabels" / f"CellLabels_{fov}.tif").astype(np.int64)
    ids = np.unique(labels)[1:]
    cy, cx = np.asarray(ndi.center_of_mass(np.ones_like(labels), labels, ids)).T
    # the benchmark's parameter set: the detector's defaults (benchmarks/nuclei.py)
    table = segment_nuclei(
        img, microns_per_pixel=COSMX_UM_PER_PX, channel="blue", channel_names=["red", "green", "blue"]
    )
    # score the detections inside the annotated cells (the masks define where the truth is known)
    rows = np.clip(table["y_px"].astype(int), 0, labels.shape[0] - 1)
    cols = np.clip(table["x_px"].astype(int), 0, labels.shape[1] - 1)
    scored = table.loc[labels[rows, cols] > 0, ["x_um", "y_um"]].to_numpy()
    ia, _ = match_points(np.column_stack([cx, cy]) * COSMX_UM_PER_PX, scored, 5.0)
    recall, precision = len(ia) / len(ids), len(ia) / max(len(scored), 1)
    assert recall >= 0.8 and precision >= 0.8, (recall, precision)


def test_seed_peaks_equal_scikit_image():
    """The vectorised seed finder returns scikit-image's peak_local_max peaks, in the same order."""
    from scipy import ndimage as ndi
    from skimage.feature import peak_local_max

    from soscope.features._nuclei import _seed_peaks

    rng = np.random.default_rng(0)
    for trial in range(60):
        h, w = rng.integers(5, 90, 2)
        img = ndi.gaussian_filter(rng.random((h, w)).astype(np.float32), rng.uniform(0.5, 3))
        if trial % 7 == 0:
            img = np.round(img * 20) / 20  # ties between neighbouring maxima
        if trial % 11 == 0:
            img[:] = 0.5  # flat: only isolated mask pixels
        mask = ndi.gaussian_filter(rng.random((h, w)), 2) > rng.uniform(0.3, 0.6)
        md, thr = int(rng.integers(1, 6)), float(rng.uniform(0, 0.6))
        want = peak_local_max(img, min_distance=md, threshold_abs=thr, exclude_border=False, labels=mask)
        np.testing.assert_array_equal(_seed_peaks(img, md, thr, mask), want)
