"""Sections as users have them: per-sample reads joined with ``sd.concatenate``, each in its own frame.

spatialdata-io readers name a sample's coordinate system after the sample; ``sd.concatenate`` of such reads
keeps one coordinate system per section (each with its own image). Here the synthetic study of three
sections (A, B, C: same biology, different layouts and capture bias) is split into three SpatialData objects
placed in coordinate systems ``A``, ``B``, ``C`` at the same position (stacked frames), then concatenated.
"""

import logging
from pathlib import Path

import numpy as np
import pytest
import spatialdata as sd
from spatialdata.models import TableModel
from spatialdata.transformations import Scale, get_transformation, set_transformation

import soscope
from soscope.datasets import synthetic
from soscope.evaluate import score
from soscope.io import select

N_SPOTS, N_FEATURES, EPOCHS = 300, 60, 60
ARGS = dict(table="table", progress=False, seed=0, device="cpu")
FIXTURES = Path(__file__).parents[1] / "platforms" / "fixtures"


def _scale(element) -> list[float]:
    """Return the (x, y) scale of ``element``'s transformation to ``global`` (dropping its translation)."""
    affine = get_transformation(element, "global").to_affine_matrix(("x", "y"), ("x", "y"))
    return [float(affine[0, 0]), float(affine[1, 1])]


def _section_table(adata, regions: list[str]):
    """Return the rows of ``adata`` annotating ``regions``, re-parsed to annotate those regions alone."""
    attrs = adata.uns["spatialdata_attrs"]
    part = adata[adata.obs[attrs["region_key"]].astype(str).isin(regions).to_numpy()].copy()
    part.obs[attrs["region_key"]] = part.obs[attrs["region_key"]].astype(str).astype("category")
    del part.uns["spatialdata_attrs"]
    return TableModel.parse(
        part, region=regions, region_key=attrs["region_key"], instance_key=attrs["instance_key"]
    )


def concatenated_study(**kwargs) -> sd.SpatialData:
    """Return the three-section synthetic study as ``sd.concatenate`` of one SpatialData per section."""
    study = synthetic(**kwargs)
    parts = []
    for s in ("A", "B", "C"):
        spots, truth_spots, image = f"spots_{s}", f"spots_{s}_truth_subspots", f"image_{s}"
        elements = {"shapes": {}, "images": {}}
        for kind, name in (("shapes", spots), ("shapes", truth_spots), ("images", image)):
            element = study[name]
            set_transformation(element, {s: Scale(_scale(element), axes=("x", "y"))}, set_all=True)
            elements[kind][name] = element
        tables = {
            "table": _section_table(study.tables["table"], [spots]),
            "truth": _section_table(study.tables["truth"], [truth_spots]),
        }
        parts.append(sd.SpatialData(images=elements["images"], shapes=elements["shapes"], tables=tables))
    joined = sd.concatenate(parts, concatenate_tables=True)
    for name in ("table", "truth"):  # anndata's concat drops var columns (the scorer's "informative")
        joined.tables[name].var = study.tables[name].var.loc[joined.tables[name].var_names]
    return joined


@pytest.fixture(scope="module")
def study():
    return concatenated_study(n_spots=N_SPOTS, n_features=N_FEATURES, n_sections=3, section_bias=0.5, seed=1)


def _pearson(sdata, key, spots="spots_C"):
    _, summary = score(sdata, key_added=key, spots=spots, features="informative", ssim=False)
    return {k: v["pearson"] for k, v in summary["mean"].items()}


def test_each_section_keeps_its_coordinate_system_and_image(study):
    sel = select(study, table="table")
    assert sel.coordinate_systems == {"spots_A": "A", "spots_B": "B", "spots_C": "C"}
    assert sel.images == {"spots_A": "image_A", "spots_B": "image_B", "spots_C": "image_C"}
    # sections chosen by coordinate system name, by spots element, or both
    assert select(study, table="table", sections=["A", "spots_C"]).spots == ("spots_A", "spots_C")


def test_one_image_name_for_separate_sections_is_refused(study):
    with pytest.raises(soscope.SoscopeInputError, match="coordinate systems of their own.*dict"):
        select(study, table="table", image="image_A")


def test_trained_on_two_sections_applied_to_the_third(study, tmp_path):
    """Train on A and B of one concatenated SpatialData, apply to C: ≥ 90 % of training on C itself."""
    model = soscope.SoScope(study, sections=["A", "B"], **ARGS)
    model.train(epochs=EPOCHS)
    model.save(tmp_path / "ab")
    soscope.enhance(study, model=tmp_path / "ab", sections=["C"], key_added="from_ab", progress=False)
    own = soscope.SoScope(study, sections=["C"], **ARGS)
    own.train(epochs=EPOCHS)
    own.enhance(key_added="self_c")
    applied = _pearson(study, "from_ab")
    assert applied["soscope"] >= 0.9 * _pearson(study, "self_c")["soscope"], applied
    assert applied["soscope"] > max(applied["even_split"], applied["gaussian_interpolation"]), applied
    # C's outputs sit next to C's spots, in C's coordinate system alone
    out = study.shapes["spots_C_from_ab"]
    assert set(get_transformation(out, get_all=True)) == {"C"}
    assert "spots_A_from_ab" not in study.shapes


def test_stacked_sections_in_one_coordinate_system_get_separate_graphs():
    """Two sections placed on top of each other in one coordinate system are never joined by edges."""
    sdata = synthetic(n_spots=80, n_features=20, n_sections=2, seed=3)
    for name in ("spots_B", "spots_B_truth_subspots", "image_B"):  # move B onto A
        set_transformation(sdata[name], Scale(_scale(sdata[name]), axes=("x", "y")), "global")
    model = soscope.SoScope(sdata, n_hidden=16, n_latent=4, **ARGS)
    data = model.prepared.data
    sections = np.asarray(data.sections)
    src, dst = data.edge_index
    assert len(src) > 0 and (sections[src] == sections[dst]).all()
    # the spots of A and B really overlap
    a, b = data.centres[sections == sections[0]], data.centres[sections != sections[0]]
    assert np.abs(a.mean(0) - b.mean(0)).max() < 0.1 * np.ptp(a, axis=0).max()


def test_a_section_without_image_among_imaged_sections(caplog):
    sdata = synthetic(n_spots=80, n_features=20, n_sections=2, seed=4)
    del sdata.images["image_B"]
    with caplog.at_level(logging.WARNING, logger="soscope"):
        model = soscope.SoScope(
            sdata, image={"spots_A": "image_A", "spots_B": None}, n_hidden=16, n_latent=4, **ARGS
        )
    assert "spots_B" in caplog.text and "without image evidence" in caplog.text
    feats = model.prepared.data.image_features
    rows_b = model.prepared.data.layout.spot_index >= 80
    assert np.isnan(feats[rows_b]).all() and np.isfinite(feats[~rows_b]).all()
    model.train(epochs=1)
    out = model.enhance(inplace=False, key_added="mixed")
    assert np.isfinite(np.asarray(out.tables["table_mixed"].X)).all()


def test_concatenated_visium_reads():
    """Two Visium outputs read with spatialdata_io.visium and concatenated, as a user would."""
    sio = pytest.importorskip("spatialdata_io")
    reads = [sio.visium(FIXTURES / "visium", dataset_id=name) for name in ("A", "B")]
    sdata = sd.concatenate(reads, concatenate_tables=True)
    sel = select(sdata)
    assert sel.spots == ("A", "B")
    assert {sel.coordinate_system_of("A"), sel.coordinate_system_of("B")} <= {
        "A",
        "B",
        "A_downscaled_hires",
        "B_downscaled_hires",
    }
    assert sel.coordinate_system_of("A").startswith("A") and sel.coordinate_system_of("B").startswith("B")
    assert sel.images == {"A": "A_hires_image", "B": "B_hires_image"}
    out = soscope.enhance(
        sdata, epochs=1, inplace=False, progress=False, n_hidden=16, n_latent=4, device="cpu"
    )
    for name in ("A", "B"):
        assert set(get_transformation(out.shapes[f"{name}_soscope"], get_all=True)) == set(
            get_transformation(sdata.shapes[name], get_all=True)
        )
