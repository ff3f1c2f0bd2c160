"""Tissue domains (ARI / NMI) and marker contrast at spot vs sub-spot resolution."""

import logging

import anndata as ad
import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
from spatialdata import SpatialData
from spatialdata.models import ShapesModel, TableModel

import soscope
from soscope._errors import SoscopeInputError
from soscope.evaluate import _domains, domains, markers

pytest.importorskip("scanpy")
pytest.importorskip("sklearn")

#: sub-spots per spot in the hand-made data
K = 4


def _circles(n: int, index: pd.Index) -> gpd.GeoDataFrame:
    xy = np.column_stack([np.arange(n) * 10.0, np.zeros(n)])
    gdf = gpd.GeoDataFrame({"radius": np.full(n, 3.0)}, geometry=shapely.points(xy))
    gdf.index = index
    return ShapesModel.parse(gdf)


def _hand_made(seed: int = 0) -> SpatialData:
    """12 spots of 4 sub-spots: 4 spots all domain A, 4 all B, 4 mixed (sub-spots 0, 1 in A; 2, 3 in B).

    Sub-spots express ``g_A`` in A and ``g_B`` in B (plus a flat ``g_flat``); the enhanced table and the
    truth hold the sub-spot values, the spot table their sums: sub-spots separate the domains perfectly,
    mixed spots cannot.
    """
    rng = np.random.default_rng(seed)
    n_spots = 12
    spot_ids = np.arange(100, 100 + n_spots)  # not 0..n-1: matching must go through the ids
    spot_dom = np.array(["A"] * 4 + ["B"] * 4 + ["mixed"] * 4)
    sub_spot = np.repeat(spot_ids, K)
    sub_idx = np.tile(np.arange(K), n_spots)
    dom = np.where(np.repeat(spot_dom, K) == "mixed", np.where(sub_idx < 2, "A", "B"), np.repeat(spot_dom, K))
    x = np.where((dom == "A")[:, None], [60, 2, 20], [2, 60, 20]) + rng.integers(0, 3, (len(dom), 3))
    var = pd.DataFrame(index=["g_A", "g_B", "g_flat"])
    spot_x = np.add.reduceat(x, np.arange(0, len(dom), K), axis=0)

    table = ad.AnnData(
        X=spot_x.astype(np.float32),
        obs=pd.DataFrame(
            {"spot_id": spot_ids, "region": pd.Categorical(["spots"] * n_spots)},
            index=[f"spot_{i}" for i in spot_ids],
        ),
        var=var,
    )
    sub_obs = pd.DataFrame(
        {
            "spot_id": sub_spot,
            "subspot": sub_idx,
            "sub_id": np.arange(len(dom)),
            "domain": dom,
        },
        index=[f"sub_{i}" for i in range(len(dom))],
    )
    truth = ad.AnnData(X=x.astype(np.float32), obs=sub_obs.assign(region=pd.Categorical(["subs"] * len(dom))))
    truth.var_names = var.index
    perm = rng.permutation(len(dom))  # the enhanced table's row order must not matter
    enh_obs = sub_obs.drop(columns="domain").assign(region=pd.Categorical(["subs_soscope"] * len(dom)))
    enh = ad.AnnData(X=x[perm].astype(np.float32), obs=enh_obs.iloc[perm], var=var.copy())
    sub_index = pd.Index(np.arange(len(dom)), name="sub_id")
    return SpatialData(
        shapes={
            "spots": _circles(n_spots, pd.Index(spot_ids, name="spot_id")),
            "subs": _circles(len(dom), sub_index),
            "subs_soscope": _circles(len(dom), sub_index.copy()),
        },
        tables={
            "table": TableModel.parse(table, region="spots", region_key="region", instance_key="spot_id"),
            "truth": TableModel.parse(truth, region="subs", region_key="region", instance_key="sub_id"),
            "table_soscope": TableModel.parse(
                enh, region="subs_soscope", region_key="region", instance_key="sub_id"
            ),
        },
    )


def test_perfect_subspots_score_one_and_mixed_spots_do_not():
    sdata = _hand_made()
    scores, labels = domains(sdata, truth_domains="domain", method="kmeans")
    assert list(scores.index) == ["spot", "subspot"]
    assert scores.loc["subspot", "ari"] == pytest.approx(1.0)
    assert scores.loc["subspot", "nmi"] == pytest.approx(1.0)
    # every mixed spot takes one label for its A and B sub-spots: spot clustering cannot be perfect
    assert scores.loc["spot", "ari"] < 0.9
    assert (scores["n_scored"] == 12 * K).all() and (scores["n_truth_domains"] == 2).all()
    assert (scores["method"] == "kmeans").all() and (scores["n_clusters"] == 2).all()
    # labels follow the tables' rows: the sub-spot labels split exactly along the truth
    enh = sdata.tables["table_soscope"]
    truth_of_enh = enh.obs["sub_id"].map(
        dict(zip(sdata["truth"].obs["sub_id"], sdata["truth"].obs["domain"], strict=True))
    )
    assert pd.crosstab(labels["subspot"], truth_of_enh.to_numpy()).gt(0).sum(axis=1).eq(1).all()
    assert labels["spot"].index.equals(sdata.tables["table"].obs_names)


def test_kmeans_domains_are_deterministic():
    sdata = _hand_made()
    a = domains(sdata, truth_domains="domain", method="kmeans", seed=3)[1]["spot"]
    b = domains(sdata, truth_domains="domain", method="kmeans", seed=3)[1]["spot"]
    pd.testing.assert_series_equal(a, b)


def test_domains_without_truth_cluster_only():
    scores, labels = domains(_hand_made(), truth=None, method="kmeans", n_domains=2)
    assert scores["ari"].isna().all() and len(labels["subspot"]) == 12 * K


def test_markers_separating_marker_has_auroc_one_at_subspots_only():
    sdata = _hand_made()
    m = markers(sdata, {"A": "g_A", "B": ["g_B"]}, truth_domains="domain")
    assert set(m.columns) >= {"marker", "domain", "resolution", "log2fc", "auroc", "mean_in", "mean_out"}
    auroc = m.set_index(["marker", "resolution"])["auroc"]
    for g in ("g_A", "g_B"):
        assert auroc[(g, "subspot")] == pytest.approx(1.0)
        assert auroc[(g, "truth")] == pytest.approx(1.0)
        # mixed spots give their A and B sub-spots the same value: ties pull the AUROC below 1
        assert auroc[(g, "spot")] < 1.0
    lfc = m.set_index(["marker", "resolution"])["log2fc"]
    assert lfc[("g_A", "subspot")] > lfc[("g_A", "spot")] > 0
    # a flat feature does not separate the domains
    flat = markers(sdata, {"A": "g_flat"}, truth_domains="domain")
    assert flat.set_index("resolution").loc["truth", "auroc"] < 0.8


def test_markers_list_and_default_pick_the_domain_where_the_truth_is_highest():
    sdata = _hand_made()
    listed = markers(sdata, ["g_B", "g_A"], truth_domains="domain", key_added=None)
    assert dict(zip(listed["marker"], listed["domain"], strict=True)) == {"g_B": "B", "g_A": "A"}
    assert set(listed["resolution"]) == {"spot", "truth"}
    auto = markers(sdata, truth_domains="domain")
    assert dict(zip(auto["marker"], auto["domain"], strict=True)) == {"g_A": "A", "g_B": "B"}


def test_errors(monkeypatch, caplog):
    sdata = _hand_made()
    with pytest.raises(SoscopeInputError, match="no obs column 'nope'"):
        domains(sdata, truth_domains="nope", method="kmeans")
    with pytest.raises(SoscopeInputError, match="Unknown `method="):
        domains(sdata, truth_domains="domain", method="louvain")
    with pytest.raises(SoscopeInputError, match="n_domains"):
        domains(sdata, truth=None, method="kmeans")
    with pytest.raises(SoscopeInputError, match="table_other"):
        domains(sdata, truth_domains="domain", key_added="other")
    with pytest.raises(SoscopeInputError, match="not a truth domain"):
        markers(sdata, {"C": "g_A"}, truth_domains="domain")
    with pytest.raises(SoscopeInputError, match="not in every table"):
        markers(sdata, ["g_A", "g_missing"], truth_domains="domain")
    monkeypatch.setattr(_domains, "_has_igraph", lambda: False)
    with pytest.raises(SoscopeInputError, match="pip install igraph"):
        domains(sdata, truth_domains="domain", method="leiden")
    with caplog.at_level(logging.WARNING, logger="soscope.evaluate._domains"):
        scores, _ = domains(sdata, truth_domains="domain", method="auto")
    assert (scores["method"] == "kmeans").all() and "fall back to k-means" in caplog.text


@pytest.mark.timeout(300)
def test_enhanced_subspots_find_domains_spots_miss():
    """Acceptance (issue 18): on synthetic data, sub-spot domains reach an ARI >= 0.10 above spot domains."""
    # measured with these settings: spot ARI 0.18, sub-spot ARI 0.44 (a margin of 0.16 over the bar); the
    # gap varies with the tissue layout (seed) and grows with training (see the report in issue 18)
    sdata = soscope.datasets.synthetic(n_spots=200, n_features=50, seed=0)
    soscope.enhance(sdata, table="table", epochs=20, progress=False)
    scores, _ = domains(sdata, method="kmeans")  # truth domains: the dominant cell type of each sub-spot
    assert scores.loc["subspot", "ari"] >= scores.loc["spot", "ari"] + 0.10, scores
    assert scores.loc["subspot", "nmi"] > scores.loc["spot", "nmi"], scores
    m = markers(sdata)  # each domain's top true marker
    auroc = m.pivot_table(index=["marker", "domain"], columns="resolution", values="auroc")
    assert (auroc["subspot"] > auroc["spot"]).mean() >= 0.5, auroc
    assert auroc["subspot"].mean() > auroc["spot"].mean(), auroc


def test_cluster_truth_recovers_the_domains_and_chooses_k_by_silhouette():
    sdata = _hand_made()
    true = sdata.tables["truth"].obs["domain"].to_numpy()
    labels = soscope.evaluate.cluster_truth(sdata, k_range=(2, 4), n_pcs=2)
    assert labels.index.equals(sdata.tables["truth"].obs_names) and labels.name == "truth_domain"
    # two well separated profiles: the silhouette rule picks k = 2, and the clusters are the domains
    assert labels.attrs["n_domains"] == 2 and set(labels.attrs["silhouette"]) == {2, 3, 4}
    assert max(labels.attrs["silhouette"], key=labels.attrs["silhouette"].get) == 2
    assert pd.crosstab(labels.to_numpy(), true).gt(0).sum(axis=1).eq(1).all()
    again = soscope.evaluate.cluster_truth(sdata, k_range=(2, 4), n_pcs=2)
    pd.testing.assert_series_equal(labels, again)
    fixed = soscope.evaluate.cluster_truth(sdata, n_domains=3, n_pcs=2)
    assert fixed.attrs["n_domains"] == 3 and fixed.nunique() == 3 and fixed.attrs["silhouette"] == {}


def test_cluster_truth_labels_score_domains_and_markers_and_skip_empty_rows():
    sdata = _hand_made()
    sdata.tables["truth"].X[0] = 0  # an empty sub-spot has no profile: no domain, not scored
    labels = soscope.evaluate.cluster_truth(sdata, n_domains=2, n_pcs=2)
    assert pd.isna(labels.iloc[0]) and labels.iloc[1:].notna().all()
    scores, _ = domains(sdata, truth_domains=labels, method="kmeans")
    assert (scores["n_scored"] == 12 * K - 1).all() and (scores["n_truth_domains"] == 2).all()
    assert scores.loc["subspot", "ari"] > scores.loc["spot", "ari"]
    m = markers(sdata, truth_domains=labels)
    assert set(m["marker"]) == {"g_A", "g_B"} and (m["n_in"] + m["n_out"] == 12 * K - 1).all()


def test_cluster_truth_errors():
    sdata = _hand_made()
    with pytest.raises(SoscopeInputError, match="at least 2"):
        soscope.evaluate.cluster_truth(sdata, n_domains=1)
    with pytest.raises(SoscopeInputError, match="k_range"):
        soscope.evaluate.cluster_truth(sdata, k_range=(1, 3))
    with pytest.raises(SoscopeInputError, match="too few"):
        soscope.evaluate.cluster_truth(sdata, n_domains=2, min_counts=1e9)
    with pytest.raises(SoscopeInputError, match="no truth|truth"):
        soscope.evaluate.cluster_truth(sdata, truth="nope")


def test_markers_features_restrict_the_candidates():
    sdata = _hand_made()
    m = markers(sdata, truth_domains="domain", features=["g_flat", "g_B"])
    assert set(m["marker"]) <= {"g_flat", "g_B"} and "g_B" in set(m["marker"])


def test_marker_values_do_not_depend_on_which_markers_are_scored():
    """Each row is normalised by its counts over every shared feature, not over the scored markers only."""
    sdata = _hand_made()
    alone = markers(sdata, {"A": "g_A"}, truth_domains="domain").set_index("resolution")
    both = markers(sdata, {"A": "g_A", "B": "g_B"}, truth_domains="domain")
    both = both[both["marker"] == "g_A"].set_index("resolution")
    pd.testing.assert_frame_equal(alone, both)
    # normalised over g_A alone every row would be log1p(1e4): no contrast at all
    assert alone.loc["spot", "auroc"] > 0.6 and alone.loc["subspot", "auroc"] == pytest.approx(1.0)
    truth = sdata.tables["truth"]
    x = np.asarray(truth.X, dtype=float)
    expect = np.log1p(x[:, 0] / x.sum(axis=1) * 1e4)[truth.obs["domain"].to_numpy() == "A"].mean()
    assert alone.loc["truth", "mean_in"] == pytest.approx(expect, rel=1e-5)


def test_leiden_clusters_more_than_4096_rows():
    """Above 4,096 rows scanpy's default kNN (pynndescent) is replaced by exact neighbours: leiden still runs.

    (scanpy < 1.12 with pynndescent >= 0.6 and scipy >= 1.15 crashed there on pynndescent's sparse array.)
    """
    pytest.importorskip("igraph")
    rng = np.random.default_rng(0)
    group = np.repeat([0, 1], 2100)
    x = rng.poisson(np.where(group[:, None] == 0, [30, 2, 10, 10], [2, 30, 10, 10])).astype(float)
    codes = _domains._cluster(
        x, method="leiden", n_domains=0, resolution=0.2, n_pcs=3, n_neighbors=15,
        normalize=True, target_sum=1e4, seed=0,
    )  # fmt: skip
    assert codes.shape == (4200,) and len(np.unique(codes)) >= 2
    # the two populations never share a cluster
    assert pd.crosstab(codes, group).gt(0).sum(axis=1).eq(1).all()
