# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Enhance one Visium-like section
#
# This tutorial runs soscope on a synthetic Visium-like section with an H&E-like image and known sub-spot truth:
# read → `soscope.enhance` → look at the enhanced sub-spots → score them against the truth and the naive
# baselines. Set `N_SPOTS` higher for a fuller picture; the defaults keep it to about a minute on a laptop CPU.

# %%
import os
import tempfile
from pathlib import Path

import spatialdata as sd

import soscope

N_SPOTS = int(os.environ.get("SOSCOPE_TUTORIAL_SPOTS", 600))
EPOCHS = int(os.environ["SOSCOPE_TUTORIAL_EPOCHS"]) if "SOSCOPE_TUTORIAL_EPOCHS" in os.environ else None
out = Path(os.environ.get("SOSCOPE_TUTORIAL_OUT", tempfile.mkdtemp()))

# %% [markdown]
# ## A SpatialData on disk
# `synthetic` builds spots (55 µm circles on a 100 µm hexagonal lattice, in pixel units with a scale to µm), a count
# table annotating them, a multiscale H&E-like image, and the truth: sub-spot polygons with their true counts.
# We write it to a zarr store and read it back, as you would with a store made by a spatialdata-io reader.

# %%
store = out / "section.zarr"
soscope.datasets.synthetic(n_spots=N_SPOTS, n_features=200, seed=0).write(store, overwrite=True)
sdata = sd.read_zarr(store)
sdata

# %% [markdown]
# ## Enhance
# The store holds two tables (`table` with the spots, `truth` with the sub-spot truth), so we name the one to
# enhance. Everything else (spots, image, coordinate system, sub-spot scheme, likelihood) is picked from the data.

# %%
soscope.enhance(sdata, table="table", epochs=EPOCHS, progress=False)  # epochs: None = automatic
sdata.tables["table_soscope"]

# %% [markdown]
# The new elements are in the store too: `spots_soscope` (one polygon per sub-spot, with `spot_id` and `subspot`)
# and `table_soscope` (the expected counts in each sub-spot, with every parameter in `uns["soscope"]`).

# %%
back = sd.read_zarr(store)
print(back.shapes["spots_soscope"].head())
print(back.tables["table_soscope"].uns["soscope"]["likelihood"])

# %% [markdown]
# ## Look at it
# Spots, enhanced sub-spots and the truth side by side for two marker features.

# %%
markers = list(sdata.tables["table"].var_names[sdata.tables["table"].var["informative"].to_numpy()][:2])
fig = soscope.pl.enhanced(sdata, markers, table="table", truth="truth", save=out / "maps.png")
fig

# %% [markdown]
# ## Score against the truth
# Per-feature Pearson correlation across sub-spots, beside the naive baselines (even split, Gaussian
# interpolation of neighbouring spots) and a linear image regression.

# %%
per_feature, summary = soscope.evaluate.score(
    sdata, key_added="soscope", truth="truth", features="informative", ssim=False
)
{method: round(v["pearson"], 3) for method, v in summary["mean"].items()}
