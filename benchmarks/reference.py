"""Reference-guided enhancement on real in-situ data: a single-cell reference built from held-out cells.

Issue 16: ``soscope.enhance(sdata, reference=ref, cell_type_key="cell_type")`` guides the enhancement with a
paired single-cell reference and writes each sub-spot's expected abundance of each cell type
(``obsm["cell_type_abundance"]``). Real in-situ data gives both a truth and a reference, if the reference
is kept apart from what is scored:

* Pseudo-spots and sub-spot truth as in ``benchmarks/accuracy.py`` (the same units: every transcript in
  2 µm bins; the count oracle's cells are the segmented cells).
* Cell types: :func:`soscope.evaluate.reference_from_cells` clusters the segmented cells (their
  transcripts; normalise, log1p, PCA, k-means with k by silhouette in 3..8) of ONE half of the field; the
  cells of the other half take the type of the nearest centroid. The reference is the cells of that half
  (raw counts). The truth's type fractions are those of the cells whose centre lies in each sub-spot
  (:func:`soscope.evaluate.pseudo_spots` with ``cell_type_key=``).
* 2-fold spatial cross-fitting: soscope runs on the whole field with the reference of half A and is scored
  on the spots of half B, and vice versa; the scored table joins the two held-out halves. Reference cells
  are those of the half whose centre lies in no sub-spot of a scored spot.

Cases (read from disk; nothing is downloaded):

* ``merfish_hex50``: Vizgen MERFISH mini with its DAPI image, 27.5 µm circles on a 50 µm hexagonal lattice,
  hex7 (as accuracy.py's merfish_hex50). Halves: west / east of the median spot centre.
* ``merfish_sq30``: the same, 30 µm square bins split 2 x 2 (15 µm sub-spots).
* ``cosmx_sq16``: CosMx lung mini, two fields of view with their IF composite (RGB), 16 µm squares split
  2 x 2. Transcripts carry their cell ids; cells are the ``CellLabels`` masks; 0.18 µm/px (an assumption of
  the data's PROVENANCE.txt). The two fields are laid side by side in one frame with a gap (they are ~1 mm
  apart on the slide) and cross-fitted between each other: reference from one field, scored on the other;
  and, because the two fields share few types, also with the reference from every cell (optimistic: the
  scored cells are in it).
* ``cosmx_hex30``, ``cosmx_hex25``: the same with 16.5 µm circles on a 30 µm hexagonal lattice and 13.75 µm
  circles on a 25 µm one (the Visium ratio), hex7 — each run only when it leaves >= 30 spots in the fields.
* ``verafish_hex100_nuclei``: VeraFISH mouse hippocampus (10,994 cells x 120 genes; 1 unit = 0.0628 µm, an
  assumption of the loader), 55 µm circles on a 100 µm hex lattice (Visium), hex7, with a nuclear image
  RENDERED from the cell centres (as accuracy.py's case of that name: nuclei carry position, not type). The
  table's rows are the cells (no transcripts): the truth is the cells in each sub-spot. Halves: west / east
  of the median spot centre.

Methods per case, each scored by mean Pearson / Spearman / RMSE (log1p) / SSIM over the 100 most abundant
features: soscope with the reference (``soscope.enhance(..., reference=ref, cell_type_key="cell_type")``;
reported "not available" while the argument does not exist), soscope without a reference, the baselines
of :func:`soscope.evaluate.score` (even split, Gaussian interpolation, interpolation split, image regression,
image-ridge split) and the count oracle. Cell-type abundance: :func:`soscope.evaluate.score_cell_types`
(per-type Pearson of fractions over the held-out sub-spots holding a typed cell, mean over types, mean over
the two folds) for soscope with the reference (its sub-spots; and its spot table's abundance given to each
sub-spot), beside NNLS of each spot's counts on the reference's mean profiles (the spot-level deconvolution
every sub-spot inherits), NNLS of the interpolation split's and of soscope's (without a reference) sub-spot
counts, and NNLS of the TRUE sub-spot counts (an oracle: what a sub-spot's own expression says about its
types).

A second expression oracle, the *type oracle*, splits each spot's observed counts in proportion to
``sum_t n_kt P_tg``: the true cells of each type in the sub-spot times the (cross-fitted) reference's mean
counts per cell of the type — the ceiling of a split guided by the reference and the cell counts.
``--n-types`` fixes the number of reference types (default: k by silhouette).

Writes ``benchmarks/results/reference.md`` and, per case, ``reference_<case>.csv`` (per-feature scores) and
``reference_<case>_types.csv`` (per-type scores of every type method, reference variant and fold) next to it.

    python benchmarks/reference.py                 # every case (~3 min on 2 cores)
    python benchmarks/reference.py --cases merfish_hex50 --epochs 40
"""

from __future__ import annotations

import argparse
import inspect
import logging
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import (  # noqa: E402  (the benchmarks folder is not a package)
    BASELINE_LABELS,
    ORACLE_LABELS,
    code_state,
    fmt,
    log,
    rename_method,
    top_features,
)
from loaders import (  # noqa: E402
    COSMX_GAP_PX,
    COSMX_UM_PER_PX,
    cell_bounds,
    crop_interior,
    load_cosmx,
    render_nuclei,
    transcript_bins,
)

CASES = (
    "merfish_hex50",
    "merfish_sq30",
    "cosmx_sq16",
    "cosmx_hex30",
    "cosmx_hex25",
    "verafish_hex100_nuclei",
)
#: the cells element of each data kind (None: the table's rows are the cells, as VeraFISH's)
CELLS_ELEMENT = {"merfish": "cells", "cosmx": "cells", "verafish": None}
#: the smallest number of spots a CosMx hex case must leave to be run
MIN_SPOTS_COSMX_HEX = 30
CELL_TYPE_KEY = "cell_type"
#: methods of the type-abundance table: label, and whether it uses the truth
TYPE_METHODS = {
    "soscope_reference": ("**soscope with the reference**: sub-spot abundances", False),
    "soscope_reference_spot": (
        "soscope with the reference: its spot abundances given to each sub-spot",
        False,
    ),
    "nnls_spot": ("NNLS of each spot's counts on the reference profiles (spot level)", False),
    "nnls_interpolation_split": ("NNLS of the interpolation split's sub-spot counts", False),
    "nnls_soscope": ("NNLS of soscope's sub-spot counts (enhanced without a reference)", False),
    "nnls_truth": ("*oracle*: NNLS of the true sub-spot counts", True),
}
METHOD_LABELS = {
    "soscope_reference": "**soscope with the reference** (cross-fitted)",
    "soscope_reference_same": "soscope with the reference from the same cells (optimistic)",
    "soscope": "soscope without a reference",
    **BASELINE_LABELS,
    **ORACLE_LABELS,
    "type_oracle": "*oracle (uses the truth's typed cells)*: counts split by the true cells of each type x "
    "the reference's type profile (cross-fitted)",
}


# ------------------------------------------------------------------------------------------------- data
def load_data(kind: str, cache: dict):
    """``(units, cells, cell_xy, rects, image)`` of ``"merfish"``, ``"cosmx"`` or ``"verafish"``, cached.

    ``units``: 2 µm transcript bins (table ``"table"``) with the cells' shapes and the image; ``cells``:
    cells × genes (controls dropped) whose ``obs["cell_id"]`` is the shapes' index; ``cell_xy`` the cells'
    centres in the same order. VeraFISH: the cells are the table's rows (``units.tables["table"]`` itself)
    and the image is a nuclear image rendered from their centres (as accuracy.py's verafish_hex100_nuclei).
    """
    import shapely

    from soscope.datasets import load_merfish_mini, load_verafish, shared_data_dir

    if kind in cache:
        return cache[kind]
    if kind == "verafish":
        from spatialdata import SpatialData

        v = load_verafish()
        xy = shapely.get_coordinates(shapely.centroid(np.asarray(v.shapes["cells"].geometry.values)))
        img, _ = render_nuclei(xy, um_per_px=1.0, seed=0)
        units = SpatialData(images={"dapi": img}, shapes=dict(v.shapes), tables=dict(v.tables))
        cells = units.tables["table"]
        assert np.array_equal(cells.obs["cell_id"].to_numpy(), np.arange(cells.n_obs)), "rows are cells"
        cache[kind] = (units, cells, xy, [cell_bounds(v)], "dapi")
        return cache[kind]
    if kind == "merfish":
        m = load_merfish_mini()
        units, bounds = transcript_bins(m, 2.0, image="dapi", blank_prefix="Blank-")
        cells, rects, image = m.tables["table"], [bounds], "dapi"
    else:
        sdata, cells, rects = load_cosmx(shared_data_dir())
        units, _ = transcript_bins(sdata, 2.0, image="if", blank_prefix="NegPrb")
        image = "if"
    cells = cells[:, ~cells.var["blank"].to_numpy(bool)].copy()
    shapes = units.shapes["cells"]
    ids = cells.obs["cell_id"].to_numpy()
    xy = shapely.get_coordinates(shapely.centroid(np.asarray(shapes.geometry.loc[ids].values)))
    cache[kind] = (units, cells, xy, rects, image)
    return cache[kind]


#: case -> (data, pseudo_spots geometry, description)
GEOMETRY = {
    "merfish_hex50": (
        "merfish",
        dict(spacing=50.0, spot_diameter=27.5, lattice="hex"),
        "27.5 µm circles on a 50 µm hex lattice, hex7",
    ),
    "merfish_sq30": (
        "merfish",
        dict(spacing=30.0, lattice="square", subspots="grid:2"),
        "30 µm squares, grid:2",
    ),
    "cosmx_sq16": ("cosmx", dict(spacing=16.0, lattice="square", subspots="grid:2"), "16 µm squares, grid:2"),
    "cosmx_hex30": (
        "cosmx",
        dict(spacing=30.0, spot_diameter=16.5, lattice="hex"),
        "16.5 µm circles on a 30 µm hex lattice, hex7",
    ),
    "cosmx_hex25": (
        "cosmx",
        dict(spacing=25.0, spot_diameter=13.75, lattice="hex"),
        "13.75 µm circles on a 25 µm hex lattice, hex7",
    ),
    "verafish_hex100_nuclei": (
        "verafish",
        dict(spacing=100.0, spot_diameter=55.0, lattice="hex"),
        "55 µm circles on a 100 µm hex lattice (Visium), hex7",
    ),
}


def build_pseudo(units, rects, image, geometry, cell_type_key=None, cells="cells"):
    """Pseudo-spots of the transcript bins (or cells), cropped to the fields (cells: the segmented ones).

    ``cells=None``: the table's rows are the cells (VeraFISH); the type is then an obs column of the table.
    """
    from soscope.evaluate import pseudo_spots

    p = pseudo_spots(units, table="table", image=image, cells=cells, cell_type_key=cell_type_key, **geometry)
    return crop_interior(p, rects)


def split_halves(p, kind: str, rects, xy: np.ndarray):
    """Split a case in two halves: each spot's, each cell's, and the cells in each half's sub-spots.

    MERFISH: west / east of the median spot centre; CosMx: the two fields (the first field's right edge).
    Returns ``spot_half`` (per row of the spot table), ``cell_half`` (per cell, by its centre) and
    ``in_subspots`` (cells x 2: the centre lies in a sub-spot of a spot of that half).
    """
    import pandas as pd
    import shapely

    spot_ids = p.tables["table"].obs["spot_id"].to_numpy()
    spots = p.shapes["spots"]
    sx = shapely.get_coordinates(shapely.centroid(np.asarray(spots.geometry.loc[spot_ids].values)))[:, 0]
    threshold = rects[0][1] if kind == "cosmx" else float(np.median(sx))
    spot_half = (sx >= threshold).astype(int)
    cell_half = (xy[:, 0] >= threshold).astype(int)
    sub = p.shapes["spots_truth_subspots"]
    sub_half = pd.Series(spot_half, index=spot_ids).reindex(sub["spot_id"].to_numpy()).to_numpy()
    ci, si = shapely.STRtree(np.asarray(sub.geometry.values)).query(
        shapely.points(xy), predicate="intersects"
    )
    in_subspots = np.zeros((len(xy), 2), dtype=bool)
    for h in (0, 1):
        in_subspots[ci[sub_half[si] == h], h] = True
    return spot_half, cell_half, in_subspots


# -------------------------------------------------------------------------------------------- soscope
def reference_available() -> bool:
    """Whether ``soscope.enhance`` (or ``SoScope``) takes ``reference=`` yet."""
    import soscope

    return any("reference" in inspect.signature(f).parameters for f in (soscope.enhance, soscope.SoScope))


def run_enhance(p, *, key_added: str, scheme: str, args, **kw) -> tuple[float, int]:
    """``soscope.enhance`` with the benchmark's settings; return (wall time, epochs)."""
    import soscope

    t0 = time.perf_counter()
    soscope.enhance(
        p,
        table="table",
        subspots=scheme,
        key_added=key_added,
        epochs=args.epochs,
        seed=args.seed,
        progress=False,
        **kw,
    )
    hist = p.tables[f"table_{key_added}"].uns["soscope"].get("history", {})
    epochs = len(hist.get("epoch", [])) if isinstance(hist, dict) else 0
    return time.perf_counter() - t0, epochs


# --------------------------------------------------------------------------------------- type baselines
def type_profiles(ref, genes) -> tuple[np.ndarray, list[str]]:
    """Mean counts per cell of each reference type over ``genes`` (types x genes)."""
    import scipy.sparse as sp

    x = ref[:, genes].X
    x = x.toarray() if sp.issparse(x) else np.asarray(x)
    lab = ref.obs[CELL_TYPE_KEY]
    names = [str(c) for c in lab.cat.categories]
    return np.vstack([x[(lab == n).to_numpy()].mean(axis=0) for n in names]), names


def nnls_rows(y: np.ndarray, profiles: np.ndarray) -> np.ndarray:
    """Non-negative abundances ``a`` per row with ``y ≈ a @ profiles`` (cells-like numbers)."""
    from scipy.optimize import nnls

    a = profiles.T.astype(np.float64)
    return np.vstack(
        [nnls(a, row.astype(np.float64))[0] if row.sum() > 0 else np.zeros(len(profiles)) for row in y]
    )


def prediction_table(truth, abundance: np.ndarray, names: list[str]):
    """Return an enhanced-like table (the truth's sub-spot keys) holding ``abundance``."""
    import anndata as ad

    out = ad.AnnData(obs=truth.obs[["spot_id", "subspot"]].copy())
    out.obsm["cell_type_abundance"] = abundance
    out.uns["soscope"] = {"reference": {"cell_types": list(names)}}
    return out


def dense(x) -> np.ndarray:
    """Return a dense float64 copy of a (sparse) matrix."""
    return np.asarray(x.toarray() if hasattr(x, "toarray") else x, dtype=np.float64)


def id_index(values):
    """Ids as strings (how sub-spot tables name their spot)."""
    import pandas as pd

    return pd.Index(np.asarray(values).astype(str))


def subspot_rows(truth, spot_ids, subspot) -> np.ndarray:
    """Row of each truth sub-spot among sub-spots named by ``(spot_ids, subspot)`` (all must be there)."""
    import pandas as pd

    keys = pd.MultiIndex.from_arrays([id_index(spot_ids), np.asarray(subspot, dtype=np.int64)])
    at = keys.get_indexer(
        pd.MultiIndex.from_arrays([id_index(truth.obs["spot_id"]), truth.obs["subspot"].to_numpy(np.int64)])
    )
    assert (at >= 0).all(), "every truth sub-spot is among them"
    return at


def type_oracle(p, folds: list[dict]):
    """ORACLE: each spot's observed counts split by the true cells of each type times the type's profile.

    Sub-spot ``k`` of a spot gets ``x_ig * w_k mu_kg / sum_j w_j mu_jg`` with ``mu_kg = sum_t n_kt P_tg``:
    ``n_kt`` the truth's cells of type ``t`` whose centre lies in sub-spot ``k`` (``n_cells`` times the type
    fraction) and ``P_tg`` the mean counts per cell of type ``t`` in the fold's (cross-fitted) reference;
    each fold's reference for the sub-spots it holds out. The ceiling of a split that knows where each
    type's cells are and what a cell of each type expresses (the count oracle with typed cells). A spot
    whose sub-spots hold no typed cell is split evenly; a feature missing from the reference is split by the
    cells. Returns an enhanced-like table (obs ``spot_id``, ``subspot``) over every truth sub-spot.
    """
    import anndata as ad
    import pandas as pd

    from soscope.evaluate._baselines import _split_observed
    from soscope.geometry import make_subspots

    tab, truth_all = p.tables["table"], p.tables["truth"]
    gdf = p.shapes["spots"].loc[tab.obs["spot_id"].to_numpy()]
    layout = make_subspots(
        gdf, str(truth_all.uns["subspots"]["scheme"]), spacing=float(truth_all.uns["subspots"]["spacing"])
    )
    spot_ids = gdf.index.to_numpy()[layout.spot_index]
    spot_x = dense(tab.X)
    mu = np.zeros((layout.n_subspots, tab.n_vars))
    covered = np.zeros(layout.n_subspots, dtype=bool)
    for fd in folds:
        truth, ref = fd["truth"], fd["ref"]
        names = [str(c) for c in truth.uns["cell_type_fraction"]["cell_types"]]
        genes = [g for g in tab.var_names if g in ref.var_names]
        prof, ref_names = type_profiles(ref, genes)
        prof = prof[[ref_names.index(n) for n in names]]  # the truth's type order
        n_kt = np.nan_to_num(truth.obsm["cell_type_fraction"]) * truth.obs["n_cells"].to_numpy(float)[:, None]
        at = subspot_rows(truth, spot_ids, layout.subspot)
        gi = tab.var_names.get_indexer(genes)
        mu[np.ix_(at, gi)] = n_kt @ prof
        missing = np.setdiff1d(np.arange(tab.n_vars), gi)
        mu[np.ix_(at, missing)] = truth.obs["n_cells"].to_numpy(float)[:, None]
        covered[at] = True
    assert covered.all(), "the folds' held-out sub-spots cover every sub-spot"
    dens = mu / np.maximum(layout.area, 1e-12)[:, None]
    split = _split_observed(spot_x, dens, layout)
    obs = pd.DataFrame({"spot_id": spot_ids, "subspot": layout.subspot.astype(np.int64)})
    obs.index = [f"o{i}" for i in range(len(obs))]
    return ad.AnnData(X=split, obs=obs, var=tab.var[[]].copy())


def type_baselines(p, truth, ref, soscope_table=None) -> dict:
    """NNLS type baselines and the truth oracle on the rows of ``truth``.

    NNLS on the reference's per-type mean profiles of: each spot's counts (given to its sub-spots), the
    interpolation split's sub-spot counts, soscope's sub-spot counts (``soscope_table``, enhanced without a
    reference) and the true sub-spot counts (the oracle).
    """
    from soscope.evaluate import interpolation_split, score_cell_types
    from soscope.geometry import make_subspots, spot_centres

    tab = p.tables["table"]
    genes = [g for g in ref.var_names if g in tab.var_names]
    profiles, names = type_profiles(ref, genes)
    spot_x = dense(tab[:, genes].X)
    preds = {}
    # spot level: each spot's counts deconvolved, the abundances given to each of its sub-spots
    pos = id_index(tab.obs["spot_id"]).get_indexer(id_index(truth.obs["spot_id"]))
    preds["nnls_spot"] = nnls_rows(spot_x, profiles)[pos]
    # interpolation split of each spot's counts, deconvolved per sub-spot
    gdf = p.shapes["spots"].loc[tab.obs["spot_id"].to_numpy()]
    layout = make_subspots(
        gdf, str(truth.uns["subspots"]["scheme"]), spacing=float(truth.uns["subspots"]["spacing"])
    )
    split = np.asarray(interpolation_split(spot_x, spot_centres(gdf), layout))
    at = subspot_rows(truth, gdf.index.to_numpy()[layout.spot_index], layout.subspot)
    preds["nnls_interpolation_split"] = nnls_rows(split[at], profiles)
    if soscope_table is not None:
        at = subspot_rows(truth, soscope_table.obs["spot_id"], soscope_table.obs["subspot"])
        preds["nnls_soscope"] = nnls_rows(dense(soscope_table[:, genes].X)[at], profiles)
    # oracle: the true sub-spot counts deconvolved
    preds["nnls_truth"] = nnls_rows(dense(truth[:, genes].X), profiles)
    return {m: score_cell_types(prediction_table(truth, ab, names), truth) for m, ab in preds.items()}


# ------------------------------------------------------------------------------------------------ running
def spot_abundance_table(p, truth, key: str):
    """Return soscope's spot abundances (its spot table ``table_<key>_spots``) given to each truth sub-spot.

    None when it wrote none. Type names: the spot table's ``uns["soscope"]["reference"]["cell_types"]``.
    """
    name = f"table_{key}_spots"
    if name not in p.tables:
        return None
    spots = p.tables[name]
    names = spots.uns.get("soscope", {}).get("reference", {}).get("cell_types")
    if names is None:
        return None
    rows = id_index(spots.obs["instance_id"]).get_indexer(id_index(truth.obs["spot_id"]))
    assert (rows >= 0).all(), "every truth sub-spot's spot is in the spot table"
    return prediction_table(truth, dense(spots.obsm["cell_type_abundance"])[rows], [str(n) for n in names])


#: how the reference relates to the scored cells, per variant: label in the report
VARIANTS = {
    "crossfit": "cross-fitted (reference from the other half)",
    "same": "same cells (optimistic: the reference holds the scored cells)",
}


def make_fold(tag: str, use: np.ndarray, held: np.ndarray, ctx: dict, args) -> dict:
    """One fold: a reference from the cells ``use``, the truth's type fractions, the scored spots ``held``.

    ``ctx`` holds the case's data (units, cells, rects, image, geometry, spot table, truth).
    """
    from soscope.evaluate import reference_from_cells

    cells, units, tab, tru = ctx["cells"], ctx["units"], ctx["tab"], ctx["tru"]
    ref = reference_from_cells(
        cells, exclude=~use, cell_type_key=CELL_TYPE_KEY, seed=args.seed, n_types=args.n_types
    )
    col = f"cell_type_{tag}"
    labels = cells.obs[CELL_TYPE_KEY].copy()
    labels.index = cells.obs["cell_id"].to_numpy()
    shapes = units.shapes["cells"]
    shapes[col] = labels.reindex(shapes.index).to_numpy()  # pseudo_spots reads the cells' type column
    if ctx["cells_element"] is None:  # the table's rows are the cells: the type is its obs column
        units.tables["table"].obs[col] = cells.obs[CELL_TYPE_KEY].to_numpy()
    truth = build_pseudo(
        units, ctx["rects"], ctx["image"], ctx["geometry"], cell_type_key=col, cells=ctx["cells_element"]
    ).tables["truth"]
    assert truth.obs[["spot_id", "subspot"]].equals(tru.obs[["spot_id", "subspot"]]), "the same sub-spots"
    held_ids = id_index(tab.obs["spot_id"].to_numpy()[held])
    rows = np.flatnonzero(id_index(truth.obs["spot_id"]).isin(held_ids))
    truth = truth[rows].copy()
    meta = ref.uns["reference_from_cells"]
    return {
        "ref": ref,
        "truth": truth,
        "held": held_ids,
        "n_ref_cells": ref.n_obs,
        "n_types": meta["n_types"],
        "typed_subspots": int(np.isfinite(truth.obsm["cell_type_fraction"]).all(axis=1).sum()),
        "types_present": int((np.nan_to_num(truth.obsm["cell_type_fraction"]).sum(axis=0) > 0).sum()),
    }


def run_reference(p, folds: list[dict], variant: str, scheme: str, args, feats, types: dict) -> tuple:
    """Run soscope with each fold's reference; join the held-out sub-spots and score them.

    Returns the per-feature scores and a status line.
    """
    import anndata as ad

    from soscope.evaluate import score, score_cell_types

    parts, epochs = [], []
    for f, fd in enumerate(folds):
        key = f"soscope_ref_{variant}{f}"
        _, ep = run_enhance(
            p,
            key_added=key,
            scheme=scheme,
            args=args,
            reference=fd["ref"],
            cell_type_key=CELL_TYPE_KEY,
            **(
                {}
                if args.reference_smoothness is None
                else {"reference_smoothness": args.reference_smoothness}
            ),
        )
        epochs.append(ep)
        enh = p.tables[f"table_{key}"]
        parts.append(enh[id_index(enh.obs["spot_id"]).isin(fd["held"])].copy())
        types["soscope_reference"].append(score_cell_types(enh, fd["truth"]))
        spot_pred = spot_abundance_table(p, fd["truth"], key)
        types["soscope_reference_spot"].append(
            score_cell_types(spot_pred, fd["truth"]) if spot_pred is not None else None
        )
    joined = ad.concat(parts, merge="same") if len(parts) > 1 else parts[0]
    joined.obs_names_make_unique()
    method = "soscope_reference" if variant == "crossfit" else f"soscope_reference_{variant}"
    p.tables[f"table_{method}"] = joined
    scores, _ = score(p, key_added=method, features=feats, baselines=False, ssim=True)
    scores = rename_method(scores.drop(columns="truth_mean"), "soscope", method)
    return scores, f"ran ({' / '.join(map(str, epochs))} epochs)"


def run_case(name: str, args, cache: dict, outdir: Path) -> dict:
    """Build, type, enhance (with and without the reference), score one case; return its numbers."""
    import pandas as pd

    from soscope.evaluate import score, summary

    kind, geometry, geo_desc = GEOMETRY[name]
    t_case, cpu_case = time.perf_counter(), time.process_time()
    log(f"{name}: building pseudo-spots")
    t0 = time.perf_counter()
    units, cells, xy, rects, image = load_data(kind, cache)
    p = build_pseudo(units, rects, image, geometry, cells=CELLS_ELEMENT[kind])
    tab, tru = p.tables["table"], p.tables["truth"]
    data_desc = {
        "merfish": "MERFISH mini, every transcript in 2 µm bins; DAPI image",
        "cosmx": "CosMx lung mini (2 fields side by side), every transcript in 2 µm bins; IF composite (RGB)",
        "verafish": "VeraFISH cells (1 unit = 0.0628 µm, assumed); nuclear image RENDERED from the cell "
        "centres (1 µm/px, seed 0)",
    }[kind]
    desc = f"{data_desc}; {geo_desc}"
    if name.startswith("cosmx_hex") and tab.n_obs < MIN_SPOTS_COSMX_HEX:
        log(f"{name}: only {tab.n_obs} spots inside the fields, skipped")
        return {
            "name": name,
            "skipped": f"{desc}: only {tab.n_obs} spots inside the fields (< {MIN_SPOTS_COSMX_HEX}), skipped",
        }
    feats = top_features(p)
    scheme = str(tru.uns["subspots"]["scheme"])
    spot_half, cell_half, in_subspots = split_halves(p, kind, rects, xy)
    info = {
        "name": name,
        "desc": desc,
        "spots": tab.n_obs,
        "halves": [int((spot_half == h).sum()) for h in (0, 1)],
        "subspots": tru.n_obs,
        "scheme": scheme,
        "features": len(feats),
        "n_vars": tab.n_vars,
        "counts_per_spot": float(np.median(np.asarray(tab.X.sum(axis=1)).ravel())),
    }

    # references: fold f from the cells of half f outside the other half's sub-spots, scored on the other
    # half; CosMx also from every cell, scored everywhere (optimistic)
    ctx = {"cells": cells, "units": units, "tab": tab, "tru": tru, "rects": rects, "image": image}
    ctx["geometry"], ctx["cells_element"] = geometry, CELLS_ELEMENT[kind]
    variants = {
        "crossfit": [
            make_fold(
                f"crossfit{f}", (cell_half == f) & ~in_subspots[:, 1 - f], spot_half == 1 - f, ctx, args
            )
            for f in (0, 1)
        ]
    }
    if kind == "cosmx":
        everything = np.ones(cells.n_obs, dtype=bool)
        variants["same"] = [make_fold("same", everything, np.ones(tab.n_obs, dtype=bool), ctx, args)]
    info["folds"] = {
        v: [{k: x for k, x in fd.items() if k not in ("ref", "truth", "held")} for fd in folds]
        for v, folds in variants.items()
    }
    info["t_build"] = time.perf_counter() - t0
    log(
        f"{name}: {tab.n_obs} spots ({info['halves'][0]} / {info['halves'][1]} per half), {tru.n_obs} "
        f"sub-spots ({scheme}); cross-fitted references: "
        + "; ".join(f"{fd['n_ref_cells']} cells, {fd['n_types']} types" for fd in variants["crossfit"])
        + f"; {info['t_build']:.1f} s"
    )

    # baselines and soscope without a reference
    t0 = time.perf_counter()
    per_feature, _ = score(p, key_added=None, features=feats, baselines=True, ssim=True)
    info["t_baselines"] = time.perf_counter() - t0
    t_fit, ep = run_enhance(p, key_added="soscope", scheme=scheme, args=args)
    info.update(t_soscope=t_fit, epochs=ep)
    plain, _ = score(p, key_added="soscope", features=feats, baselines=False, ssim=True)
    per_feature = per_feature.join(plain.drop(columns="truth_mean"))
    log(
        f"{name}: baselines {info['t_baselines']:.1f} s; "
        f"soscope without a reference: {ep} epochs, {t_fit:.1f} s"
    )

    # soscope with the reference (per variant), then the type baselines
    info["types"], info["reference_status"] = {}, {}
    t_ref = t_types = 0.0
    type_frames = []
    for v, folds in variants.items():
        types: dict[str, list] = {m: [] for m in TYPE_METHODS}
        t0 = time.perf_counter()
        if not reference_available():
            status = "not available: `soscope.enhance` has no `reference=` argument yet"
        else:
            try:
                scores, status = run_reference(p, folds, v, scheme, args, feats, types)
                per_feature = per_feature.join(scores)
            except Exception as err:  # the API is new: report the failure, do not stop the benchmark
                import traceback

                traceback.print_exc()
                status = f"failed: {type(err).__name__}: {str(err)[:300]}"
                types["soscope_reference"], types["soscope_reference_spot"] = [], []
        t_ref += time.perf_counter() - t0
        t0 = time.perf_counter()
        for fd in folds:
            for m, res in type_baselines(p, fd["truth"], fd["ref"], p.tables["table_soscope"]).items():
                types[m].append(res)
        t_types += time.perf_counter() - t0
        info["types"][v], info["reference_status"][v] = types, status
        log(f"{name}: soscope with the reference ({v}): {status}")
        for m, res in types.items():
            if res and all(r is not None for r in res):
                type_frames += [r[0].assign(reference=v, method=m, fold=f) for f, r in enumerate(res)]
    info.update(t_reference=t_ref, t_types=t_types)
    # the type oracle: the observed counts split by the true typed cells x the cross-fitted profiles
    p.tables["table_type_oracle"] = type_oracle(p, variants["crossfit"])
    oracle, _ = score(p, key_added="type_oracle", features=feats, baselines=False, ssim=True)
    per_feature = per_feature.join(rename_method(oracle.drop(columns="truth_mean"), "soscope", "type_oracle"))
    pd.concat(type_frames).to_csv(outdir / f"reference_{name}_types.csv", float_format="%.5g")

    info["summary"] = summary(per_feature, reference="soscope")
    per_feature.to_csv(outdir / f"reference_{name}.csv", float_format="%.5g")
    info["t_total"] = time.perf_counter() - t_case
    info["cpu_total"] = time.process_time() - cpu_case
    means = info["summary"]["mean"]
    log(
        f"{name}: mean Pearson "
        + ", ".join(f"{m} {v['pearson']:.3f}" for m, v in means.items())
        + "; cross-fitted type Pearson "
        + ", ".join(
            f"{m} {type_mean(res, 'pearson'):.3f}" for m, res in info["types"]["crossfit"].items() if res
        )
        + f"; case total {info['t_total']:.1f} s"
    )
    return info


def type_mean(results: list, metric: str) -> float:
    """Mean over the folds of the mean-over-types ``metric`` (NaN when a fold has none)."""
    vals = [r[1]["mean"][metric] for r in results if r is not None]
    return float(np.mean(vals)) if vals and len(vals) == len(results) else float("nan")


# ------------------------------------------------------------------------------------------------- report
def machine() -> str:
    """Describe the machine: platform, CPU, cores."""
    return f"{platform.platform()}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def header(args, t_all: float) -> list[str]:
    """Return the report's first paragraphs: how it was run, on what, how long."""
    import torch

    import soscope

    cmd = "python benchmarks/reference.py" + (" " + " ".join(sys.argv[1:]) if sys.argv[1:] else "")
    epochs = "soscope default (early stopping)" if args.epochs is None else args.epochs
    load_now = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    api = "present" if args.reference_api else "not available yet"
    return [
        "# Reference-guided enhancement on real in-situ data (issue 16)",
        "",
        f"Generated by `{cmd}` (soscope {soscope.__version__}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, seed {args.seed}, epochs {epochs}) on {machine()}. Total wall "
        f"time {t_all / 60:.1f} min, CPU time of this process {time.process_time() / 60:.1f} min (all "
        f"threads); load average at start {args.load_at_start}, at the end {load_now}. Code: "
        f"{args.code_state}. Reference API (`soscope.enhance(..., reference=)`): {api}.",
        "",
        "Protocol: pseudo-spots sum every transcript (2 µm bins) whose centre lies in each footprint; each "
        "sub-spot is scored against the transcripts in its polygon, as in `benchmarks/accuracy.py`. A "
        "reference is built from the segmented cells of one half of the field "
        "(`soscope.evaluate.reference_from_cells`), the other half is scored, and vice versa (2-fold "
        "spatial cross-fitting; CosMx: its two fields of view; CosMx also with the reference from every "
        "cell, optimistic). Spots whose sub-spots reach beyond the data are dropped.",
        "",
    ]


def report(results: list[dict], args, t_all: float) -> str:
    """Return the Markdown report."""
    ran = [r for r in results if "skipped" not in r]
    lines = header(args, t_all) + [
        "## Cases",
        "",
        "| case | pseudo-spots | spots (half A / B) | sub-spots | features scored / total | median counts "
        "per spot | cross-fitted references (fold A; fold B): cells, types | held-out sub-spots with a "
        "typed cell (types present) | wall time: build / baselines / soscope / with references / type "
        "baselines / case (s) | CPU time, case (s) |",
        "|---|---|---:|---:|---:|---:|---|---|---|---:|",
    ]
    for r in results:
        if "skipped" in r:
            lines.append(f"| {r['name']} | {r['skipped']} | – | – | – | – | – | – | – | – |")
            continue
        folds = r["folds"]["crossfit"]
        refs = "; ".join(f"{f['n_ref_cells']} cells, {f['n_types']} types" for f in folds)
        held = " / ".join(f"{f['typed_subspots']} ({f['types_present']})" for f in folds)
        if "same" in r["folds"]:
            f = r["folds"]["same"][0]
            refs += f"; same cells: {f['n_ref_cells']} cells, {f['n_types']} types"
            held += f"; same cells: {f['typed_subspots']} ({f['types_present']})"
        times = " / ".join(
            fmt(r.get(k, float("nan")), 0)
            for k in ("t_build", "t_baselines", "t_soscope", "t_reference", "t_types", "t_total")
        )
        lines.append(
            f"| {r['name']} | {r['desc']} | {r['spots']:,} ({r['halves'][0]} / {r['halves'][1]}) | "
            f"{r['subspots']:,} ({r['scheme']}) | {r['features']} / {r['n_vars']} | "
            f"{r['counts_per_spot']:,.0f} | {refs} | {held} | {times} | {r['cpu_total']:.0f} |"
        )
    lines += [
        "",
        "## Expression: mean over the scored features",
        "",
        "soscope with the cross-fitted reference is scored on the sub-spots of the half whose cells were not "
        "in its reference (the two folds joined: every sub-spot scored once); every other method on all "
        "sub-spots.",
        "",
        "| case | method | Pearson | Spearman | RMSE ↓ | SSIM |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in ran:
        means = r["summary"]["mean"]
        for m, label in METHOD_LABELS.items():
            variant = "same" if m.endswith("_same") else "crossfit"
            if m.startswith("soscope_reference") and variant not in r["reference_status"]:
                continue
            if m not in means:
                if m.startswith("soscope_reference"):
                    lines.append(
                        f"| {r['name']} | {label}: {r['reference_status'][variant]} | – | – | – | – |"
                    )
                continue
            v = means[m]
            lines.append(
                f"| {r['name']} | {label} | {fmt(v.get('pearson'))} | {fmt(v.get('spearman'))} | "
                f"{fmt(v.get('rmse'))} | {fmt(v.get('ssim'))} |"
            )
    lines += [
        "",
        "## Cell-type abundance: per-type Pearson of fractions over the held-out sub-spots",
        "",
        "`soscope.evaluate.score_cell_types`: predicted abundances normalised to fractions against the "
        "fractions of the (typed) cells whose centre lies in each sub-spot; sub-spots without a cell are "
        "skipped; a type whose true fraction is constant over the scored sub-spots (e.g. absent) has no "
        "correlation and is left out of the mean over types. Per fold (fold A: reference from half A, "
        "scored on half B), then the mean of the folds (– when a fold has no scorable type). Spearman and "
        "RMSE (of fractions) are means over the folds.",
        "",
        "| case | reference | method | Pearson per fold | Pearson | Spearman | RMSE ↓ |",
        "|---|---|---|---|---:|---:|---:|",
    ]
    for r in ran:
        for v, types in r["types"].items():
            status = r["reference_status"][v]
            for m, (label, _oracle) in TYPE_METHODS.items():
                res = types.get(m) or []
                if not res or any(x is None for x in res):
                    why = status
                    if m == "soscope_reference_spot" and status.startswith("ran"):
                        why = "no spot-table `obsm['cell_type_abundance']`"
                    lines.append(f"| {r['name']} | {VARIANTS[v]} | {label}: {why} | – | – | – | – |")
                    continue
                per_fold = " / ".join(fmt(x[1]["mean"]["pearson"]) for x in res)
                lines.append(
                    f"| {r['name']} | {VARIANTS[v]} | {label} | {per_fold} | "
                    f"{fmt(type_mean(res, 'pearson'))} | {fmt(type_mean(res, 'spearman'))} | "
                    f"{fmt(type_mean(res, 'rmse'))} |"
                )
    lines += ["", "## Notes", "", *NOTES.format(gap=COSMX_GAP_PX, um=COSMX_UM_PER_PX).splitlines()]
    return "\n".join(lines) + "\n"


NOTES = """\
- Truth units as in `benchmarks/accuracy.py`: every transcript (2 µm bins), not only those in cells
  (MERFISH: ~39% of the transcripts lie inside the 498 outlines). soscope without a reference and the
  baselines reproduce accuracy.py's merfish_hex50 numbers. The types come from the cells: MERFISH — the z0
  cell outlines with the transcripts inside them (`load_merfish_mini`); CosMx — the `CellLabels` masks,
  each cell's counts being the transcripts carrying its cell id. Control probes (`Blank-*`, `NegPrb*`)
  are left out of the references and of the scored features.
- Reference (`reference_from_cells`): the cells of one half whose centre lies in no sub-spot of a spot of
  the other half; counts normalised to the median total, log1p, up to 15 PCs, k-means (10 starts, seed)
  with k in 3..8 by silhouette among the k whose smallest type has >= 5 cells. Cells without a transcript
  get no type. The other half's cells take the nearest centroid's type (in the same PCs): the scored
  half's cells never enter the reference, but their types are defined by it. Types are numbered by size
  per fold, so fold A's `type_0` is not fold B's: type scores are per fold, then averaged.
- Halves: MERFISH — spots west / east of the median spot centre (cells by their centre against the same
  line); CosMx — its two fields of view (~60 cells each: small references), laid side by side in one frame
  with a {gap}-pixel gap; {um} µm per pixel is an assumption (PROVENANCE.txt). The CosMx fields come from
  different parts of the section and their cells separate weakly (silhouettes ~0.1): the types one field
  defines may be absent from the other (then no type varies there and the fold has no score), which is why
  CosMx is also run with a reference from every cell (optimistic: the scored cells define the types and
  are in the reference).
- soscope without a reference runs once on every spot; with a reference it runs once per fold on every
  spot (the spot counts are the input a real experiment has), and only the held-out half of each run is
  scored.
- Type baselines use the reference's mean counts per cell of each type (over the genes shared with the
  spot table) and non-negative least squares (scipy `nnls`) per row: on each spot's counts (every
  sub-spot inherits its spot's fractions: the spot-level deconvolution), on the interpolation split's
  sub-spot counts, on soscope's sub-spot counts (enhanced without a reference: deconvolving after
  enhancing), and — an oracle that uses the truth — on the true sub-spot counts, whose score bounds what a
  sub-spot's expression alone says about its types.
- Few cells per sub-spot (MERFISH: the outlines cover ~14% of the field), so many held-out sub-spots hold
  no cell and are skipped, and most of those scored hold one cell (fractions 0 or 1).
- Wall times are on a shared 2-core machine: other processes may have slowed them (see load average)."""


def main() -> None:
    """Run the benchmark."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cases", nargs="+", choices=CASES, default=None, help="cases to run (default: all)")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: soscope's own)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--reference-smoothness",
        type=float,
        default=None,
        help="SoScope(reference_smoothness=) (default: its own)",
    )
    parser.add_argument(
        "--n-types",
        type=int,
        default=None,
        help="reference_from_cells(n_types=): clusters of the references (default: k by silhouette)",
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "reference.md")
    args = parser.parse_args()
    cases = args.cases or CASES
    args.load_at_start = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    args.code_state = code_state()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here downloads
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", message=".*Pandas4Warning.*")
    logging.getLogger("soscope").setLevel(logging.WARNING)
    import soscope  # noqa: F401

    args.reference_api = reference_available()
    log(f"cases: {', '.join(cases)}; reference API {'present' if args.reference_api else 'absent'}")
    outdir = args.out.parent
    outdir.mkdir(parents=True, exist_ok=True)
    cache: dict = {}
    results = [run_case(c, args, cache, outdir) for c in cases]
    text = report(results, args, time.perf_counter() - T0)
    args.out.write_text(text)
    print(text)
    log(f"wrote {args.out}")


T0 = time.perf_counter()

if __name__ == "__main__":
    main()
