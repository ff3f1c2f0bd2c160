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
# Needs `scanpy`, `squidpy` (spatial graph, Moran's I) and `spatialdata-plot` (maps):
# `pip install "soscope[plot]" squidpy`. Leiden clustering needs `igraph` (`pip install igraph`; without it
# k-means is used).

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
import spatialdata_plot  # noqa: F401  (registers the `sdata.pl` plotting accessor)
import squidpy as sq
from matplotlib.colors import to_hex
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans

import soscope

warnings.filterwarnings("ignore", category=FutureWarning)
N_SPOTS = int(os.environ.get("SOSCOPE_TUTORIAL_SPOTS", 400))
EPOCHS = int(os.environ.get("SOSCOPE_TUTORIAL_EPOCHS", 30))
out = Path(os.environ.get("SOSCOPE_TUTORIAL_OUT", tempfile.mkdtemp()))
HAS_IGRAPH = importlib.util.find_spec("igraph") is not None

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
# not installed). We work on a copy so the stored table keeps the expected counts. The graph's weights are a
# Gaussian kernel (`method="gauss"`): scanpy's default UMAP weights give similar domains but compile with numba
# on first use, which costs more than the rest of this tutorial's analysis.

# %%
sub = sdata.tables["table_soscope"].copy()
sc.pp.normalize_total(sub, target_sum=1e4)
sc.pp.log1p(sub)
sc.pp.pca(sub, n_comps=15, random_state=0)
sc.pp.neighbors(sub, n_neighbors=15, method="gauss", random_state=0)
n_types = sdata.tables["truth"].obs["cell_type"].nunique()
if HAS_IGRAPH:
    sc.tl.leiden(sub, flavor="igraph", n_iterations=2, directed=False, resolution=0.5, key_added="domain")
else:
    codes = KMeans(n_types, n_init=10, random_state=0).fit_predict(sub.obsm["X_pca"])
    sub.obs["domain"] = pd.Categorical(codes.astype(str))
sub.obs["domain"].value_counts()

# %% [markdown]
# ## Spatially variable genes
# squidpy's `spatial_neighbors` joins each sub-spot to its six nearest neighbours (the sub-spot centres, in the
# coordinates of the shapes), and its `spatial_autocorr` ranks the features by Moran's I.

# %%
shapes = sdata.shapes["spots_soscope"]
instance_key = sub.uns["spatialdata_attrs"]["instance_key"]
centres = shapes.loc[sub.obs[instance_key].to_numpy()].geometry.centroid
sub.obsm["spatial"] = np.column_stack([centres.x, centres.y])
sq.gr.spatial_neighbors(sub, coord_type="generic", n_neighs=6)
sq.gr.spatial_autocorr(sub, mode="moran", n_perms=None)
svg = sub.uns["moranI"]["I"]  # sorted, highest first
svg.head(10).round(3)

# %% [markdown]
# A caveat before reading these numbers: enhanced values are a model's *expected* counts, with no sampling noise,
# and neighbouring sub-spots share information, so every feature is smoother than measured counts would be and
# its Moran's I is higher. The synthetic truth shows it: features that differ between cell types
# (`var["informative"]`), follow a tissue-wide gradient (`var["gradient"]`) or neither, scored on the enhanced
# sub-spots and on the true sub-spot counts with the same graph. On the truth, the informative features lead
# by far; on the enhanced sub-spots the smoothing lifts the others to about their level (features with no
# spatial signal in the truth score about twice their true Moran's I), so the ranking above is not a list of
# marker genes. Rank spatially variable genes on measured counts (the spots), don't read the enhanced values' Moran's I
# or permutation p-values as if they came from counts, and use the enhanced table for maps and domains.

# %%
truth = sdata.tables["truth"]
truth_rows = pd.MultiIndex.from_frame(truth.obs[["spot_id", "subspot"]].astype(str)).get_indexer(
    pd.MultiIndex.from_frame(sub.obs[["spot_id", "subspot"]].astype(str))
)  # the truth's rows in the enhanced table's order: the same sub-spots, so the same spatial graph
truth_sub = truth[truth_rows].copy()
sc.pp.normalize_total(truth_sub, target_sum=1e4)
sc.pp.log1p(truth_sub)
truth_sub.obsm["spatial"] = sub.obsm["spatial"]
sq.gr.spatial_neighbors(truth_sub, coord_type="generic", n_neighs=6)
sq.gr.spatial_autocorr(truth_sub, mode="moran", n_perms=None)
kind = np.where(
    sub.var["informative"], "informative", np.where(sub.var["gradient"] != 0, "gradient", "neither")
)
pd.DataFrame(
    {
        "enhanced": svg.reindex(sub.var_names).to_numpy(),
        "truth": truth_sub.uns["moranI"]["I"].reindex(sub.var_names).to_numpy(),
        "kind": kind,
    }
).groupby("kind").mean().round(3)

# %% [markdown]
# ## Domains at spot and sub-spot resolution
# The same pipeline on the spots, then three maps drawn by spatialdata-plot: the truth (each sub-spot's dominant
# cell type), the spot domains and the sub-spot domains. The domains go into the tables' `obs`, and
# `render_shapes` colours each shapes element through the table that annotates it: the enhanced table annotates
# the sub-spot shapes exactly as the spot table annotates the spots. Cluster numbers are arbitrary, so each map's
# clusters are matched to the truth's types (Hungarian matching of their overlap) only to give matching colours.

# %%
spots = sdata.tables["table"].copy()
sc.pp.normalize_total(spots, target_sum=1e4)
sc.pp.log1p(spots)
sc.pp.pca(spots, n_comps=15, random_state=0)
spots.obs["domain"] = pd.Categorical(
    KMeans(n_types, n_init=10, random_state=0).fit_predict(spots.obsm["X_pca"]).astype(str)
)
types = list(truth.obs["cell_type"].cat.categories)


def aligned(labels: np.ndarray, truth_of_rows: np.ndarray) -> pd.Categorical:
    """Rename clusters to the truth type they overlap most (one-to-one), for matching colours."""
    clusters = np.unique(labels)
    overlap = pd.crosstab(pd.Categorical(labels, clusters), pd.Categorical(truth_of_rows, types)).to_numpy()
    rows, cols = linear_sum_assignment(-overlap)
    names = {clusters[r]: types[c] for r, c in zip(rows, cols, strict=True)}
    return pd.Categorical([names.get(v, f"extra {v}") for v in labels])


# the truth type of each spot / enhanced sub-spot, to align the labels: the majority over its sub-spots
spot_major = truth.obs.groupby("spot_id", observed=True)["cell_type"].agg(lambda s: s.value_counts().index[0])
sdata.tables["table"].obs["domain"] = aligned(
    spots.obs["domain"].to_numpy(), spot_major.loc[spots.obs["spot_id"]].astype(str).to_numpy()
)
sdata.tables["table_soscope"].obs["domain"] = aligned(
    sub.obs["domain"].astype(str).to_numpy(), truth_sub.obs["cell_type"].astype(str).to_numpy()
)
colours = {t: to_hex(c) for t, c in zip(types, plt.get_cmap("tab10").colors, strict=False)}
palette = dict(colours)
for name in ("table", "table_soscope"):  # grey: a cluster matched to no type
    palette.update(
        {c: "#999999" for c in sdata.tables[name].obs["domain"].cat.categories if c not in palette}
    )

panels = [
    ("spots_truth_subspots", "truth", "cell_type", "truth (dominant cell type)"),
    ("spots", "table", "domain", "spot domains"),
    ("spots_soscope", "table_soscope", "domain", "sub-spot domains (soscope)"),
]
fig, axes = plt.subplots(1, 3, figsize=(15, 5.2), layout="constrained")
for ax, (element, table_name, column, title) in zip(axes, panels, strict=True):
    categories = sdata.tables[table_name].obs[column].cat.categories
    sdata.pl.render_shapes(
        element, color=column, table_name=table_name, palette={c: palette[c] for c in categories}
    ).pl.show(ax=ax, title=title, legend_loc=None, colorbar=False, show=False)
    ax.set_axis_off()
handles = [plt.Line2D([], [], marker="s", ls="", color=c, label=t) for t, c in colours.items()]
if len(palette) > len(colours):
    handles.append(plt.Line2D([], [], marker="s", ls="", color="#999999", label="other cluster"))
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
