"""Check whether nuclei typed by the spots' own expression programs carry over to the real cases.

Purpose: ``benchmarks/synthetic_ceiling.py`` finds that on the synthetic data, a classifier of the detected
nuclei learnt from the spots' own expression programs (a Poisson NMF of the spot counts; learning from label
proportions) splits the spots far better than soscope (0.772 against 0.698 mean Pearson on seed 0). This
script runs the same reading of the image, with the same code and settings, on the real cases of
``benchmarks/accuracy.py`` that have an image. Their images are nuclear stains (DAPI; the CosMx IF
composite; a nuclear image rendered from the VeraFISH cell centres), not H&E. The script scores it beside
soscope's defaults and ``score``'s baselines, so that anyone building the method into soscope knows how much
it can be trusted alone.

Per case: nuclei by :func:`soscope.features.segment_nuclei` (defaults) on the case's image at its pixel size
(µm per pixel from the image's transformation to the cases' µm coordinates; checked against the sizes the
data README gives). They are placed in the sub-spot polygons, and in the footprint (a circle's
radius; a square bin is all footprint). Per-nucleus features: the detector's log area, eccentricity and
mean intensity, plus, for every channel (normalised to its 1st-99.5th percentiles), the mean and standard
deviation in windows of 4.5 / 13.5 / 22.5 µm around the centroid. These are the synthetic script's windows;
fluorescence has no haematoxylin / eosin. Then, exactly as in ``synthetic_ceiling.py``:

1. programs of the spot counts (4 or 10);
2. the nucleus classifier learnt from their proportions;
3. per-class profiles by Poisson deconvolution;
4. the posterior split.

The nuclei's number alone (one class) is scored too.

Writes ``benchmarks/results/nucleus_programs_real.md``.

    SOSCOPE_SHARED_DATA=../shared/data python benchmarks/nucleus_programs_real.py [--cases ...]
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np

#: the real cases with an image (``benchmarks/accuracy.py``'s names)
CASES = ("merfish_hex50", "merfish_sq16", "verafish_hex100_nuclei", "cosmx_sq16")
#: µm per coordinate unit: every loader places its case in µm (VeraFISH after ``load_verafish`` scales its
#: raw units by an assumed 0.0628 µm)
MICRONS_PER_UNIT = 1.0
#: µm per pixel the data README gives (MERFISH DAPI, rendered VeraFISH nuclei, CosMx): the check
EXPECTED_MPP = {"merfish": 0.108, "verafish": 1.0, "cosmx": 0.18}
PROGRAMS = (4, 10)
METRICS = ("pearson", "spearman", "rmse", "ssim")


def nucleus_features(image, nuclei, mpp: float, windows_um) -> np.ndarray:
    """Standardised per-nucleus features: the detector's, and each channel's window statistics."""
    from scipy import ndimage as ndi

    arr = np.asarray(image, dtype=np.float32)
    yy = np.clip(np.round(nuclei["y_px"].to_numpy()).astype(int), 0, arr.shape[1] - 1)
    xx = np.clip(np.round(nuclei["x_px"].to_numpy()).astype(int), 0, arr.shape[2] - 1)
    cols = [
        np.log(nuclei["area_px"].to_numpy()),
        nuclei["eccentricity"].to_numpy(),
        nuclei["mean_intensity"].to_numpy(),
    ]
    for channel in arr:
        lo, hi = np.percentile(channel[::7, ::7], [1.0, 99.5])
        channel = np.clip((channel - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
        for w_um in windows_um:
            size = max(3, int(round(w_um / mpp)) | 1)
            mean = ndi.uniform_filter(channel, size=size)
            sd = np.sqrt(np.maximum(ndi.uniform_filter(channel * channel, size=size) - mean**2, 0.0))
            cols += [mean[yy, xx], sd[yy, xx]]
    f = np.column_stack(cols).astype(np.float64)
    return (f - f.mean(axis=0)) / np.maximum(f.std(axis=0), 1e-12)


def place_nuclei(p, layout, pos, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sub-spot (layout order; -1: none) and footprint flag of points in the spots' coordinates."""
    import geopandas as gpd
    import synthetic_ceiling as sc

    if "radius" in p.shapes["spots"]:
        return sc.place(p, layout, pos, xy)
    polys = p.shapes["spots_truth_subspots"].geometry.to_numpy()[pos]
    ip, isub = gpd.GeoSeries(polys).sindex.query(gpd.points_from_xy(xy[:, 0], xy[:, 1]), predicate="within")
    sub_of = np.full(len(xy), -1, dtype=np.int64)
    sub_of[ip] = isub
    return sub_of, sub_of >= 0  # a square bin is all footprint


def run_case(name: str, seed: int) -> dict:
    import accuracy
    import synthetic_ceiling as sc
    from loaders import layout_rows
    from spatialdata import get_pyramid_levels
    from spatialdata.transformations import get_transformation

    import soscope
    from soscope.evaluate import expected_counts_oracle, score
    from soscope.features import detection_microns_per_pixel, segment_nuclei

    t0 = time.perf_counter()
    args = argparse.Namespace(quick=False, seed=seed, offsets=None, epochs=None)
    p, feats, desc = accuracy.build_case(name, args, {})
    tab, tru = p.tables["table"], p.tables["truth"]
    family = name.split("_")[0]
    image = p.images["image"]
    full = get_pyramid_levels(image, n=0) if not hasattr(image, "dims") else image
    mpp = detection_microns_per_pixel(image, "global", MICRONS_PER_UNIT)
    assert abs(mpp / EXPECTED_MPP[family] - 1) < 0.05, (
        f"{name}: {mpp:.4f} µm/px, expected {EXPECTED_MPP[family]}"
    )
    nuclei = segment_nuclei(image, microns_per_pixel=mpp)
    affine = lambda el: get_transformation(el, "global").to_affine_matrix(("x", "y"), ("x", "y"))  # noqa: E731
    px = np.column_stack([nuclei["x_px"], nuclei["y_px"], np.ones(len(nuclei))])
    xy = (np.linalg.inv(affine(p.shapes["spots"])) @ affine(image) @ px.T).T[:, :2]
    layout, pos, counts = layout_rows(p)
    sub_of, inside = place_nuclei(p, layout, pos, xy)
    cells = tru.obs["n_cells"].to_numpy()[pos]
    per_sub = np.bincount(sub_of[sub_of >= 0], minlength=layout.n_subspots)
    nf = nucleus_features(full.values, nuclei, mpp, sc.WINDOWS_UM)
    spot_of = np.where((sub_of >= 0) & inside, layout.spot_index[np.maximum(sub_of, 0)], -1)
    fi = tab.var_names.get_indexer(feats)
    variants = {f"nuclei typed by {k} spot programs": k for k in PROGRAMS}
    variants["detected nuclei, one class (their number)"] = 0
    preds = {}
    for label, k in variants.items():
        member = (
            sc.learn_nucleus_types(nf, spot_of, sc.spot_programs(counts, k, seed), seed)
            if k
            else np.ones((len(nuclei), 1))
        )
        c, c_in = sc.class_counts(member, sub_of, inside, layout.n_subspots)
        m, f = sc.deconvolve(c, c_in, counts, layout.spot_index)
        preds[label] = expected_counts_oracle(counts[:, fi], m[:, fi], layout, f[:, fi])
    model = soscope.SoScope(
        p, table="table", subspots=str(tru.uns["subspots"]["scheme"]), progress=False, seed=seed
    )
    model.train()
    model.enhance(p, key_added="soscope")
    _, summ = score(p, key_added="soscope", features=feats, baselines=True, ssim=True)
    rows = {"soscope (defaults, with the image)": summ["mean"]["soscope"]}
    rows |= {f"`{b}`": v for b, v in summ["mean"].items() if b != "soscope"}
    for i, (label, pred) in enumerate(preds.items()):
        p.tables[f"table_programs{i}"] = sc.table_of(tru, pred, pos, feats)
        _, sm = score(p, key_added=f"programs{i}", features=feats, baselines=False, ssim=True)
        rows[label] = sm["mean"]["soscope"]
    return {
        "name": name,
        "desc": desc,
        "mpp": mpp,
        "spots": tab.n_obs,
        "subspots": layout.n_subspots,
        "nuclei": len(nuclei),
        "in_subspots": int((sub_of >= 0).sum()),
        "cells": int(cells.sum()),
        "corr": float(np.corrcoef(per_sub, cells)[0, 1]),
        "rows": rows,
        "time": time.perf_counter() - t0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "nucleus_programs_real.md"
    )
    args = parser.parse_args()
    import synthetic_ceiling as sc
    import torch

    t_all = time.perf_counter()
    lines = [
        "# Nuclei typed by the spots' own programs, on the real accuracy cases",
        "",
        f"`python benchmarks/nucleus_programs_real.py --cases {' '.join(args.cases)} --seed {args.seed}`; "
        f"code {sc.code_state()}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"{platform.node()} ({platform.machine()}, Python {platform.python_version()}), "
        f"{time.strftime('%Y-%m-%d %H:%M')}. Method: this script's docstring. Scored by "
        "`soscope.evaluate.score` over `benchmarks/accuracy.py`'s features. Every number is computed by "
        "this run.",
        "",
    ]
    for name in args.cases:
        r = run_case(name, args.seed)
        print(f"{name}: " + ", ".join(f"{k}: {float(v['pearson']):.3f}" for k, v in r["rows"].items()))
        lines += [
            f"## {name}",
            "",
            f"{r['desc']}. {r['spots']:,} spots, {r['subspots']:,} sub-spots; image at {r['mpp']:.3f} µm/px; "
            f"{r['nuclei']:,} nuclei detected, {r['in_subspots']:,} in the sub-spots (true cells there: "
            f"{r['cells']:,}; Pearson of nuclei and true cells per sub-spot {r['corr']:.2f}); "
            f"{r['time']:.0f} s.",
            "",
            "| method | Pearson | Spearman | RMSE ↓ | SSIM |",
            "|---|---:|---:|---:|---:|",
        ]
        for label, m in r["rows"].items():
            lines.append(f"| {label} | " + " | ".join(f"{float(m[k]):.3f}" for k in METRICS) + " |")
        lines.append("")
    lines += [f"Total wall time {time.perf_counter() - t_all:.0f} s.", ""]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
