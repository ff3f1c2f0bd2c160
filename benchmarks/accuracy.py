"""Honest accuracy: soscope on pseudo-spots built from real high-resolution data, beside naive baselines.

The field's protocol (iStar, Thor, SuperResolvedST, soScope; see shared/design/NOTES.md "How the field
scores"): sum the high-resolution units (cells, small bins) whose centre lies in a coarse footprint to make
pseudo-spots, enhance them, and score every sub-spot against the units whose centre lies in its polygon —
per feature Pearson, Spearman, RMSE of log1p values and SSIM of the maps — next to the baselines even split,
Gaussian interpolation of neighbouring spots and (with an image) per-feature regression on image features.

Cases (all read from disk; nothing is downloaded):

* ``synthetic``: ``soscope.datasets.synthetic(n_spots=1200, n_features=300, style="realistic")``, hex7: an
  H&E image rendered in stain space that is not a colouring by type (look-alike type pairs told apart only
  by nucleus size / chromatin texture, stain and illumination gradients), within-type expression states,
  per-spot depth 100-3,000 counts (issue 15, 8a).
* ``synthetic_painted``: the same call with ``style="painted"`` (the data of soscope <= 0.1, and of the
  ``synthetic`` case before issue 15: each cell's region painted with its type's colour), for continuity.
* ``merfish_hex50``: Vizgen MERFISH mouse-brain mini (500 x 450 µm) with its DAPI image. The truth is
  every transcript (binned in 2 µm bins, not only the 39% inside cell outlines); 27.5 µm circles on a
  50 µm hexagonal lattice (the field is too small for many Visium-size spots), hex7 sub-spots. The
  Visium-size lattice (100 µm / 55 µm) is run too when it leaves >= 40 interior spots.
* ``merfish_sq16``: the same transcripts and DAPI image in 16 µm square bins split grid:2 (8 µm sub-spots,
  Visium HD-like bins: the scale at which a cell's molecules spread past its nucleus).
* ``verafish_hex100``: VeraFISH mouse hippocampus (10,994 cells, 120 genes, no image); 1 coordinate unit
  = 0.0628 µm is an ASSUMPTION of the loader; 55 µm circles on a 100 µm hexagonal lattice, hex7.
* ``verafish_hex100_nuclei``: ``verafish_hex100`` with a nuclear (DAPI-like) image RENDERED from the cell
  centres (:func:`loaders.render_nuclei`: one 5-7 µm noisy ellipse per cell, blur, background noise, 1 µm/px,
  seed 0), so soscope's ``segmentation="auto"`` detects nuclei on it: a Visium-scale case with nuclei
  whose positions are those of the cells (not a real stain).
* ``verafish_sq50``: the same cells in 50 µm square bins, split grid:2 (25 µm sub-spots).
* ``cosmx_sq16``: CosMx lung mini (two fields side by side, :func:`loaders.load_cosmx`; 0.18 µm/px assumed),
  every transcript in 2 µm bins, 16 µm squares split 2 x 2, with the IF composite (channels named red /
  membrane / nuclei after PROVENANCE.txt, so the nuclei are detected on the blue one).

Spots whose sub-spots reach beyond the data's bounding box are dropped (the MERFISH field is a crop of a
larger section: counts there would be zero for an artificial reason that an image extent would reveal).
soscope runs with its defaults (``SoScope(sdata).train()``); where there is an image also with
``use_image=False`` (ablation). Features scored: synthetic — the 90 ``informative`` features (the others carry
no spatial signal by construction); real data — the 100 features with most counts in the pseudo-spots
(MERFISH ``Blank-*`` control probes excluded).

Biology (every case): tissue domains and marker contrast at spot vs sub-spot resolution against truth
domains. The synthetic case has real ones (``obs["cell_type"]`` of the truth table: each sub-spot's dominant
simulated cell type); the real cases have no annotation, so truth domains are defined from the truth itself
by :func:`soscope.evaluate.cluster_truth` (normalise, log1p, PCA, seeded k-means; k = the best silhouette in
3..8) on the scored features. :func:`soscope.evaluate.domains` clusters the spots (each sub-spot takes its
spot's cluster) and soscope's sub-spots (k-means with k = the number of truth domains, and leiden at
resolution 1) and scores both by ARI / NMI; :func:`soscope.evaluate.markers` gives the log2 fold change and
AUROC of each truth domain's 3 top true markers at spot, sub-spot and true resolution.

Writes ``benchmarks/results/accuracy.md``, per-feature CSVs (and per-case marker CSVs) and PNG figures next
to it.

    python benchmarks/accuracy.py            # everything (soscope defaults)
    python benchmarks/accuracy.py --quick    # smaller synthetic, fewer cases, epochs capped at 40
    python benchmarks/accuracy.py --cases synthetic merfish_hex50 --epochs 60
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loaders import (  # noqa: E402  (the benchmarks folder is not a package)
    cell_bounds,
    crop_interior,
    load_cosmx,
    merfish_bins,
    render_nuclei,
    transcript_bins,
)

CASES = (
    "synthetic",
    "synthetic_painted",
    "merfish_hex50",
    "merfish_sq16",
    "merfish_hex100",
    "verafish_hex100",
    "verafish_hex100_nuclei",
    "verafish_sq50",
    "cosmx_sq16",
)
QUICK_CASES = ("synthetic", "merfish_hex50", "verafish_hex100")
METRICS = ("pearson", "spearman", "rmse", "ssim")
BASELINE_LABELS = {
    "even_split": "even split",
    "gaussian_interpolation": "Gaussian interpolation",
    "interpolation_split": "interpolation split of the counts",
    "image_regression": "image regression",
    "image_ridge_split": "image-ridge split of the counts",
}
#: methods that use the truth (ceilings to read beside the baselines, never compared as "the best baseline")
ORACLE_LABELS = {
    "count_oracle": "*oracle (uses the truth's cell counts)*: counts split by true cells",
    "expected_counts_oracle": "*oracle (uses the truth's expected counts; simulated data only)*: "
    "expected counts given the spot and the true means",
}
#: where each case's true cells per sub-spot (for the count oracle) come from
ORACLE_CELLS = {
    "synthetic": "the simulated cells (truth `obs['n_cells']`)",
    "merfish": "centroids of the 498 cell outlines (the truth itself is every transcript)",
    "verafish": "the cells (table rows) whose centre lies in each sub-spot",
    "cosmx": "the centroids of the CellLabels cell masks (the truth itself is every transcript)",
}
#: margin of the "never hurts" check: soscope with the image against the best other method, per metric
MARGIN = 0.005
MIN_SPOTS = 40
#: true markers scored per truth domain
MARKERS_PER_DOMAIN = 3
#: clusterings of spots and sub-spots scored against the truth domains
DOMAIN_METHODS = ("kmeans", "leiden")

NOTES = """\
- Features scored: synthetic — the `informative` features (the rest have no spatial signal by
  construction); real data — the 100 with most counts in the pseudo-spots (MERFISH `Blank-*` controls
  excluded). soscope is trained on every feature of the table.
- Count oracle (uses the truth; not a baseline, never one of "the best other method"): each spot's observed
  counts split among its sub-spots in proportion to the true number of cells whose centre lies in each
  (inside the footprint, as the other splits; a spot with no cell is split evenly) — what knowing exactly
  where the cells are gives a split of the counts. Cells: synthetic — the simulated cells; VeraFISH — the
  cells themselves (also on verafish_hex100_nuclei, whose image is rendered from the same cells); CosMx —
  the centroids of the CellLabels masks (the truth is every transcript); MERFISH — the centroids of the
  498 cell outlines, while the truth is every transcript (61% of them outside the outlines), so there it
  is an oracle of cell positions, not of the transcripts.
- Expected-counts oracle (simulated data only; uses the truth): each sub-spot's expected counts given its
  spot's counts and the true means it was drawn from (`soscope.evaluate.expected_counts_oracle`): the
  spot's observed counts split in proportion to the sub-spots' true footprint means, plus each polygon's
  true mean outside the footprint, which no spot observes (circles of 55 µm every 100 µm cover about a
  quarter of their hex7 polygons). It knows every sub-spot's cell types, states and
  numbers: it is the posterior mean for Poisson counts, the best prediction from the spot counts (it
  maximises the expected Pearson correlation), and close to it for the synthetic data's mildly
  over-dispersed counts — the ceiling of what any method can reach there.
- MERFISH: the truth is every transcript (2 µm bins), not cells: only ~39% of transcripts fall inside the
  498 cell outlines. The field is 500 × 450 µm, so the main lattice is 27.5 µm circles every 50 µm; the
  Visium-size lattice is run only when it leaves ≥ {min_spots} interior spots.
- VeraFISH: 1 coordinate unit = 0.0628 µm is an assumption (median cell spacing 10 µm); distances in µm
  are estimates. No image: soscope runs without one and there is no image-regression baseline.
- Baselines: even split (parent density × sub-spot area), Gaussian interpolation of neighbouring spot
  densities (σ = 0.45 × spacing), per-feature ridge regression of spot density on the sub-spots' image
  features (the same morphology features soscope uses), and two closed-form splits of each spot's observed
  counts: in proportion to the interpolated densities (interpolation split: soscope's offsets without an
  image) and to the image ridge's predicted densities (image-ridge split; ridge penalty by leave-one-out).
- Image weight: soscope's offsets are log(interpolated density) + β × (log of the image ridge's sub-spot
  density − log of the same interpolation of the ridge's spot predictions); β and the ridge penalty α are
  chosen per modality by 5-fold cross-validation over spots (held-out Poisson deviance relative to the
  interpolation alone: "CV score", < 1 when the image helps). β = 0 makes soscope the no-image model.
  This is soscope's default (`image_evidence="weighted"`); `--offsets legacy` runs soscope 0.1's offsets
  (the image ridge alone, α = 1e-4, floored: no image weight, none chosen).
- Nucleus weight: with nuclei (here detected on the image by `segmentation="auto"`), each count modality's
  offsets also get γ × (log(n + a) − log of the interpolation of the spots' nucleus densities + a), n the
  sub-spot's nuclei per area unit; a (a multiple of the mean nucleus density) and γ are chosen by the same
  cross-validation after β ("nuclei γ, a, CV score" in the cases table; CV score relative to γ = 0, γ = 0
  unless it helps by two standard errors). "Nuclei … in the sub-spots" counts what soscope found beside the
  true cells (the count oracle's) in the same sub-spots.
- Tissue domains: the synthetic truth domains are `obs["cell_type"]` of the truth table (each sub-spot's
  dominant simulated cell type). The real cases have no annotation: their truth domains are
  `soscope.evaluate.cluster_truth` of the true sub-spot profiles over the scored features (normalise to
  1e4, log1p, 15 PCs, k-means with seed 0; k = the highest silhouette for k in 3..8; sub-spots without
  counts get no domain and are not scored). On the synthetic case the same rule is checked against the
  real cell types ("rule vs truth" ARI). Spots and soscope's sub-spots are clustered the same way over
  the same features (k-means with k = the number of truth domains; leiden, resolution 1, 15 neighbours);
  a spot's cluster is given to each of its sub-spots, so both are scored by ARI / NMI on the same truth
  sub-spots.
- Marker contrast: for each truth domain, the {markers} features with the highest true log2 fold change
  (in the domain over the rest, on the truth, among the scored features); log2 fold change (as scanpy's
  `rank_genes_groups`) and AUROC of the domain's sub-spots against the rest, with each sub-spot valued at
  its spot's value ("spot"), soscope's value ("sub-spot") or its true value ("truth", the ceiling). Means
  over the markers; per-marker numbers in `accuracy_<case>_markers.csv`.
- Wall times are on a shared 2-core machine: other processes may have slowed them (see load average);
  CPU time (all threads of this process) is less sensitive to that."""

T_START = time.perf_counter()


def log(msg: str) -> None:
    """Print ``msg`` with the seconds since start."""
    print(f"[{time.perf_counter() - T_START:7.1f} s] {msg}", flush=True)


# ------------------------------------------------------------------------------------------ data building
def build_case(name: str, args, cache: dict):
    """Return ``(sdata, features, description)`` for a case, or ``(None, None, reason)`` when skipped."""
    from soscope.datasets import load_merfish_mini, load_verafish, synthetic
    from soscope.evaluate import pseudo_spots

    if name in ("synthetic", "synthetic_painted"):
        n_spots, n_feat = (400, 100) if args.quick else (1200, 300)
        style = "realistic" if name == "synthetic" else "painted"
        s = synthetic(n_spots=n_spots, n_features=n_feat, seed=args.seed, style=style)
        feats = list(s.tables["truth"].var_names[s.tables["truth"].var["informative"].to_numpy(bool)])
        what = (
            "H&E rendered in stain space, look-alike types, stain gradients, expression states, "
            "depth 100-3,000"
            if style == "realistic"
            else "H&E-like image painted by cell type"
        )
        return s, feats, f"synthetic(n_spots={n_spots}, n_features={n_feat}, style={style!r}): {what}; hex7"
    if name.startswith("merfish"):
        if "merfish" not in cache:
            cache["merfish"] = merfish_bins(load_merfish_mini(), bin_um=2.0)
        bins, bounds = cache["merfish"]
        # obs n_cells: the cell outlines' centroids (the count oracle's cells)
        if name == "merfish_sq16":
            p = pseudo_spots(
                bins, table="table", spacing=16.0, lattice="square", subspots="grid:2", image="dapi",
                cells="cells",
            )  # fmt: skip
            desc = "MERFISH mini, all transcripts in 2 µm bins; 16 µm square bins, grid:2; DAPI image"
        else:
            spacing, diam = (50.0, 27.5) if name == "merfish_hex50" else (100.0, 55.0)
            p = pseudo_spots(
                bins, table="table", spacing=spacing, spot_diameter=diam, lattice="hex", image="dapi",
                cells="cells",
            )  # fmt: skip
            desc = (
                f"MERFISH mini, all transcripts in 2 µm bins; {diam:g} µm circles on a {spacing:g} µm "
                "hex lattice, hex7; DAPI image"
            )
        p = crop_interior(p, bounds)
        if p.tables["table"].n_obs < MIN_SPOTS:
            return (
                None,
                None,
                f"{desc}: only {p.tables['table'].n_obs} interior spots (< {MIN_SPOTS}), skipped",
            )
        return p, top_features(p), desc
    if name.startswith("verafish"):
        if "verafish" not in cache:
            v = load_verafish()
            cache["verafish"] = (v, cell_bounds(v))
        v, bounds = cache["verafish"]
        if name == "verafish_hex100":
            p = pseudo_spots(v, table="table", spacing=100.0, spot_diameter=55.0, lattice="hex")
            desc = "VeraFISH cells (1 unit = 0.0628 µm, assumed); 55 µm circles on a 100 µm hex lattice, hex7"
        elif name == "verafish_hex100_nuclei":
            import shapely
            from spatialdata import SpatialData

            xy = shapely.get_coordinates(shapely.centroid(np.asarray(v.shapes["cells"].geometry.values)))
            image, what = render_nuclei(xy, um_per_px=1.0, seed=args.seed)
            vi = SpatialData(images={"dapi": image}, shapes=dict(v.shapes), tables=dict(v.tables))
            p = pseudo_spots(
                vi, table="table", spacing=100.0, spot_diameter=55.0, lattice="hex", image="dapi"
            )
            desc = (
                "VeraFISH cells (1 unit = 0.0628 µm, assumed); 55 µm circles on a 100 µm hex lattice, hex7; "
                f"nuclear image RENDERED from the {what['nuclei']:,} cell centres "
                f"({what['um_per_px']:g} µm/px, "
                f"{what['shape'][1]} x {what['shape'][0]} px, nucleus radius {what['radius_um'][0]:g}-"
                f"{what['radius_um'][1]:g} µm, seed {what['seed']})"
            )
        else:
            p = pseudo_spots(v, table="table", spacing=50.0, lattice="square", subspots="grid:2")
            desc = "VeraFISH cells (1 unit = 0.0628 µm, assumed); 50 µm square bins, grid:2"
        p = crop_interior(p, bounds)
        return p, top_features(p), desc
    if name == "cosmx_sq16":
        from soscope.datasets import shared_data_dir

        if "cosmx" not in cache:
            sdata, _, rects = load_cosmx(shared_data_dir(), channels=("red", "membrane", "nuclei"))
            cache["cosmx"] = (transcript_bins(sdata, 2.0, image="if", blank_prefix="NegPrb")[0], rects)
        units, rects = cache["cosmx"]
        p = pseudo_spots(
            units, table="table", spacing=16.0, lattice="square", subspots="grid:2", image="if", cells="cells"
        )
        p = crop_interior(p, rects)
        desc = (
            "CosMx lung mini (2 fields side by side; 0.18 µm/px assumed), all transcripts in 2 µm bins; "
            "16 µm squares, grid:2; IF composite (nuclei channel named)"
        )
        return p, top_features(p), desc
    raise ValueError(name)


def top_features(p, n: int = 100) -> list[str]:
    """Return the ``n`` features with most counts in the spots (``Blank-*`` controls excluded)."""
    tab = p.tables["table"]
    tot = np.asarray(tab.X.sum(axis=0)).ravel()
    ok = ~tab.var["blank"].to_numpy(bool) if "blank" in tab.var else np.ones(tab.n_vars, bool)
    order = [i for i in np.argsort(-tot, kind="stable") if ok[i] and tot[i] > 0]
    return [str(tab.var_names[i]) for i in order[:n]]


def marker_features(p, feats: list[str], n: int = 3) -> list[str]:
    """Features to draw: among the 30 most abundant scored ones, those whose truth varies most (CV)."""
    tru = p.tables["truth"]
    idx = tru.var_names.get_indexer(feats)
    x = tru.X[:, idx]
    x = x.toarray() if hasattr(x, "toarray") else np.asarray(x)
    x = x.astype(float)
    tot = x.sum(axis=0)
    top = np.argsort(-tot, kind="stable")[:30]
    cv = x[:, top].std(axis=0) / np.maximum(x[:, top].mean(axis=0), 1e-12)
    return [feats[i] for i in top[np.argsort(-cv, kind="stable")[:n]]]


# ------------------------------------------------------------------------------------------------ running
def run_soscope(sdata, *, use_image: bool, key_added: str, args, scheme: str) -> tuple[float, int]:
    """Set up, train and enhance; return (wall time, epochs run)."""
    import soscope

    t0 = time.perf_counter()
    kw = {} if use_image else {"image": False, "use_image": False}
    if args.offsets is not None:
        kw["image_evidence"] = args.offsets
    model = soscope.SoScope(sdata, table="table", subspots=scheme, progress=False, seed=args.seed, **kw)
    hist = model.train(epochs=args.epochs)
    model.enhance(sdata, key_added=key_added)
    return time.perf_counter() - t0, len(hist.epoch)


def image_evidence(uns: dict, has_image: bool) -> str:
    """Describe the image weights soscope chose (``uns["soscope"]["image_evidence"]``), per modality."""
    ev = uns.get("image_evidence") or {}
    if has_image and not ev:
        return "legacy: image ridge alone (α = 1e-4), no weight"
    parts = []
    for name, e in ev.items():
        scores = np.asarray(e["cv_scores"], dtype=float)
        best = np.nanmin(scores) if np.isfinite(scores).any() else float("nan")
        text = f"β = {float(e['beta']):g}, α = {float(e['alpha']):g}, CV score {fmt(best)}"
        nuc = np.asarray(e.get("nuclei_cv_scores", np.nan), dtype=float)
        if np.isfinite(nuc).any():  # the nucleus term (soscope with nuclei in the prior)
            dens = float(e["nuclei_density"])
            text += (
                f"; nuclei γ = {float(e['gamma']):g}, a = {float(e['nuclei_offset']) / dens:g} × mean "
                f"nucleus density, CV score {fmt(np.nanmin(nuc))}"
            )
        parts.append((f"{name}: " if len(ev) > 1 else "") + text)
    return "; ".join(parts) if parts else "no image"


def rename_method(df, old: str, new: str):
    """Rename the ``<metric>_<old>`` columns to ``<metric>_<new>``."""
    return df.rename(columns={f"{m}_{old}": f"{m}_{new}" for m in METRICS})


def run_case(name: str, args, cache: dict, outdir: Path) -> dict:
    """Build, enhance, score and plot one case; return its numbers."""
    import soscope
    from soscope.evaluate import score, summary

    t_case, cpu_case = time.perf_counter(), time.process_time()
    log(f"{name}: building pseudo-spots")
    t0 = time.perf_counter()
    p, feats, desc = build_case(name, args, cache)
    t_build = time.perf_counter() - t0
    if p is None:
        log(f"{name}: {desc}")
        return {"name": name, "skipped": desc}
    tab, tru = p.tables["table"], p.tables["truth"]
    scheme = str(tru.uns["subspots"]["scheme"])
    has_image = len(p.images) > 0
    info = {
        "name": name,
        "desc": desc,
        "spots": tab.n_obs,
        "subspots": tru.n_obs,
        "scheme": scheme,
        "features": len(feats),
        "n_vars": tab.n_vars,
        "units_per_spot": float(np.median(tab.obs["n_cells"])) if "n_cells" in tab.obs else float("nan"),
        "counts_per_spot": float(np.median(np.asarray(tab.X.sum(axis=1)).ravel())),
        "t_build": t_build,
    }
    log(
        f"{name}: {info['spots']} spots, {info['subspots']} sub-spots ({scheme}), {tab.n_vars} features "
        f"({len(feats)} scored), median {info['counts_per_spot']:.0f} counts/spot; built in {t_build:.1f} s"
    )

    t_fit, ep = run_soscope(p, use_image=True, key_added="soscope", args=args, scheme=scheme)
    info.update(t_soscope=t_fit, epochs=ep)
    info["evidence"] = image_evidence(p.tables["table_soscope"].uns["soscope"], has_image)
    seg = p.tables["table_soscope"].uns["soscope"].get("segmentation") or {}
    if has_image and seg.get("source", "none") != "none":
        # detection recall: the nuclei soscope counted beside the true cells (the count oracle's)
        n_sub = int(np.nansum(np.asarray(tru.obs["n_cells"], dtype=float))) if "n_cells" in tru.obs else None
        spots_rec = seg.get("spots") or {}
        n_in = sum(int(r.get("n_nuclei_in_subspots", 0)) for r in spots_rec.values())
        info["evidence"] += f"; nuclei: {seg['source']}, {n_in:,} in the sub-spots" + (
            f" (true cells in the sub-spots: {n_sub:,})" if n_sub is not None else ""
        )
    log(
        f"{name}: soscope (defaults{', with image' if has_image else ', no image'}): "
        f"{ep} epochs, {t_fit:.1f} s"
    )
    t0 = time.perf_counter()
    per_feature, _ = score(p, key_added="soscope", features=feats, baselines=True, ssim=True)
    info["t_score"] = time.perf_counter() - t0
    log(f"{name}: scored soscope + baselines in {info['t_score']:.1f} s")
    if has_image and not args.no_ablation:
        t_abl, ep_abl = run_soscope(p, use_image=False, key_added="soscope_noimg", args=args, scheme=scheme)
        info.update(t_ablation=t_abl, epochs_ablation=ep_abl)
        log(f"{name}: soscope use_image=False: {ep_abl} epochs, {t_abl:.1f} s")
        abl, _ = score(p, key_added="soscope_noimg", features=feats, baselines=False, ssim=True)
        abl = rename_method(abl[[f"{m}_soscope" for m in METRICS]], "soscope", "soscope_no_image")
        per_feature = per_feature.join(abl)
    t0 = time.perf_counter()
    info["biology"] = biology(p, name, feats, args, outdir)
    info["t_biology"] = time.perf_counter() - t0
    bio, km = info["biology"], info["biology"]["domains"]["kmeans"]
    log(
        f"{name}: domains ({bio['n_domains']} truth domains) k-means ARI spot {km.loc['spot', 'ari']:.3f}, "
        f"sub-spot {km.loc['subspot', 'ari']:.3f}; marker AUROC spot {bio['markers']['auroc']['spot']:.3f}, "
        f"sub-spot {bio['markers']['auroc']['subspot']:.3f}; {info['t_biology']:.1f} s"
    )
    summ = summary(per_feature, reference="soscope")
    if "pearson_soscope_no_image" in per_feature:
        summ["beats_no_image"] = summary(per_feature, reference="soscope_no_image")["beats"]
    info["summary"] = summ
    per_feature.to_csv(outdir / f"accuracy_{name}.csv", float_format="%.5g")

    # figures
    t0 = time.perf_counter()
    markers = marker_features(p, feats)
    info["markers"] = markers
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fig = soscope.pl.enhanced(
            p, markers, key_added="soscope", table="table", truth="truth", panel_size=3.6
        )
        fig.suptitle(f"{name}: spots | soscope | truth (per unit area)", y=1.03)
        fig.savefig(outdir / f"accuracy_{name}_maps.png", dpi=80, bbox_inches="tight")
        if name == "merfish_hex50":  # the README's figure: a real case with its real DAPI image
            fig.savefig(
                Path(__file__).resolve().parents[1] / "docs" / "_static" / "demo.png",
                dpi=80,
                bbox_inches="tight",
            )
        from matplotlib.figure import Figure

        fig = Figure(figsize=(13, 4.2))
        axes = fig.subplots(1, 3)
        for a, metric in zip(axes, ("pearson", "ssim", "rmse"), strict=True):
            soscope.pl.accuracy(per_feature, metric=metric, ax=a)
            a.set_title(f"{metric} per feature ({len(feats)} features)")
            for lab in a.get_xticklabels():
                lab.set_rotation(25)
                lab.set_ha("right")
        fig.suptitle(f"{name}: {desc}", fontsize=9)
        fig.tight_layout()
        fig.savefig(outdir / f"accuracy_{name}_scores.png", dpi=80)
    info["t_plots"] = time.perf_counter() - t0
    info["t_total"] = time.perf_counter() - t_case
    info["cpu_total"] = time.process_time() - cpu_case
    means = summ["mean"]
    log(
        f"{name}: mean Pearson "
        + ", ".join(f"{m} {v['pearson']:.3f}" for m, v in means.items())
        + f"; case total {info['t_total']:.1f} s"
    )
    return info


def biology(p, name: str, feats: list[str], args, outdir: Path) -> dict:
    """Tissue domains (ARI / NMI) and marker contrast at spot vs sub-spot resolution against truth domains.

    The synthetic truth has real domains (``obs["cell_type"]``); the real cases get theirs from the truth
    profiles (:func:`soscope.evaluate.cluster_truth`), see the module's docstring.
    """
    import pandas as pd
    from sklearn.metrics import adjusted_rand_score

    from soscope.evaluate import cluster_truth, domains, markers

    tru = p.tables["truth"]
    rule = cluster_truth(p, features=feats, seed=args.seed)
    out: dict = {"silhouette": rule.attrs["silhouette"]}
    if name.startswith("synthetic"):
        labels = tru.obs["cell_type"].astype(str)
        out["source"] = "`obs['cell_type']`"
        known = rule.notna().to_numpy()
        out["rule_ari"] = float(adjusted_rand_score(labels.to_numpy()[known], rule.to_numpy()[known]))
    else:
        labels = rule
        out["source"] = f"cluster_truth (k = {rule.attrs['n_domains']} by silhouette)"
    out["n_domains"] = int(pd.Series(labels).dropna().nunique())
    out["n_unlabelled"] = int(pd.Series(labels).isna().sum())
    out["domains"] = {}
    for method in DOMAIN_METHODS:
        scores, _ = domains(
            p, truth="truth", truth_domains=labels, method=method, features=feats, seed=args.seed
        )
        out["domains"][method] = scores
        if "table_soscope_noimg" in p.tables:
            abl, _ = domains(
                p,
                truth="truth",
                truth_domains=labels,
                method=method,
                features=feats,
                seed=args.seed,
                key_added="soscope_noimg",
            )
            out["domains"][method].loc["subspot_no_image"] = abl.loc["subspot"]
    mk = markers(
        p, None, truth="truth", truth_domains=labels, n_per_domain=MARKERS_PER_DOMAIN, features=feats
    )
    mk.to_csv(outdir / f"accuracy_{name}_markers.csv", index=False, float_format="%.5g")
    wide = mk.pivot_table(index=["marker", "domain"], columns="resolution", values=["log2fc", "auroc"])
    out["markers"] = {
        "n": len(wide),
        "log2fc": wide["log2fc"].mean().to_dict(),
        "auroc": wide["auroc"].mean().to_dict(),
        "sharper": float((wide["auroc"]["subspot"] > wide["auroc"]["spot"]).mean()),
        "names": list(dict.fromkeys(mk["marker"])),
    }
    return out


# ------------------------------------------------------------------------------------------------- report
def fmt(v: float, nd: int = 3) -> str:
    """Format a number with ``nd`` decimals (a dash when missing)."""
    return "–" if v is None or not np.isfinite(v) else f"{v:.{nd}f}"


def code_state() -> str:
    """Describe the code that ran: git commit, uncommitted changes, and a hash of the model's sources."""
    import hashlib
    import subprocess

    root = Path(__file__).resolve().parents[1]
    src = root / "src" / "soscope"
    h = hashlib.sha256()
    for sub in ("model", "module", "train"):
        for f in sorted((src / sub).glob("*.py")):
            h.update(f.read_bytes())
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--", "src"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", ""
    state = f"commit {commit or 'unknown'}" + (" with uncommitted changes under src/" if dirty else "")
    return f"{state}; model sources (model/, module/, train/) sha256 {h.hexdigest()[:12]}"


def report(results: list[dict], args, t_all: float) -> str:
    """Write the Markdown report."""
    import torch

    import soscope

    ran = [r for r in results if "skipped" not in r]
    load_now = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    lines = [
        "# Accuracy on pseudo-spots: soscope vs naive baselines",
        "",
        f"Generated by `python benchmarks/accuracy.py{' ' + ' '.join(sys.argv[1:]) if sys.argv[1:] else ''}` "
        f"(soscope {soscope.__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"seed {args.seed}, image_evidence {args.offsets or 'default'}, "
        f"epochs {'soscope default (early stopping)' if args.epochs is None else args.epochs}). "
        f"Total wall time {t_all / 60:.1f} min, CPU time of this process {time.process_time() / 60:.1f} min "
        f"(all threads); load average at start {args.load_at_start}, at the end {load_now}. "
        f"Code: {args.code_state}.",
        "",
        "Protocol: pseudo-spots sum the high-resolution units (cells or 2 µm transcript bins) whose centre "
        "lies in each footprint; each sub-spot is scored against the units whose centre lies in its polygon. "
        "Per-feature Pearson, Spearman, RMSE (log1p; lower is better) and SSIM (rasterised maps), averaged "
        "over the scored features. Spots whose sub-spots reach beyond the data's bounding box are dropped.",
        "",
        "## Cases",
        "",
        "| case | pseudo-spots | spots | sub-spots | features scored / total | median counts per spot "
        "| soscope epochs | image weight (CV) | wall time: build / soscope / no-image / score / domains "
        "and markers / case (s) "
        "| CPU time, case (s) |",
        "|---|---|---:|---:|---:|---:|---:|---|---|---:|",
    ]
    for r in results:
        if "skipped" in r:
            lines.append(f"| {r['name']} | {r['skipped']} | – | – | – | – | – | – | – | – |")
            continue
        ep = f"{r['epochs']}" + (f" / {r['epochs_ablation']}" if "epochs_ablation" in r else "")
        times = " / ".join(
            fmt(r.get(k, float("nan")), 0)
            for k in ("t_build", "t_soscope", "t_ablation", "t_score", "t_biology", "t_total")
        )
        lines.append(
            f"| {r['name']} | {r['desc']} | {r['spots']:,} | {r['subspots']:,} ({r['scheme']}) | "
            f"{r['features']} / {r['n_vars']} | {r['counts_per_spot']:,.0f} | {ep} | {r['evidence']} | "
            f"{times} | "
            f"{r['cpu_total']:.0f} |"
        )
    lines += [
        "",
        "## Scores (mean over the scored features)",
        "",
        "The last column is the share of features where soscope (defaults, with the image when there is one) "
        "scores better than that method, per metric (Pearson / Spearman / RMSE / SSIM). The last rows of "
        "each case are ORACLES, not baselines: the observed counts split by the true number of cells in "
        "each sub-spot (it uses the truth; see the notes for where the cells come from) — a ceiling for "
        "splitting by cell positions — and, on simulated data, the expected counts given the spot and the "
        "true means — the best prediction from the spot counts —, shown so the reader sees how far from "
        "them every method is.",
        "",
        "| case | method | Pearson | Spearman | RMSE ↓ | SSIM | soscope better on (P / S / RMSE / SSIM) |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    order = ["soscope", "soscope_no_image", *BASELINE_LABELS, *ORACLE_LABELS]
    for r in ran:
        s = r["summary"]
        for m in order:
            if m not in s["mean"]:
                if m == "count_oracle":  # the expected-counts oracle exists for simulated data only
                    lines.append(
                        f"| {r['name']} | {ORACLE_LABELS[m]}: unavailable (no cell counts) "
                        "| – | – | – | – | |"
                    )
                continue
            v = s["mean"][m]
            beats = s["beats"].get(m)
            b = " / ".join(f"{100 * beats.get(k, float('nan')):.0f}%" for k in METRICS) if beats else ""
            label = {"soscope": "**soscope**", "soscope_no_image": "soscope, use_image=False"}.get(
                m, BASELINE_LABELS.get(m, ORACLE_LABELS.get(m, m))
            )
            lines.append(
                f"| {r['name']} | {label} | {fmt(v.get('pearson'))} | {fmt(v.get('spearman'))} | "
                f"{fmt(v.get('rmse'))} | {fmt(v.get('ssim'))} | {b} |"
            )
    lines += [
        "",
        f"## Never hurts? soscope with the image against the best other method (margin {MARGIN})",
        "",
        "Per metric, the best of every other method in the table (baselines and soscope without the image; "
        f"not the count oracle, which uses the truth) and whether soscope with the image is within {MARGIN} "
        "of it (RMSE: lower is better).",
        "",
        "| case | Pearson | Spearman | RMSE ↓ | SSIM |",
        "|---|---|---|---|---|",
    ]
    for r in ran:
        if "soscope_no_image" not in r["summary"]["mean"]:
            continue
        cells = []
        for k in METRICS:
            mine = r["summary"]["mean"]["soscope"].get(k, float("nan"))
            others = {
                m: v.get(k, float("nan"))
                for m, v in r["summary"]["mean"].items()
                if m != "soscope" and m not in ORACLE_LABELS and np.isfinite(v.get(k, float("nan")))
            }
            if not others:
                cells.append("–")
                continue
            best_m = (min if k == "rmse" else max)(others, key=others.get)
            gap = (others[best_m] - mine) if k == "rmse" else (mine - others[best_m])
            ok = "✓" if gap >= -MARGIN else "✗"
            cells.append(f"{ok} {fmt(mine)} vs {fmt(others[best_m])} ({BASELINE_LABELS.get(best_m, best_m)})")
        lines.append(f"| {r['name']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Tissue domains: ARI / NMI against the truth domains",
        "",
        "Spots (each sub-spot takes its spot's cluster) and soscope's sub-spots clustered the same way and "
        "scored on the same truth sub-spots. Truth domains: the synthetic case's simulated cell types; for "
        "the real cases, clusters of the true sub-spot profiles (`soscope.evaluate.cluster_truth`, see the "
        "notes). k-means uses k = the number of truth domains; leiden resolution 1 finds its own number "
        '(clusters: spot / sub-spot). "no image": soscope with `use_image=False`.',
        "",
        "| case | truth domains | clustering | ARI spot | ARI sub-spot | ARI sub-spot, no image | NMI spot "
        "| NMI sub-spot | clusters | sub-spots scored |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in ran:
        b = r["biology"]
        src = f"{b['source']}: {b['n_domains']} domains"
        if "rule_ari" in b:
            src += f" (rule vs truth ARI {b['rule_ari']:.3f})"
        for method, sc in b["domains"].items():
            no_img = sc.loc["subspot_no_image", "ari"] if "subspot_no_image" in sc.index else float("nan")
            lines.append(
                f"| {r['name']} | {src} | {method} | {fmt(sc.loc['spot', 'ari'])} | "
                f"{fmt(sc.loc['subspot', 'ari'])} | {fmt(no_img)} | {fmt(sc.loc['spot', 'nmi'])} | "
                f"{fmt(sc.loc['subspot', 'nmi'])} | {int(sc.loc['spot', 'n_clusters'])} / "
                f"{int(sc.loc['subspot', 'n_clusters'])} | {int(sc.loc['subspot', 'n_scored']):,} |"
            )
    lines += [
        "",
        "## Marker contrast: the truth domains' top true markers at spot, sub-spot and true resolution",
        "",
        f"Each truth domain's {MARKERS_PER_DOMAIN} features with the highest true log2 fold change; mean "
        "log2 fold change and AUROC (domain vs rest) over them. The last column is the share of markers "
        "whose AUROC is higher with soscope's sub-spots than with the spot values.",
        "",
        "| case | markers | log2FC spot | log2FC sub-spot | log2FC truth | AUROC spot | AUROC sub-spot "
        "| AUROC truth | sub-spot AUROC > spot |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in ran:
        m = r["biology"]["markers"]
        lfc, auc = m["log2fc"], m["auroc"]
        lines.append(
            f"| {r['name']} | {m['n']} | {fmt(lfc['spot'])} | {fmt(lfc['subspot'])} | "
            f"{fmt(lfc['truth'])} | {fmt(auc['spot'])} | {fmt(auc['subspot'])} | {fmt(auc['truth'])} | "
            f"{100 * m['sharper']:.0f}% |"
        )
    lines += ["", "## Verdict (mean Pearson; other metrics where soscope is worse on average)", ""]
    for r in ran:
        s = r["summary"]
        ps = s["mean"]["soscope"]["pearson"]
        parts = []
        for m in BASELINE_LABELS:
            if m in s["mean"]:
                pb = s["mean"][m]["pearson"]
                word = "beats" if ps > pb else "does not beat"
                worse = [
                    k
                    for k in METRICS[1:]
                    if k in s["mean"][m]
                    and np.isfinite(s["mean"][m][k])
                    and (
                        s["mean"]["soscope"][k] > s["mean"][m][k]
                        if k == "rmse"
                        else s["mean"]["soscope"][k] < s["mean"][m][k]
                    )
                ]
                parts.append(
                    f"{word} {BASELINE_LABELS[m]} ({ps:.3f} vs {pb:.3f}; better on "
                    f"{100 * s['beats'][m]['pearson']:.0f}% of features"
                    + (f"; but worse on mean {', '.join(worse)}" if worse else "")
                    + ")"
                )
        line = f"- **{r['name']}**: soscope " + "; ".join(parts) + "."
        if "count_oracle" in s["mean"]:
            po = s["mean"]["count_oracle"]["pearson"]
            line += f" The count oracle (uses the truth's cells) scores {po:.3f}."
        if "beats_no_image" in s:
            pn = s["mean"]["soscope_no_image"]["pearson"]
            bn = s["beats_no_image"]
            line += (
                f" Without the image soscope scores {pn:.3f} (better than Gaussian interpolation on "
                f"{100 * bn['gaussian_interpolation']['pearson']:.0f}% of features)."
            )
        lines.append(line)
    lines += [
        "",
        "## Notes",
        "",
        *NOTES.format(min_spots=MIN_SPOTS, markers=MARKERS_PER_DOMAIN).splitlines(),
        "",
        "## Figures",
        "",
    ]
    for r in ran:
        lines.append(
            f"- `{r['name']}`: maps of {', '.join(r['markers'])} — "
            f"[accuracy_{r['name']}_maps.png](accuracy_{r['name']}_maps.png); "
            f"per-feature score distributions — "
            f"[accuracy_{r['name']}_scores.png](accuracy_{r['name']}_scores.png); "
            f"per-feature table [accuracy_{r['name']}.csv](accuracy_{r['name']}.csv); "
            f"markers [accuracy_{r['name']}_markers.csv](accuracy_{r['name']}_markers.csv)"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    """Run the benchmark."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="smaller synthetic, 3 cases, epochs capped at 40"
    )
    parser.add_argument("--cases", nargs="+", choices=CASES, default=None, help="cases to run (default: all)")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: soscope's own)")
    parser.add_argument("--no-ablation", action="store_true", help="skip the use_image=False runs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--offsets",
        choices=("weighted", "legacy"),
        default=None,
        help="soscope's image_evidence= (default: soscope's own): the spatial prior plus the CV-weighted "
        "image evidence ('weighted'), or the image ridge alone ('legacy')",
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "accuracy.md")
    args = parser.parse_args()
    if args.quick and args.epochs is None:
        args.epochs = 40
    cases = args.cases or (QUICK_CASES if args.quick else CASES)
    args.load_at_start = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    args.code_state = code_state()  # at start: the sources imported below

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # belt and braces: nothing here downloads
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", message=".*Pandas4Warning.*")
    logging.getLogger("soscope").setLevel(logging.WARNING)
    import soscope  # noqa: F401  (import time shows in the first log line)

    log(f"cases: {', '.join(cases)}; load average {args.load_at_start}")
    outdir = args.out.parent
    outdir.mkdir(parents=True, exist_ok=True)
    cache: dict = {}
    results = [run_case(c, args, cache, outdir) for c in cases]
    text = report(results, args, time.perf_counter() - T_START)
    args.out.write_text(text)
    print(text)
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
