# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---
# ruff: noqa: B018  (a notebook cell's last expression is its output)

# %% [markdown]
# # A whole slide with Dask
#
# soscope cuts a slide into spatial chunks of spots, each with a halo covering the network's receptive field,
# and runs inference as a Dask graph with one task per chunk (see {doc}`/scale`). By default the tasks run on
# local threads; given a `dask.distributed` client — or with one active — they run on its workers, which may
# be other processes or other machines. The results do not depend on where, or in which order, the chunks run.
#
# Here a small synthetic slide stands in for a whole one, and a `LocalCluster` of two worker processes stands
# in for a cluster: we train once, enhance with the local scheduler and on the cluster, and compare.

# %%
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import spatialdata as sd
from dask.distributed import Client, LocalCluster

import soscope
import soscope.model._core as core
from soscope.tiling import plan_chunks

N_SPOTS = int(os.environ.get("SOSCOPE_TUTORIAL_SPOTS", 600))
EPOCHS = int(os.environ.get("SOSCOPE_TUTORIAL_EPOCHS", 60))
out = Path(os.environ.get("SOSCOPE_TUTORIAL_OUT", tempfile.mkdtemp()))

# %% [markdown]
# ## A slide in a zarr store
# The slide lives in a zarr store, as a whole slide would; its image is a multiscale Dask array, read lazily
# (image features are computed tile by tile, only where there are spots).

# %%
store = out / "slide.zarr"
soscope.datasets.synthetic(n_spots=N_SPOTS, n_features=60, seed=1).write(store, overwrite=True)
sdata = sd.read_zarr(store)
sdata["image"]["scale0"]["image"].data

# %% [markdown]
# ## Train once
# Training takes one optimizer step per chunk of 256 spots (plus its halo), so its memory does not grow with
# the slide either.

# %%
model = soscope.SoScope(sdata, table="table", progress=False)
history = model.train(epochs=EPOCHS)

# %% [markdown]
# Chunks hold about 2,048 spots each; this slide would be a single chunk, so for the demonstration we make
# them smaller (an internal setting, not needed on a real slide) to have several tasks to share between
# workers.

# %%
core.INFER_CHUNK_SPOTS = max(50, N_SPOTS // 6)
data = model.prepared.data
chunks = plan_chunks(
    data.centres,
    data.edge_index,
    sections=data.sections,
    chunk_spots=core.INFER_CHUNK_SPOTS,
    n_hops=core.receptive_hops(model.module.config),
)
f"{len(chunks)} chunks; spots per chunk (core + halo): {[len(c.nodes) for c in chunks]}"

# %% [markdown]
# ## Local scheduler
# Without a client, the chunk tasks run on Dask's threaded scheduler (one thread per core).

# %%
model.enhance(key_added="local")
sdata.tables["table_local"]

# %% [markdown]
# ## On a cluster
# A `LocalCluster` with two single-threaded worker processes. `client=` sends the inference graph to it: the
# model's weights are scattered to every worker once, each worker builds the network once, and each task
# carries only its chunk's arrays (so no worker needs the whole slide). The client collects the results as the
# tasks complete and writes them into the store.
#
# For a real cluster, connect with `Client("tcp://scheduler:8786")` instead; with a client active (as inside
# this `with` block), `soscope.enhance(sdata)` and `SoScope.enhance` use it without `client=`. Worker
# processes import the main module, so in a script create the cluster under `if __name__ == "__main__":`, as
# usual with Dask; a notebook needs nothing.

# %%
with (
    LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0", silence_logs=logging.ERROR
    ) as cluster,
    Client(cluster) as client,
):
    print(client)
    soscope.enhance(sdata, model=model, key_added="dask", client=client, progress=False)

sdata.tables["table_dask"]

# %% [markdown]
# ## Same results
# Each chunk's core spots see exactly what they would see on the whole slide, so the two runs agree to float
# precision (each chunk is computed the same way wherever it runs).

# %%
local = sdata.tables["table_local"].X
dask_run = sdata.tables["table_dask"].X
assert local.shape == dask_run.shape
np.testing.assert_allclose(dask_run, local, rtol=1e-5, atol=1e-6)
f"max |difference| = {np.abs(dask_run - local).max():.2e} (largest value {local.max():.1f})"

# %% [markdown]
# Both results are in the store: the sub-spot shapes `spots_local` / `spots_dask` and the tables.

# %%
back = sd.read_zarr(store)
print(sorted(back.shapes), sorted(back.tables))

# %% [markdown]
# ## Look at it
# The run on the cluster, beside the spots and the truth.

# %%
markers = list(sdata.tables["table"].var_names[sdata.tables["table"].var["informative"].to_numpy()][:2])
fig = soscope.pl.enhanced(
    sdata, markers, table="table", key_added="dask", truth="truth", save=out / "maps.png"
)
fig

# %%
core.INFER_CHUNK_SPOTS = 4096  # back to the default for anything run after this
