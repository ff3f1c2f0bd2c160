# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---
# ruff: noqa: B018  (a notebook cell's last expression is its output)

# %% [markdown]
# # Downstream analysis: tissue domains, spatially variable genes and markers
#
# The enhanced table is an ordinary AnnData, one row per sub-spot, so the scverse tools work on it unchanged.
# This tutorial enhances a synthetic Visium-like section, then clusters the sub-spots into tissue domains with
# scanpy, ranks spatially variable genes (Moran's I), maps the domains at spot and sub-spot resolution, and
# measures what the higher resolution buys against the known truth with `soscope.evaluate.domains` (ARI, NMI)
# and `soscope.evaluate.markers` (known markers' contrast between domains).
#
# Needs `scanpy` (and scikit-learn, which it brings); leiden clustering needs `igraph` (`pip install igraph`,
# else k-means is used); `squidpy` is used for the spatial graph and Moran's I when installed.

# %%
import importlib.util
import os
import tempfile
import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import scanpy as sc
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from sklearn.neighbors import kneighbors_graph

import soscope

warnings.filterwarnings("ignore", category=FutureWarning)
N_SPOTS = int(os.environ.get("SOSCOPE_TUTORIAL_SPOTS", 400))
EPOCHS = int(os.environ.get("SOSCOPE_TUTORIAL_EPOCHS", 30))
out = Path(os.environ.get("SOSCOPE_TUTORIAL_OUT", tempfile.mkdtemp()))
HAS_IGRAPH = importlib.util.find_spec("igraph") is not None
HAS_SQUIDPY = importlib.util.find_spec("squidpy") is not None

# %% [markdown]
# ## Enhance a section
# `synthetic` lays out tissue domains of four cell types, thin layers of a fifth and small islands of a sixth:
# many of these structures are smaller than a 55 µm spot. Its `truth` table holds, for every sub-spot, the true
# counts and the dominant cell type (`obs["cell_type"]`): the truth domains.

# %%
sdata = soscope.datasets.synthetic(n_spots=N_SPOTS, n_features=60, seed=0)
soscope.enhance(sdata, table="table", epochs=EPOCHS, progress=False)
sdata

# %% [markdown]
# ## scanpy on the enhanced sub-spots
# The usual pipeline: normalise, `log1p`, PCA, a neighbour graph and leiden (k-means on the PCA when `igraph` is
# not installed). We work on a copy so the stored table keeps the expected counts.

# %%
sub = sdata.tables["table_soscope"].copy()
sc.pp.normalize_total(sub, target_sum=1e4)
sc.pp.log1p(sub)
sc.pp.pca(sub, n_comps=15, random_state=0)
sc.pp.neighbors(sub, n_neighbors=15, random_state=0)
n_types = sdata.tables["truth"].obs["cell_type"].nunique()
if HAS_IGRAPH:
    sc.tl.leiden(sub, flavor="igraph", n_iterations=2, directed=False, resolution=0.5, key_added="domain")
else:
    codes = KMeans(n_types, n_init=10, random_state=0).fit_predict(sub.obsm["X_pca"])
    sub.obs["domain"] = pd.Categorical(codes.astype(str))
sub.obs["domain"].value_counts()

# %% [markdown]
# ## Spatially variable genes
# A spatial graph joins each sub-spot to its nearest neighbours (squidpy's `spatial_neighbors` when installed,
# else a k-nearest-neighbour graph of the sub-spot centres), and Moran's I ranks the features by spatial
# autocorrelation.

# %%
shapes = sdata.shapes["spots_soscope"]
instance_key = sub.uns["spatialdata_attrs"]["instance_key"]
centres = shapes.loc[sub.obs[instance_key].to_numpy()].geometry.centroid
sub.obsm["spatial"] = np.column_stack([centres.x, centres.y])
if HAS_SQUIDPY:
    import squidpy as sq

    sq.gr.spatial_neighbors(sub, coord_type="generic", n_neighs=6)
    sq.gr.spatial_autocorr(sub, mode="moran", n_perms=None)
    morans = sub.uns["moranI"]["I"]
else:
    graph = kneighbors_graph(sub.obsm["spatial"], n_neighbors=6, include_self=False)
    morans = pd.Series(sc.metrics.morans_i(graph, sub.X.T), index=sub.var_names)
svg = morans.sort_values(ascending=False)
svg.head(10).round(3)

# %% [markdown]
# A caveat before reading these numbers: enhanced values are a model's *expected* counts, with no sampling noise,
# and neighbouring sub-spots share information, so every feature is smoother than measured counts would be and
# its Moran's I is higher. The synthetic truth shows it: features that differ between cell types
# (`var["informative"]`), follow a tissue-wide gradient (`var["gradient"]`) or neither, scored on the enhanced
# sub-spots and on the true sub-spot counts with the same graph. On the truth, the informative features lead; on
# the enhanced sub-spots the smoothing lifts the others above them, so the ranking above is not a list of marker
# genes. Rank spatially variable genes on measured counts (the spots), don't read the enhanced values' Moran's I
# or permutation p-values as if they came from counts, and use the enhanced table for maps and domains.

# %%
truth_sub = sdata.tables["truth"].copy()
sc.pp.normalize_total(truth_sub, target_sum=1e4)
sc.pp.log1p(truth_sub)
truth_graph = kneighbors_graph(sub.obsm["spatial"], n_neighbors=6, include_self=False)
truth_rows = pd.MultiIndex.from_frame(truth_sub.obs[["spot_id", "subspot"]].astype(str)).get_indexer(
    pd.MultiIndex.from_frame(sub.obs[["spot_id", "subspot"]].astype(str))
)  # the truth's rows in the enhanced table's order, to reuse its graph
kind = np.where(
    sub.var["informative"], "informative", np.where(sub.var["gradient"] != 0, "gradient", "neither")
)
pd.DataFrame(
    {
        "enhanced": morans.reindex(sub.var_names).to_numpy(),
        "truth": sc.metrics.morans_i(truth_graph, truth_sub.X[truth_rows].T),
        "kind": kind,
    }
).groupby("kind").mean().round(3)

# %% [markdown]
# ## Domains at spot and sub-spot resolution
# The same pipeline on the spots, then three maps: the truth (each sub-spot's dominant cell type), the spot
# domains and the sub-spot domains. Cluster numbers are arbitrary, so each map's clusters are matched to the
# truth's types (Hungarian matching of their overlap) only to give matching colours.

# %%
spots = sdata.tables["table"].copy()
sc.pp.normalize_total(spots, target_sum=1e4)
sc.pp.log1p(spots)
sc.pp.pca(spots, n_comps=15, random_state=0)
spots.obs["domain"] = pd.Categorical(
    KMeans(n_types, n_init=10, random_state=0).fit_predict(spots.obsm["X_pca"]).astype(str)
)

truth = sdata.tables["truth"]
truth_shapes = sdata.shapes["spots_truth_subspots"].loc[truth.obs["subspot_id"].to_numpy()]
spot_shapes = sdata.shapes["spots"]
spot_shapes = spot_shapes.assign(geometry=spot_shapes.geometry.buffer(spot_shapes["radius"]))  # circles
spot_shapes = spot_shapes.loc[spots.obs["spot_id"].to_numpy()]
sub_shapes = shapes.loc[sub.obs[instance_key].to_numpy()]
types = list(truth.obs["cell_type"].cat.categories)


def aligned(labels: np.ndarray, truth_of_rows: np.ndarray) -> np.ndarray:
    """Rename clusters to the truth type they overlap most (one-to-one), for matching colours."""
    clusters = np.unique(labels)
    overlap = pd.crosstab(pd.Categorical(labels, clusters), pd.Categorical(truth_of_rows, types)).to_numpy()
    rows, cols = linear_sum_assignment(-overlap)
    names = {clusters[r]: types[c] for r, c in zip(rows, cols, strict=True)}
    return np.array([names.get(v, f"extra {v}") for v in labels])


# the truth type of each spot / enhanced sub-spot, to align the labels: the majority over its sub-spots
key = truth.obs[["spot_id", "subspot"]].astype(str).agg("/".join, axis=1)
truth_by_key = pd.Series(truth.obs["cell_type"].astype(str).to_numpy(), index=key.to_numpy())
sub_key = sub.obs[["spot_id", "subspot"]].astype(str).agg("/".join, axis=1).to_numpy()
spot_major = truth.obs.groupby("spot_id", observed=True)["cell_type"].agg(lambda s: s.value_counts().index[0])
maps = {
    "truth (dominant cell type)": (truth_shapes, truth.obs["cell_type"].astype(str).to_numpy()),
    "spot domains": (
        spot_shapes,
        aligned(spots.obs["domain"].to_numpy(), spot_major.loc[spots.obs["spot_id"]].astype(str).to_numpy()),
    ),
    "sub-spot domains (soscope)": (
        sub_shapes,
        aligned(sub.obs["domain"].astype(str).to_numpy(), truth_by_key.loc[sub_key].to_numpy()),
    ),
}
colours = dict(zip(types, plt.get_cmap("tab10").colors, strict=False))
fig, axes = plt.subplots(1, 3, figsize=(15, 5.2), layout="constrained")
for ax, (title, (gdf, labels)) in zip(axes, maps.items(), strict=True):
    gdf.plot(color=[colours.get(v, (0.6, 0.6, 0.6)) for v in labels], ax=ax)  # grey: an unmatched cluster
    ax.set_title(title)
    ax.set_aspect("equal")
    ax.invert_yaxis()  # image convention: y grows downwards
    ax.set_axis_off()
handles = [plt.Line2D([], [], marker="s", ls="", color=c, label=t) for t, c in colours.items()]
fig.legend(handles=handles, loc="outside right center", frameon=False)
fig.savefig(out / "domains.png", dpi=100)
fig

# %% [markdown]
# ## Scored against the truth
# `soscope.evaluate.domains` runs the same normalisation, PCA and clustering on the spots and the sub-spots and
# scores both against the truth domains at sub-spot resolution (each spot's cluster is given to its sub-spots):
# adjusted Rand index and normalised mutual information. k-means with as many clusters as truth types makes the
# comparison deterministic.

# %%
scores, labels = soscope.evaluate.domains(sdata, method="kmeans")
scores

# %% [markdown]
# `soscope.evaluate.markers` measures how sharply known markers separate their domain: for each domain's top
# true marker, the log2 fold change and the AUROC between its domain and the rest, with spot values (each
# sub-spot taking its spot's value), enhanced sub-spots and the true sub-spot counts (the ceiling).

# %%
contrast = soscope.evaluate.markers(sdata)
auroc = contrast.pivot_table(index=["domain", "marker"], columns="resolution", values="auroc")
fig, ax = plt.subplots(figsize=(7, 3.5), layout="constrained")
auroc[["spot", "subspot", "truth"]].plot.bar(ax=ax, ylim=(0.5, 1.0), rot=0)
ax.set_xticklabels([f"{d}\n{m}" for d, m in auroc.index])
ax.set_xlabel("")
ax.set_ylabel("AUROC of the domain's marker")
ax.legend(title="resolution", loc="lower left", ncols=3)
fig.savefig(out / "markers.png", dpi=100)
auroc.round(3)
