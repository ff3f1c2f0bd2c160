"""Human labels (labels=): a few annotated regions raise accuracy where nothing is labelled."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from model_helpers import one_thread
from spatialdata.models import ShapesModel
from spatialdata.transformations import get_transformation

import soscope
from soscope._errors import SoscopeInputError
from soscope.features import LabelClassifier, label_coverage

ARGS = dict(table="table", spots="spots", n_hidden=32, n_latent=8, device="cpu", progress=False, seed=0)


def _annotate(sdata, share: float = 0.10, name: str = "annotations") -> np.ndarray:
    """Label the westmost ``share`` of the truth sub-spots with their cell type (a drawn region per sub-spot).

    Returns the mask of labelled truth sub-spots.
    """
    truth = sdata.tables["truth"]
    polygons = sdata.shapes["spots_truth_subspots"]
    x = polygons.geometry.centroid.x.to_numpy()
    labelled = x <= np.quantile(x, share)
    frame = gpd.GeoDataFrame(
        {"region_type": pd.Categorical(truth.obs["cell_type"].astype(str).to_numpy()[labelled])},
        geometry=polygons.geometry.values[labelled],
    )
    sdata.shapes[name] = ShapesModel.parse(frame, transformations=get_transformation(polygons, get_all=True))
    return labelled


def _pearson(enhanced, truth, rows: np.ndarray) -> float:
    feats = list(truth.var_names[truth.var["informative"].to_numpy(bool)])
    pred = np.asarray(enhanced[:, feats].X)
    true = truth[:, feats].X
    true = true.toarray() if sp.issparse(true) else np.asarray(true)
    return float(np.nanmean([np.corrcoef(pred[rows, j], true[rows, j])[0, 1] for j in range(len(feats))]))


@pytest.fixture(scope="module")
def labelled_sample():
    sdata = soscope.datasets.synthetic(n_spots=300, n_features=60, seed=2)
    return sdata, _annotate(sdata)


def test_labels_on_a_tenth_raise_accuracy_on_the_rest(labelled_sample):
    sdata, labelled = labelled_sample
    truth = sdata.tables["truth"]
    scores = {}
    with one_thread():
        for key, extra in (("plain", {}), ("labelled", {"labels": "annotations"})):
            model = soscope.SoScope(sdata, **ARGS, **extra)
            model.train(epochs=40)
            out = model.enhance(inplace=False, key_added=key)
            enhanced = out.tables[f"table_{key}"]
            assert (enhanced.obs["spot_id"].astype(str).to_numpy() == truth.obs["spot_id"].astype(str)).all()
            scores[key] = _pearson(enhanced, truth, ~labelled)
    uns = out.tables["table_labelled"].uns["soscope"]["labels"]
    assert uns["labelled_subspots"] == int(labelled.sum())
    assert scores["labelled"] > scores["plain"], scores


def test_coverage_is_the_labelled_share_of_each_polygon(labelled_sample):
    sdata, labelled = labelled_sample
    import spatialdata as sd

    # the sub-spots in the coordinate system (label_coverage maps the annotations there too)
    polygons = np.asarray(
        sd.transform(sdata.shapes["spots_truth_subspots"], to_coordinate_system="global").geometry
    )
    cover, categories = label_coverage(sdata, "annotations", polygons, "global")
    truth_types = sdata.tables["truth"].obs["cell_type"].astype(str).to_numpy()
    np.testing.assert_allclose(cover[labelled].sum(1), 1.0, atol=1e-9)
    assert (np.asarray(categories)[cover[labelled].argmax(1)] == truth_types[labelled]).all()
    assert cover[~labelled].sum(1).max() < 0.5  # neighbours of the labelled strip touch it at most


def test_classifier_learns_where_labelled_and_predicts_elsewhere():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(400, 3))
    kind = (features[:, 0] > 0).astype(int)
    coverage = np.zeros((400, 2))
    coverage[:40, :][np.arange(40), kind[:40]] = 1.0  # the first tenth labelled
    clf = LabelClassifier.fit(features, coverage, ["a", "b"])
    out = clf.features(features, coverage)
    np.testing.assert_allclose(out[:40], coverage[:40])  # the labels themselves where labelled
    assert (out[40:].argmax(1) == kind[40:]).mean() > 0.9  # learned from them elsewhere
    with pytest.raises(SoscopeInputError, match="sub-spots are labelled"):
        LabelClassifier.fit(features, np.zeros((400, 2)), ["a", "b"])


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ("nowhere", "no element has that name"),
        ("table", "one of the tables"),
        ("annotations:nope", "has no column 'nope'"),
    ],
)
def test_bad_labels_are_refused_before_training(labelled_sample, labels, message):
    sdata, _ = labelled_sample
    with pytest.raises(SoscopeInputError, match=message):
        soscope.SoScope(sdata, **ARGS, labels=labels)


def test_labels_classifier_is_saved_and_labels_new_sections(tmp_path):
    study = soscope.datasets.synthetic(n_spots=150, n_features=40, n_sections=2, seed=4)
    truth = study.tables["truth"]
    region_a = (truth.obs["region"] == "spots_A_truth_subspots").to_numpy()
    polygons = study.shapes["spots_A_truth_subspots"]
    ids = truth.obs[truth.uns["spatialdata_attrs"]["instance_key"]].to_numpy()[region_a]
    frame = gpd.GeoDataFrame(  # section A fully annotated with its cell types
        {"region_type": pd.Categorical(truth.obs["cell_type"].astype(str).to_numpy()[region_a])},
        geometry=polygons.geometry.loc[ids].values,
    )
    transformations = get_transformation(polygons, get_all=True)
    study.shapes["annotations"] = ShapesModel.parse(frame, transformations=transformations)
    with one_thread():
        model = soscope.SoScope(study, **{**ARGS, "spots": None}, sections=["spots_A"], labels="annotations")
        model.train(epochs=2)
        direct = model.enhance(study, sections=["spots_B"], inplace=False)
        model.save(tmp_path / "m")
        loaded = soscope.SoScope.load(tmp_path / "m", progress=False)
        applied = loaded.enhance(study, sections=["spots_B"], inplace=False)
    assert [
        n for n in loaded.image_feature_names if n.startswith("label:")
    ] == loaded.label_classifier.names()
    np.testing.assert_allclose(
        np.asarray(applied.tables["table_soscope"].X), np.asarray(direct.tables["table_soscope"].X), rtol=1e-5
    )
