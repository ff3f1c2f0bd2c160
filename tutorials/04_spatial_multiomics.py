# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---
# ruff: noqa: B018  (a notebook cell's last expression is its output)

# %% [markdown]
# # Spatial multi-omics: proteins and RNA
#
# Spatial CITE-seq measures proteins (antibody-derived tags) and RNA on the same DBiT pixels. soscope models
# both at once: one encoder reads every modality of a spot, and each modality gets its own likelihood and its
# own sub-spot head, so the proteins and the RNA are split with the same spatial detail. This tutorial uses
# the real example shipped with soscope (human skin, 1,618 pixels of 20 µm, 283 proteins + 10 genes; no
# download).

# %%
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

import soscope

EPOCHS = int(os.environ.get("SOSCOPE_TUTORIAL_EPOCHS", 40))
out = Path(os.environ.get("SOSCOPE_TUTORIAL_OUT", tempfile.mkdtemp()))

# %% [markdown]
# ## One table, two modalities
# The example is one table of 1,618 pixels × 293 features annotating the shapes `pixels`. Its
# `var["feature_types"]` says which features are proteins (`"Antibody Capture"`) and which are genes (`"Gene
# Expression"`), as spatialdata-io and 10x readers write it.

# %%
sdata = soscope.datasets.example()
table = sdata.tables["table"]
print(sdata)
table.var["feature_types"].value_counts()

# %% [markdown]
# ## Enhance
# soscope detects the modalities from `feature_types` and picks a likelihood for each from its values (here a
# negative binomial for both count modalities); `likelihood={"Antibody Capture": "nb", "Gene Expression":
# "poisson"}` would choose per modality. There is no image: each 20 µm pixel is split into a grid of square
# sub-pixels (3 × 3, the default for DBiT pixels), whose profiles come from the neighbouring pixels through
# the spot graph.

# %%
soscope.enhance(sdata, table="table", epochs=EPOCHS, progress=False)
sorted(sdata.tables)

# %% [markdown]
# ## Two enhanced tables
# Each modality gets its own enhanced table, both annotating the same sub-spot shapes `pixels_soscope`:
# `table_soscope_antibody_capture` and `table_soscope_gene_expression`. Their `uns["soscope"]` records the
# likelihood used for each.

# %%
proteins = sdata.tables["table_soscope_antibody_capture"]
rna = sdata.tables["table_soscope_gene_expression"]
for name, t in (("proteins", proteins), ("RNA", rna)):
    info = t.uns["soscope"]
    print(
        f"{name}: {t.n_obs:,} sub-spots x {t.n_vars} features; {info['modality']}, {info['likelihood_used']}"
    )
assert proteins.n_obs == rna.n_obs == len(sdata.shapes["pixels_soscope"])

# %% [markdown]
# The enhanced counts redistribute each pixel's measured counts over its sub-pixels (the footprint observation
# model, see the concepts page): summed back to pixels, the enhanced proteins give the measured ones.

# %%
back_to_pixels = pd.DataFrame(np.asarray(proteins.X)).groupby(proteins.obs["spot_id"].to_numpy()).sum()
measured = pd.DataFrame(np.asarray(table[:, proteins.var_names].X), index=table.obs["spot_id"].to_numpy())
measured = measured.loc[back_to_pixels.index].to_numpy()
r = np.corrcoef(np.log1p(back_to_pixels.to_numpy()).ravel(), np.log1p(measured).ravel())[0, 1]
f"pixel totals, enhanced vs measured proteins: Pearson r = {r:.3f} on log1p counts"

# %% [markdown]
# ## A protein and a gene
# The measured pixels beside the enhanced sub-pixels for a protein and a gene, on one colour scale per feature
# (counts per unit area); `soscope.pl.enhanced` finds the enhanced table holding each feature. We pick, in
# each modality, the most variable of the well-measured features.


# %%
def most_variable(modality: str) -> str:
    """Feature of ``modality`` with the largest spread of log counts among those above the median mean."""
    sub = table[:, (table.var["feature_types"] == modality).to_numpy()]
    x = np.asarray(sub.X, dtype=float)
    spread = np.where(x.mean(0) >= np.median(x.mean(0)), np.log1p(x).std(0), -np.inf)
    return str(sub.var_names[int(np.argmax(spread))])


protein, gene = most_variable("Antibody Capture"), most_variable("Gene Expression")
fig = soscope.pl.enhanced(sdata, [protein, gene], table="table", save=out / "protein_and_gene.png")
fig
