"""``segmentation=``: nuclei per sub-spot from labels, nucleus/cell outlines, or detection on the image.

The synthetic sample gets segmentations added by hand (nuclei at known places, outlined as polygons and
drawn as a labels raster, in frames of their own); the counts per sub-spot are checked against a count done
here with shapely and scikit-image directly.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("spatialdata")

import geopandas as gpd  # noqa: E402
import shapely  # noqa: E402
import spatialdata as sd  # noqa: E402
from spatialdata.models import Labels2DModel, ShapesModel  # noqa: E402
from spatialdata.transformations import Identity, Scale, get_transformation  # noqa: E402

import soscope  # noqa: E402
from soscope import SoscopeInputError  # noqa: E402
from soscope.features import NUCLEI_FEATURES  # noqa: E402
from soscope.io import SelectionRequest, find_segmentation, select  # noqa: E402
from soscope.model._setup import prepare  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:.*autosharding.*")

N_SPOTS, N_FEATURES = 120, 20
REQUEST = SelectionRequest(table="table")
#: labels raster: 1 µm per pixel, placed by a Scale (the spots and the image are at 1.5 µm per pixel)
LABELS_UM_PER_PX = 1.0


def _extent_um(sdata) -> tuple[float, float]:
    """Width and height (µm) of the synthetic image, i.e. of the tissue."""
    img = sdata.images["image"]["scale0"]
    _, h, w = next(iter(img.data_vars.values())).shape
    mpp = sdata.tables["table"].uns["synthetic"]["microns_per_pixel"]
    return w * mpp, h * mpp


def _nuclei(sdata, n: int = 1500, seed: int = 1):
    """Nucleus centres (µm), radii along and across their axis (µm) and axis angles."""
    rng = np.random.default_rng(seed)
    w, h = _extent_um(sdata)
    centres = rng.uniform([5, 5], [w - 5, h - 5], (n, 2))
    radii = np.column_stack([rng.uniform(3.0, 5.0, n), rng.uniform(2.0, 3.0, n)])
    return centres, radii, rng.uniform(0, np.pi, n)


def _ellipses(centres, radii, angles, scale: float = 1.0, vertices: int = 24) -> list:
    t = np.linspace(0, 2 * np.pi, vertices, endpoint=False)
    out = []
    for (cx, cy), (a, b), th in zip(centres, radii * scale, angles, strict=True):
        x = a * np.cos(t) * np.cos(th) - b * np.sin(t) * np.sin(th)
        y = a * np.cos(t) * np.sin(th) + b * np.sin(t) * np.cos(th)
        out.append(shapely.Polygon(np.column_stack([cx + x, cy + y])))
    return out


def _labels_raster(sdata, centres, radii, angles):
    """Ellipses drawn as labels 1..n at 1 µm per pixel (later ones cover earlier ones where they overlap)."""
    from skimage.draw import ellipse

    w, h = _extent_um(sdata)
    raster = np.zeros((int(h / LABELS_UM_PER_PX), int(w / LABELS_UM_PER_PX)), dtype=np.int32)
    for i, ((cx, cy), (a, b), th) in enumerate(zip(centres, radii, angles, strict=True)):
        # pixel (row i, column j) covers [j, j + 1) x [i, i + 1): its centre is (j + 0.5, i + 0.5)
        rr, cc = ellipse(cy - 0.5, cx - 0.5, b, a, shape=raster.shape, rotation=-th)
        raster[rr, cc] = i + 1
    return raster


@pytest.fixture(scope="module")
def base():
    return soscope.datasets.synthetic(n_spots=N_SPOTS, n_features=N_FEATURES, seed=0)


@pytest.fixture(scope="module")
def nuclei(base):
    return _nuclei(base)


def _with(base, **elements):
    """Return a SpatialData with ``base``'s elements plus ``elements`` (shapes or labels by their type)."""
    shapes = {k: v for k, v in elements.items() if isinstance(v, gpd.GeoDataFrame)}
    labels = {k: v for k, v in elements.items() if not isinstance(v, gpd.GeoDataFrame)}
    return sd.SpatialData(
        images=dict(base.images),
        shapes={**dict(base.shapes), **shapes},
        labels=labels,
        tables=dict(base.tables),
    )


def _outlines(nuclei, scale: float = 1.0, pixels: bool = False):
    """Nucleus (``scale=1``) or cell (larger) outlines; in µm (Identity) or in 1.5 µm pixels (Scale)."""
    centres, radii, angles = nuclei
    if pixels:
        polys = _ellipses(centres / 1.5, radii / 1.5, angles, scale)
        return ShapesModel.parse(
            gpd.GeoDataFrame(geometry=polys), transformations={"global": Scale([1.5, 1.5], axes=("x", "y"))}
        )
    polys = _ellipses(centres, radii, angles, scale)
    return ShapesModel.parse(gpd.GeoDataFrame(geometry=polys), transformations={"global": Identity()})


@pytest.fixture(scope="module")
def with_outlines(base, nuclei):
    """Nucleus outlines (µm) and cell outlines (pixels): "auto" must take the nuclei."""
    return _with(
        base,
        nucleus_boundaries=_outlines(nuclei),
        cell_boundaries=_outlines(nuclei, scale=2.0, pixels=True),
    )


@pytest.fixture(scope="module")
def labels_raster(base, nuclei):
    return _labels_raster(base, *nuclei)


@pytest.fixture(scope="module")
def with_labels(base, labels_raster):
    element = Labels2DModel.parse(
        labels_raster,
        dims=("y", "x"),
        transformations={"global": Scale([LABELS_UM_PER_PX] * 2, axes=("x", "y"))},
    )
    return _with(base, nucleus_labels=element)


def _hand_count(sdata, prepared, points_cs: np.ndarray) -> np.ndarray:
    """Points (in "global") inside each sub-spot polygon, counted one polygon at a time with shapely."""
    affine = get_transformation(sdata.shapes["spots"], "global").to_affine_matrix(("x", "y"), ("x", "y"))
    inv = np.linalg.inv(np.asarray(affine, dtype=np.float64))
    tree = shapely.STRtree(shapely.points(points_cs @ inv[:2, :2].T + inv[:2, 2]))
    return np.array(
        [len(tree.query(poly, predicate="contains")) for poly in prepared.layouts["spots"].geometry]
    )


def _prepare(sdata, **kwargs):
    return prepare(sdata, REQUEST, subspots="hex7", **kwargs)


# ------------------------------------------------------------------------------------------------------------
# which segmentation
# ------------------------------------------------------------------------------------------------------------
def test_auto_picks_nucleus_outlines_and_counts_match_a_hand_count(with_outlines, nuclei):
    """Nuclei before cells; the centroid of each outline counts once in the sub-spot holding it."""
    p = _prepare(with_outlines)
    assert p.segmentation["source"] == "shapes" and p.segmentation["element"] == "nucleus_boundaries"
    names = [n for n in p.data.image_feature_names if n.startswith("nuclei:")]
    assert names == [v for v in NUCLEI_FEATURES.values() if v != "nuclei:intensity"]  # outlines: no stain
    centroids = shapely.get_coordinates(
        shapely.centroid(with_outlines.shapes["nucleus_boundaries"].geometry.values)
    )
    want = _hand_count(with_outlines, p, centroids)
    assert want.sum() > 0.5 * len(centroids) and (want == 0).any()
    np.testing.assert_array_equal(p.data.nuclei_count, want)
    feats = p.data.image_features[:, p.data.image_feature_names.index("nuclei:count")]
    np.testing.assert_array_equal(feats, want)
    # density per µm² of the sub-spot polygon (the global frame is in µm)
    area_um2 = p.layouts["spots"].area * 1.5**2
    dens = p.data.image_features[:, p.data.image_feature_names.index("nuclei:density")]
    np.testing.assert_allclose(dens, want / area_um2, rtol=1e-5)
    # statistics are NaN (filled at the mean by the normaliser) where there is no nucleus
    area_mean = p.data.image_features[:, p.data.image_feature_names.index("nuclei:area_mean")]
    assert np.isnan(area_mean[want == 0]).all() and np.isfinite(area_mean[want > 0]).all()
    # ellipses of radii a, b: area π a b (a 24-gon a little less), eccentricity sqrt(1 - b²/a²)
    _, radii, _ = nuclei
    assert 0.95 * np.pi * (radii[:, 0] * radii[:, 1]).mean() < np.nanmean(area_mean) < np.pi * 5 * 3
    ecc = p.data.image_features[:, p.data.image_feature_names.index("nuclei:eccentricity")]
    true_ecc = np.sqrt(1 - (radii[:, 1] / radii[:, 0]) ** 2).mean()
    assert abs(np.nanmean(ecc) - true_ecc) < 0.05
    rec = p.segmentation["spots"]["spots"]
    assert rec["n_nuclei"] == len(centroids) and rec["n_nuclei_in_subspots"] == want.sum()


def test_auto_ranks_outlines_then_labels_then_circles_and_falls_back_on_a_tie(
    base, nuclei, labels_raster, caplog
):
    """Cells alike: polygons before a labels raster before circles; two alike outlines: detection, warned."""
    import logging

    centres, _, _ = nuclei
    circles = gpd.GeoDataFrame({"radius": np.full(len(centres), 4.0)}, geometry=shapely.points(centres))
    elements = {
        "cell_circles": ShapesModel.parse(circles, transformations={"global": Identity()}),
        "cell_labels": Labels2DModel.parse(
            labels_raster, dims=("y", "x"), transformations={"global": Identity()}
        ),
    }
    sdata = _with(base, **elements)
    choice = find_segmentation(sdata, select(sdata, table="table"))["spots"]
    assert (choice.source, choice.element) == ("labels", "cell_labels")
    assert choice.candidates == ("cell_labels", "cell_circles")
    sdata = _with(base, **elements, cellpose_boundaries=_outlines(nuclei, scale=2.0))
    assert find_segmentation(sdata, select(sdata, table="table"))["spots"].element == "cellpose_boundaries"
    sdata = _with(
        base, **elements, cellpose_boundaries=_outlines(nuclei, 2.0), baysor_boundaries=_outlines(nuclei, 2.0)
    )
    with caplog.at_level(logging.WARNING, logger="soscope"):
        choice = find_segmentation(sdata, select(sdata, table="table"))["spots"]
    assert choice.source == "segment_nuclei" and choice.reason == "several segmentations fit"
    assert "several segmentations fit the spots 'spots'" in caplog.text and "segmentation=" in caplog.text


def test_name_picks_that_element(with_outlines, nuclei):
    """segmentation="cell_boundaries" counts cell centroids (outlines in pixels placed by a Scale)."""
    p = _prepare(with_outlines, segmentation="cell_boundaries")
    assert p.segmentation["element"] == "cell_boundaries"
    centres, _, _ = nuclei
    np.testing.assert_array_equal(p.data.nuclei_count, _hand_count(with_outlines, p, centres))


def test_labels_counts_and_areas_match_scikit_image(with_labels, labels_raster):
    """A labels raster: its labels' pixel centroids per sub-spot, their areas as regionprops measures them."""
    from skimage.measure import regionprops

    p = _prepare(with_labels)
    assert p.segmentation["source"] == "labels" and p.segmentation["element"] == "nucleus_labels"
    props = regionprops(labels_raster)
    centroids = np.array([(c + 0.5, r + 0.5) for r, c in (pr.centroid for pr in props)]) * LABELS_UM_PER_PX
    want = _hand_count(with_labels, p, centroids)
    np.testing.assert_array_equal(p.data.nuclei_count, want)
    # the sub-spot with the most nuclei: mean area and eccentricity of exactly those labels
    layout = p.layouts["spots"]
    k = int(np.argmax(want))
    poly = shapely.affinity.scale(layout.geometry[k], 1.5, 1.5, origin=(0, 0))
    inside = [pr for pr, (x, y) in zip(props, centroids, strict=True) if poly.contains(shapely.Point(x, y))]
    names = p.data.image_feature_names
    row = p.data.image_features[k]
    assert row[names.index("nuclei:area_mean")] == pytest.approx(
        np.mean([pr.area for pr in inside]), rel=1e-5
    )
    assert row[names.index("nuclei:eccentricity")] == pytest.approx(
        np.mean([pr.eccentricity for pr in inside]), rel=1e-4
    )


def test_subspots_off_the_raster_are_unknown_not_empty(base, labels_raster):
    """A raster covering the left half only: sub-spots right of it get NaN (imputed), not a count of 0."""
    half = labels_raster[:, : labels_raster.shape[1] // 2]
    element = Labels2DModel.parse(half, dims=("y", "x"), transformations={"global": Identity()})
    p = _prepare(_with(base, nucleus_labels=element))
    x_um = p.layouts["spots"].centroid[:, 0] * 1.5
    off = x_um > half.shape[1]
    assert 0 < off.sum() < len(off)
    assert np.isnan(p.data.nuclei_count[off]).all() and np.isfinite(p.data.nuclei_count[~off]).all()
    nuc = [i for i, n in enumerate(p.data.image_feature_names) if n.startswith("nuclei:")]
    assert np.isnan(p.data.image_features[np.ix_(off, nuc)]).all()
    assert p.segmentation["spots"]["spots"]["n_nuclei_in_subspots"] == np.nansum(p.data.nuclei_count)


def test_labels_tiles_give_identical_features(with_labels, monkeypatch):
    """Reading the raster in many small tiles gives exactly the features of one tile."""
    from soscope.features import _segmentation

    whole = _prepare(with_labels).data.image_features
    monkeypatch.setattr(_segmentation, "_LABELS_TILE", 97)
    tiled = _prepare(with_labels).data.image_features
    np.testing.assert_array_equal(tiled, whole)


def test_auto_without_a_segmentation_detects_nuclei_on_the_image(base):
    """No labels or outlines: segment_nuclei on the image, parameters recorded; counts follow the cells."""
    p = _prepare(base)
    rec = p.segmentation
    assert rec["source"] == "segment_nuclei" and rec["element"] == "image"
    params = rec["spots"]["spots"]["parameters"]
    assert params["stain"] == "he" and params["nucleus_diameter_um"] == 6.0
    assert params["smoothing_um"] == "None"  # uns-ready: no None values
    assert rec["n_nuclei"] > 1000
    assert "nuclei:intensity" in p.data.image_feature_names
    truth = base.tables["truth"].obs["n_cells"].to_numpy()
    assert np.corrcoef(p.data.nuclei_count, truth)[0, 1] > 0.7


def test_detection_does_not_depend_on_the_image_chunks(base):
    """The image read in small dask chunks (many tiles with halos) gives identical nucleus features."""
    whole = _prepare(base, segmentation="segment_nuclei").data
    img = base.images["image"]
    small = img.copy()
    small["scale0"] = small["scale0"].chunk({"y": 300, "x": 300})
    rechunked = sd.SpatialData(images={"image": small}, shapes=dict(base.shapes), tables=dict(base.tables))
    tiled = _prepare(rechunked, segmentation="segment_nuclei").data
    np.testing.assert_array_equal(tiled.nuclei_count, whole.nuclei_count)
    cols = [i for i, n in enumerate(whole.image_feature_names) if n.startswith("nuclei:")]
    np.testing.assert_array_equal(tiled.image_features[:, cols], whole.image_features[:, cols])


def test_none_disables(with_outlines):
    p = _prepare(with_outlines, segmentation=None)
    assert p.data.nuclei_count is None
    assert not [n for n in p.data.image_feature_names if n.startswith("nuclei:")]
    assert p.segmentation["source"] == "none"


def test_auto_without_image_or_segmentation_counts_nothing():
    sdata = soscope.datasets.synthetic(n_spots=60, n_features=10, image=False, seed=0)
    p = _prepare(sdata)
    assert p.data.nuclei_count is None and p.data.image_features is None


def test_outlines_without_image_are_the_image_features(base, nuclei):
    """image=False: the outlines still give nuclei, which are then the only image features."""
    sdata = _with(base, nucleus_boundaries=_outlines(nuclei))
    p = prepare(sdata, SelectionRequest(table="table", image=False), subspots="hex7")
    assert p.data.image_feature_names == list(NUCLEI_FEATURES.values())[:5]
    assert p.data.nuclei_count.sum() > 0


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("nuclei_typo", "no element of that name"),
        ("table", "is a table"),
        ("image", "segment_nuclei"),
        ("spots", "the spots element itself"),
    ],
)
def test_bad_names_are_refused_with_the_fix(with_outlines, name, message):
    sel = select(with_outlines, table="table")
    with pytest.raises(SoscopeInputError, match=message) as err:
        find_segmentation(with_outlines, sel, name)
    if name in ("nuclei_typo", "table"):
        assert "nucleus_boundaries" in str(err.value)  # the candidates are listed


def test_segment_nuclei_needs_an_image(with_outlines):
    sel = select(with_outlines, table="table", image=False)
    with pytest.raises(SoscopeInputError, match="needs|image"):
        find_segmentation(with_outlines, sel, "segment_nuclei")
    with pytest.raises(SoscopeInputError, match="segmentation=3"):
        find_segmentation(with_outlines, sel, 3)


def test_element_in_another_coordinate_system_is_refused(base, nuclei):
    outlines = ShapesModel.parse(
        gpd.GeoDataFrame(geometry=_ellipses(*nuclei)), transformations={"other": Identity()}
    )
    sdata = _with(base, nucleus_boundaries=outlines)
    sel = select(sdata, table="table")
    # "auto" does not see it; naming it says which coordinate system is missing
    assert find_segmentation(sdata, sel, "auto")["spots"].source == "segment_nuclei"
    with pytest.raises(SoscopeInputError, match="'global'"):
        find_segmentation(sdata, sel, "nucleus_boundaries")


def test_sections_each_get_their_own_segmentation(nuclei):
    """Two sections side by side in one coordinate system: each takes the outlines over its own spots."""
    two = soscope.datasets.synthetic(n_spots=40, n_features=10, n_sections=2, image=False, seed=0)
    elements = {}
    for s in ("A", "B"):
        box = sd.get_extent(two.shapes[f"spots_{s}"], coordinate_system="global")
        rng = np.random.default_rng(ord(s))
        centres = rng.uniform([box["x"][0], box["y"][0]], [box["x"][1], box["y"][1]], (300, 2))
        radii = np.full((300, 2), 3.0)
        polys = _ellipses(centres, radii, np.zeros(300))
        elements[f"nucleus_boundaries_{s}"] = ShapesModel.parse(
            gpd.GeoDataFrame(geometry=polys), transformations={"global": Identity()}
        )
    sdata = sd.SpatialData(shapes={**dict(two.shapes), **elements}, tables=dict(two.tables))
    choices = find_segmentation(sdata, select(sdata, table="table"))
    assert {s: c.element for s, c in choices.items()} == {
        "spots_A": "nucleus_boundaries_A",
        "spots_B": "nucleus_boundaries_B",
    }


# ------------------------------------------------------------------------------------------------------------
# the model, its file and the command line
# ------------------------------------------------------------------------------------------------------------
MODEL_ARGS = dict(table="table", subspots="hex7", n_hidden=16, n_latent=4, device="cpu", progress=False)


def test_model_records_the_nuclei_and_save_load_keeps_the_setting(with_outlines, tmp_path):
    from soscope import ModelCompatibilityError

    model = soscope.SoScope(with_outlines, segmentation="nucleus_boundaries", **MODEL_ARGS)
    assert model.settings["segmentation"] == "nucleus_boundaries" and model.uses_nuclei
    model.train(epochs=1)
    out = model.enhance(inplace=False)
    uns = out.tables["table_soscope"].uns["soscope"]
    assert uns["parameters"]["segmentation"] == "nucleus_boundaries"
    seg = uns["segmentation"]
    assert seg["source"] == "shapes" and seg["element"] == "nucleus_boundaries" and seg["n_nuclei"] == 1500

    model.save(tmp_path / "m")
    loaded = soscope.SoScope.load(tmp_path / "m", device="cpu", progress=False)
    assert loaded.settings == model.settings and loaded.uses_nuclei
    again = loaded.enhance(with_outlines, inplace=False)
    np.testing.assert_array_equal(again.tables["table_soscope"].X, out.tables["table_soscope"].X)
    assert again.tables["table_soscope"].uns["soscope"]["segmentation"]["element"] == "nucleus_boundaries"
    # new data without those nuclei: the error names the features and the argument
    with pytest.raises(ModelCompatibilityError, match="nuclei:count.*segmentation="):
        loaded.enhance(with_outlines, segmentation=None, inplace=False)
    # soscope.enhance with the saved model: "auto" keeps the model's setting, a name replaces it
    for given, element in (("auto", "nucleus_boundaries"), ("cell_boundaries", "cell_boundaries")):
        res = soscope.enhance(
            with_outlines,
            model=tmp_path / "m",
            segmentation=given,
            inplace=False,
            device="cpu",
            progress=False,
        )
        assert res.tables["table_soscope"].uns["soscope"]["segmentation"]["element"] == element


def test_model_without_nuclei_refuses_a_segmentation(with_outlines):
    model = soscope.SoScope(with_outlines, segmentation=None, **MODEL_ARGS)
    assert model.settings["segmentation"] is None and not model.uses_nuclei
    model.train(epochs=1)
    with pytest.raises(SoscopeInputError, match="without nuclei features"):
        model.enhance(with_outlines, segmentation="nucleus_boundaries", inplace=False)
    # the default leaves it off: no nuclei features are computed for this model
    out = model.enhance(with_outlines, inplace=False)
    assert out.tables["table_soscope"].uns["soscope"]["segmentation"]["source"] == "none"


def test_cli_info_lists_the_segmentation(with_outlines, tmp_path):
    from typer.testing import CliRunner

    from soscope.cli import app

    store = tmp_path / "s.zarr"
    sd.SpatialData(shapes=dict(with_outlines.shapes), tables=dict(with_outlines.tables)).write(store)
    runner = CliRunner()
    res = runner.invoke(app, ["info", str(store), "--table", "table"])
    assert res.exit_code == 0, res.output
    assert "segmentation: shapes 'nucleus_boundaries' (named like nuclei)" in res.output
    assert "also found: cell_boundaries" in res.output
    res = runner.invoke(app, ["info", str(store), "--table", "table", "--segmentation", "none"])
    assert "segmentation: (none)" in res.output
    res = runner.invoke(app, ["info", str(store), "--table", "table", "--segmentation", "table"])
    assert res.exit_code == 2 and "is a table" in res.output


def test_streamed_detection_equals_the_nuclei_table(base):
    """Detection reduced to per-sub-spot sums inside each tile equals the whole-slide table path."""
    from soscope.features import nuclei_per_polygon, read_nuclei, subspot_nuclei_features
    from soscope.features._segmentation import _cs_to_spots, _detected_sums

    small = base.images["image"].copy()
    small["scale0"] = small["scale0"].chunk({"y": 128, "x": 128})  # many tiles, halos across their edges
    sdata = sd.SpatialData(images={"image": small}, shapes=dict(base.shapes), tables=dict(base.tables))
    p = _prepare(sdata, segmentation="segment_nuclei")
    rec = p.segmentation["spots"]["spots"]
    assert rec["parameters"]["tiles"] > 9
    choice = find_segmentation(sdata, select(sdata, table="table"), "segment_nuclei")["spots"]
    layout, mpu = p.layouts["spots"], rec["microns_per_unit"]
    streamed = subspot_nuclei_features(sdata, choice, layout, "spots", microns_per_unit=mpu)

    # the table path: every nucleus of the slide, then the sub-spot polygons holding each centroid
    from soscope._transforms import affine_xy

    cs = choice.coordinate_system
    bounds = layout.polygons.bounds()
    to_cs = affine_xy(sdata.shapes["spots"], cs)
    x0, y0, x1, y1 = bounds[:, 0].min(), bounds[:, 1].min(), bounds[:, 2].max(), bounds[:, 3].max()
    corners = np.array([[x0, y0], [x1, y0], [x0, y1], [x1, y1]]) @ to_cs[:2, :2].T + to_cs[:2, 2]
    box = (corners[:, 0].min(), corners[:, 1].min(), corners[:, 0].max(), corners[:, 1].max())
    table = read_nuclei(sdata, choice, microns_per_unit=mpu, box=box)
    xy = _cs_to_spots(table[["x", "y"]].to_numpy(np.float64), np.linalg.inv(to_cs))
    local = table.drop(columns=["x", "y"]).assign(x=xy[:, 0], y=xy[:, 1])
    unit = mpu * float(np.sqrt(abs(np.linalg.det(to_cs[:2, :2]))))
    stats = nuclei_per_polygon(local, layout.polygons, xy_columns=("x", "y"), microns_per_unit=unit)

    assert rec["n_nuclei"] == streamed.provenance["n_nuclei"] == len(table) > 1000
    assert streamed.provenance["parameters"] == table.attrs["detector"]
    want = stats[[c for c in NUCLEI_FEATURES]].to_numpy(np.float32)
    on = np.isfinite(streamed.counts)
    assert on.mean() > 0.9
    np.testing.assert_array_equal(streamed.counts[on], stats["n_nuclei"].to_numpy(np.float32)[on])
    assert streamed.names == list(NUCLEI_FEATURES.values())
    np.testing.assert_allclose(streamed.values[on], want[on], rtol=1e-6, atol=0)
    # the private sums add up to the same counts whatever reduces them
    sums, n, _ = _detected_sums(
        sdata.images["image"], cs, box, mpu, soscope.features.NucleusDetector(), layout.polygons,
        np.linalg.inv(to_cs),
    )  # fmt: skip
    assert n == len(table)
    np.testing.assert_array_equal(sums[:, 0], stats["n_nuclei"].to_numpy())


def test_auto_does_not_detect_nuclei_an_image_too_coarse_to_show(base, caplog):
    """At 3 µm per pixel a 6 µm nucleus spans 2 px: "auto" detects nothing, says why; asked for, it runs."""
    from skimage.transform import downscale_local_mean
    from spatialdata.models import Image2DModel

    mpp = base.tables["table"].uns["synthetic"]["microns_per_pixel"]
    scale0 = base.images["image"]["scale0"]
    pixels = next(iter(scale0.data_vars.values())).values
    half = downscale_local_mean(pixels.astype(np.float32), (1, 2, 2)).astype(pixels.dtype)
    image = Image2DModel.parse(
        half, dims=("c", "y", "x"), transformations={"global": Scale([2 * mpp, 2 * mpp], axes=("x", "y"))}
    )
    coarse = sd.SpatialData(images={"image": image}, shapes=dict(base.shapes), tables=dict(base.tables))
    with caplog.at_level("WARNING", logger="soscope"):
        p = _prepare(coarse)
    assert p.data.nuclei_count is None
    assert not [n for n in p.data.image_feature_names if n.startswith("nuclei:")]
    rec = p.segmentation
    assert rec["source"] == "none" and "2.0 px" in rec["not_detected"]["spots"]
    assert f"{2 * mpp:.3g} µm per pixel" in caplog.text and "segmentation=" in caplog.text
    # `soscope info` reports what enhancing uses
    from soscope.cli._app import _segmentation_lines

    assert _segmentation_lines(coarse, select(coarse, table="table"), "auto") == ["  segmentation: (none)"]
    asked = _prepare(coarse, segmentation="segment_nuclei")  # the user's call: detected, with a warning
    assert asked.segmentation["source"] == "segment_nuclei" and asked.data.nuclei_count is not None
    assert "nuclei unreliable" in caplog.text
    # the same tissue at its own 1.5 µm per pixel (4 px per nucleus): "auto" detects
    assert _prepare(base).segmentation["source"] == "segment_nuclei"
