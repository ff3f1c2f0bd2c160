# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---
# ruff: noqa: B018  (a notebook cell's last expression is its output)

# %% [markdown]
# # Train on some sections, apply to the rest
#
# A study often has many sections of the same tissue. Training soscope once on a few of them and applying the
# saved model to the others keeps every section on the same footing (and saves the training time). Here three
# synthetic Visium-like sections (`A`, `B`, `C`) differ by a per-section capture bias — a library-size factor
# and a factor per feature, as real batches do. We train on `A` and `B`, save the model, enhance `C` with it,
# and score `C` against its true sub-spots beside the naive baselines.

# %%
import os
import tempfile
from pathlib import Path

import numpy as np

import soscope

N_SPOTS = int(os.environ.get("SOSCOPE_TUTORIAL_SPOTS", 300))  # spots per section
EPOCHS = int(os.environ.get("SOSCOPE_TUTORIAL_EPOCHS", 60))
out = Path(os.environ.get("SOSCOPE_TUTORIAL_OUT", tempfile.mkdtemp()))

# %% [markdown]
# ## Three sections
# With `n_sections=3`, each section `S` has its own spots `spots_S` and image `image_S` (they lie side by side
# in the `global` coordinate system); one `table` annotates all spots (its `region` column names the section)
# and `truth` holds the true sub-spot counts. `section_bias=0.5` multiplies each section's observed counts by
# `exp(N(0, 0.5))` factors — per section and per feature — while the truth stays unbiased.

# %%
sdata = soscope.datasets.synthetic(n_spots=N_SPOTS, n_features=60, n_sections=3, section_bias=0.5, seed=0)
sdata

# %% [markdown]
# The bias is visible in the raw counts: the mean count per spot differs between sections although the tissues
# have the same cell types.

# %%
table = sdata.tables["table"]
per_spot = np.asarray(table.X.sum(axis=1)).ravel()
{
    region: round(float(per_spot[(table.obs["region"] == region).to_numpy()].mean()), 1)
    for region in ("spots_A", "spots_B", "spots_C")
}

# %% [markdown]
# ## Train on A and B
# `sections=` restricts the model to those regions of the table. Each section gets its own spot graph and
# image (soscope matches each spots element to the image that covers it) and its own batch terms (library size
# and feature bias), so the network learns what the sections share.

# %%
model = soscope.SoScope(sdata, table="table", sections=["spots_A", "spots_B"], progress=False)
history = model.train(epochs=EPOCHS)
fig = soscope.pl.training(model, save=out / "training.png")
fig

# %% [markdown]
# The model is saved to a folder (one file holding the weights, configuration, normalisation, feature names
# and training history) that `soscope.SoScope.load`, `soscope.enhance(model=...)` and `soscope apply` read.

# %%
model_dir = out / "model_AB"
model.save(model_dir, overwrite=True)
sorted(p.name for p in model_dir.iterdir())

# %% [markdown]
# ## Apply to C
# Section `C` was never seen in training, so its batch is unknown to the model. soscope calibrates it
# automatically: with the network frozen, it fits each feature's bias for the new section in closed form (the
# maximum-likelihood factor between the section's counts and the model's predictions), and the enhanced output
# removes it, putting `C` on the training sections' common scale. Only `C` is enhanced: the output elements
# are `spots_C_from_AB` and `table_from_AB`.

# %%
soscope.enhance(
    sdata, table="table", model=model_dir, sections=["spots_C"], key_added="from_AB", progress=False
)
sdata.tables["table_from_AB"]

# %% [markdown]
# ## How good is it?
# Per-feature Pearson correlation between the enhanced and the true sub-spot counts of `C`, over the
# informative features, beside the naive baselines: an even split of each spot, a Gaussian interpolation of
# neighbouring spots, and a linear regression of the sub-spot counts on image features.

# %%
per_feature, summary = soscope.evaluate.score(
    sdata, key_added="from_AB", spots="spots_C", features="informative", ssim=False
)
{method: round(v["pearson"], 3) for method, v in summary["mean"].items()}

# %%
fig = soscope.pl.accuracy(per_feature, save=out / "accuracy.png")
fig

# %% [markdown]
# ## Look at section C
# Spots, sub-spots enhanced by the model trained on `A` and `B`, and the truth, for two marker features (over
# `image_C`). Each feature's panels share one colour scale, but not one capture bias: the measured spots
# carry `C`'s bias, the enhanced sub-spots are on the common scale of `A` and `B`, and the truth has none. So
# the levels of a feature may differ between the panels while its pattern should agree; the correlations above
# do not depend on the scale.

# %%
markers = list(table.var_names[table.var["informative"].to_numpy()][:2])
fig = soscope.pl.enhanced(
    sdata,
    markers,
    table="table",
    key_added="from_AB",
    spots="spots_C",
    truth="truth",
    save=out / "maps_C.png",
)
fig
