# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---
# ruff: noqa: B018  (a notebook cell's last expression is its output)

# %% [markdown]
# # Enhance with a single-cell reference
#
# A paired single-cell reference says *which* cell types a spot holds; the image and the neighbouring spots
# say *where* inside the spot they sit. With `reference=` soscope deconvolves every spot into type
# abundances (a per-gene platform effect, a spatial smoothness prior), places each type inside the spot, and
# lets these type-aware densities join the split with a weight it validates on the data itself. The outputs
# gain `obsm["cell_type_abundance"]` for every sub-spot and every spot.
#
# Here the data is real: the MERFISH mouse-brain mini (its cells, their transcripts and the DAPI image, from
# the shared data folder). We build the reference the way a benchmark must — from the cells of the **west**
# half, clustered into types — and enhance pseudo-spots of the **east** half, whose cells never enter the
# reference, then score the sub-spots and their type abundances against the east cells.

# %%
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import shapely
import spatialdata as sd

import soscope
from soscope.evaluate import pseudo_spots, reference_from_cells, score, score_cell_types

warnings.filterwarnings("ignore", category=UserWarning)  # zarr / anndata notices, not about soscope
EPOCHS = int(os.environ.get("SOSCOPE_TUTORIAL_EPOCHS", 0)) or None  # None: soscope's default
out = Path(os.environ.get("SOSCOPE_TUTORIAL_OUT", tempfile.mkdtemp()))
merfish = soscope.datasets.load_merfish_mini()
cells = merfish.tables["table"]
cells

# %% [markdown]
# ## A reference from the west half
# `reference_from_cells` normalises the cells' counts, clusters them (k-means on principal components, the
# number of types chosen by silhouette) and returns the reference: the cells it used with their type in
# `obs["cell_type"]`. Every other cell (`exclude=`) gets the type of the nearest type centroid in the input's
# `obs`, so the truth below carries the same type names.

# %%
centre = shapely.get_coordinates(shapely.centroid(np.asarray(merfish.shapes["cells"].geometry.values)))
ids = cells.obs[cells.uns["spatialdata_attrs"]["instance_key"]].to_numpy()
x_of_cell = centre[merfish.shapes["cells"].index.get_indexer(ids), 0]
middle = float(np.median(x_of_cell))
east = x_of_cell >= middle
reference = reference_from_cells(cells, exclude=east, seed=0)
reference.obs["cell_type"].value_counts()

# %% [markdown]
# ## Pseudo-spots of the east half
# The east half's cells are summed into 30 µm square spots split 2 × 2; each sub-spot's truth is the cells
# whose centre lies in it (`cell_type_key=` adds their type fractions, `obsm["cell_type_fraction"]`).

# %%
x0, y0 = centre.min(0)
x1, y1 = centre.max(0)
east_part = sd.bounding_box_query(
    merfish,
    axes=("x", "y"),
    min_coordinate=[middle, y0],
    max_coordinate=[x1, y1],
    target_coordinate_system="global",
    filter_table=True,
)
sdata = pseudo_spots(
    east_part, table="table", spacing=30.0, lattice="square", subspots="grid:2", image="dapi",
    cells="cells", cell_type_key="cell_type",
)  # fmt: skip
sdata

# %% [markdown]
# ## Enhance without and with the reference
# The reference is an AnnData (an `.h5ad` path or a table of the SpatialData work too); its genes are matched
# to the spots' by name.

# %%
soscope.enhance(sdata, key_added="plain", epochs=EPOCHS, progress=False)
soscope.enhance(
    sdata, key_added="with_reference", reference=reference, cell_type_key="cell_type", epochs=EPOCHS,
    progress=False,
)  # fmt: skip
enhanced = sdata.tables["table_with_reference"]
enhanced.uns["soscope"]["reference"]

# %% [markdown]
# `weight` is the share of the type-aware densities in the split, chosen by *split validation one scale up*:
# groups of neighbouring spots are split among their members by each candidate prior made without the group's
# own counts, and scored against the members' real counts (`cv_scores`, relative to the weight 0). A reference
# that does not split better than the genes' own neighbours and image is given weight 0 — then it changes
# nothing in the counts, and its type abundances are still reported.
#
# ## Scores against the east cells

# %%
features = list(
    sdata.tables["table"].var_names[np.argsort(-np.asarray(sdata.tables["table"].X.sum(0)).ravel())[:50]]
)
rows = {}
for key in ("plain", "with_reference"):
    _, summary = score(sdata, key_added=key, features=features, baselines=key == "plain", ssim=False)
    rows.update({("soscope, " + key if m == "soscope" else m): v for m, v in summary["mean"].items()})
{method: round(values["pearson"], 3) for method, values in rows.items()}

# %% [markdown]
# ## Cell types of the sub-spots
# `obsm["cell_type_abundance"]` holds each sub-spot's abundance of every type (type names in
# `uns["soscope"]["reference"]["cell_types"]`); the spot table `table_with_reference_spots` holds each spot's.
# `score_cell_types` normalises them to fractions and correlates them, type by type, with the fractions of
# the true cells in each sub-spot.

# %%
per_type, type_summary = score_cell_types(enhanced, sdata.tables["truth"])
per_type

# %%
sdata.tables["table_with_reference_spots"]

# %% [markdown]
# `soscope.pl.cell_types` maps the share of the most abundant types in each spot (top) and each sub-spot
# (bottom).

# %%
soscope.pl.cell_types(sdata, key_added="with_reference", save=out / "cell_types.png")
