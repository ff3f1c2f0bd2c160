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
# Chunks hold `soscope.settings.infer_chunk_spots` spots each (2,048 by default); this slide would be a single
# chunk, so for the demonstration we pass smaller ones with `chunk_spots=`, to have several tasks to share
# between workers. (To change it for every call of a session, set `soscope.settings.infer_chunk_spots`, or
# use `with soscope.settings.override(infer_chunk_spots=...):` for a block of code, as on the cluster below.)
# Each chunk carries a halo of neighbours two graph hops deep (the default network's receptive field), so
# that its core spots see what they would see on the whole slide.

# %%
CHUNK_SPOTS = max(50, N_SPOTS // 6)
data = model.prepared.data
chunks = plan_chunks(data.centres, data.edge_index, sections=data.sections, chunk_spots=CHUNK_SPOTS, n_hops=2)
f"{len(chunks)} chunks; spots per chunk (core + halo): {[len(c.nodes) for c in chunks]}"

# %% [markdown]
# ## Local scheduler
# Without a client, the chunk tasks run on Dask's threaded scheduler (one thread per core).

# %%
model.enhance(key_added="local", chunk_spots=CHUNK_SPOTS)
sdata.tables["table_local"]

# %% [markdown]
# ## On a cluster
# A `LocalCluster` with two single-threaded worker processes. `client=` sends the inference graph to it: the
# model's weights are scattered to every worker once, each worker builds the network once, and each task
# carries only its chunk's arrays (so no worker needs the whole slide). The client collects the results as the
# tasks complete and writes them into the store.
#
# For a real cluster, connect with `Client("tcp://scheduler:8786")` instead; with a client active (as inside
# this `with` block), `soscope.enhance(sdata)` and `SoScope.enhance` use it without `client=` (unless
# `soscope.settings.parallel_backend = "threads"` keeps the work on local threads). Worker
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
    # the same chunks, this time through the package-wide setting
    with soscope.settings.override(infer_chunk_spots=CHUNK_SPOTS):
        soscope.enhance(sdata, model=model, key_added="dask", client=client, progress=False)

sdata.tables["table_dask"]

# %% [markdown]
# ## Same results
# Each chunk's core spots see exactly what they would see on the whole slide, and each chunk is computed the
# same way wherever it runs, so the two runs agree: usually bit for bit. The comparison allows for float32
# rounding (see `FLOAT32_RTOL`): a sum of float32 numbers can change in its last bits when the library adds its
# terms in another order (another number of threads), and the network's widest sums run over its 128 hidden
# features, through about 6 layers.

# %%
FLOAT32_RTOL = 6 * 128 * float(np.finfo(np.float32).eps)  # ≈ 9e-5
local = np.asarray(sdata.tables["table_local"].X)
dask_run = np.asarray(sdata.tables["table_dask"].X)
assert local.shape == dask_run.shape
np.testing.assert_allclose(dask_run, local, rtol=FLOAT32_RTOL, atol=FLOAT32_RTOL * np.abs(local).max())
f"identical values: {np.mean(dask_run == local):.1%}; max |difference| = {np.abs(dask_run - local).max():.2e}"

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
