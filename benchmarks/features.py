"""Whole transcriptome: time, peak memory and output size of ``soscope.enhance`` with thousands of features.

Two workloads, each run in a fresh Python process (so its peak memory is its own), with soscope's defaults:

* **features**: a Visium-like section of 4,000 spots (55 µm circles on a 100 µm hexagonal lattice, hex7)
  with 2,000, 18,000 or 33,000 features: sparse integer counts (CSR, as a filtered Visium matrix), about
  8,000 counts per spot spread over log-normal gene baselines, so that most genes are zero in most spots
  (the number of non-zeros per spot is reported). No image. ``soscope.enhance(sdata)`` trains and writes
  into the zarr store.
* **slide**: 200,000 spots x 2,000 features **with an H&E-like image**, end to end: read the store, image
  features tile by tile, train, enhance, write (the generator of ``benchmarks/scale.py``, written to zarr
  first; that writing is not timed).

Peak memory is the kernel's peak resident set of the process (``ru_maxrss``) and, sampled every 0.2 s,
the resident set of its process tree. Besides the wall time, the CPU time of the process (user + system) and
the 1-minute load average at the start and end of the run: other jobs sharing the cores slow the wall time.
Output size is the size on disk of the written enhanced table.

    python benchmarks/features.py                          # 2k, 18k and 33k features (about 20 min)
    python benchmarks/features.py --features 2000 18000    # some sizes
    python benchmarks/features.py --slide                  # also the 200k-spot slide with image (long)

Results are appended to ``benchmarks/results/features.md`` (``--out``) with the commit, seed and machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
COUNTS_PER_SPOT = 8000.0


def make_section(n_spots: int, n_features: int, seed: int):
    """Return a SpatialData of Visium-like circles with sparse integer counts (CSR) and no image."""
    import anndata as ad
    import geopandas as gpd
    import pandas as pd
    import scipy.sparse as sp
    import spatialdata as sd
    from spatialdata.models import ShapesModel, TableModel

    sys.path.insert(0, str(HERE))
    import scale  # the lattice and smooth fields of the scale benchmark

    _, cols = scale.lattice_shape(n_spots)
    xy = scale.lattice_um(0, n_spots, cols)
    gdf = gpd.GeoDataFrame(
        {"radius": np.full(n_spots, scale.DIAMETER_UM / 2)}, geometry=gpd.points_from_xy(xy[:, 0], xy[:, 1])
    )
    rng = np.random.default_rng([seed, 3])
    base = np.exp(rng.normal(0, 2.0, n_features))
    base *= COUNTS_PER_SPOT / base.sum()
    load = rng.normal(0, 0.8, (scale.N_PROGRAMS, n_features)) * (rng.random(n_features) < 0.3)
    fields = scale.Fields(seed)(xy[:, 0], xy[:, 1])
    blocks = []
    for start in range(0, n_spots, 500):  # a block of spots at a time: never a dense spots x features
        stop = min(n_spots, start + 500)
        rate = base[None, :] * np.exp(fields[start:stop] @ load - 0.5 * (load**2).sum(0)[None, :])
        blocks.append(sp.csr_matrix(rng.poisson(rate).astype(np.float32)))
    x = sp.vstack(blocks).tocsr()
    obs = pd.DataFrame({"region": pd.Categorical(["spots"] * n_spots), "spot_id": np.arange(n_spots)})
    obs.index = obs.index.astype(str)
    table = TableModel.parse(
        ad.AnnData(X=x, obs=obs, var=pd.DataFrame(index=[f"g{i}" for i in range(n_features)])),
        region="spots",
        region_key="region",
        instance_key="spot_id",
    )
    return sd.SpatialData(shapes={"spots": ShapesModel.parse(gdf)}, tables={"table": table})


def peak_rss_gb() -> float:
    """Kernel's peak resident memory of this process (GB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def cpu_s() -> float:
    """CPU time (user + system) of this process so far (s): less sensitive than wall time to other load."""
    use = resource.getrusage(resource.RUSAGE_SELF)
    return use.ru_utime + use.ru_stime


def load_now() -> str:
    """Return the 1-minute load average now (other jobs sharing the cores)."""
    return f"{os.getloadavg()[0]:.1f}"


def folder_gb(path: Path) -> float:
    """Size on disk of a folder (GB)."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1024**3


def stage_features(args) -> dict:
    """Generate one section, write it, then time ``soscope.enhance`` on the store (this process)."""
    import spatialdata as sd

    import soscope

    store = Path(args.store)
    sdata = make_section(args.spots, args.n_features, args.seed)
    nnz = int(sdata.tables["table"].X.nnz) / args.spots
    sdata.write(store)
    del sdata
    base_gb = peak_rss_gb()
    t0, c0, load0 = time.perf_counter(), cpu_s(), load_now()
    sdata = sd.read_zarr(store)
    soscope.enhance(sdata, seed=args.seed, progress=False, dtype=args.dtype)
    elapsed, cpu = time.perf_counter() - t0, cpu_s() - c0
    out = store / "tables" / "table_soscope"
    return {
        "workload": "features",
        "dtype": args.dtype,
        "spots": args.spots,
        "features": args.n_features,
        "nnz_per_spot": round(nnz, 1),
        "subspots": int(sdata.tables["table_soscope"].n_obs),
        "enhance_s": round(elapsed, 1),
        "cpu_s": round(cpu, 1),
        "load": f"{load0}→{load_now()}",
        "peak_gb": round(peak_rss_gb(), 2),
        "peak_before_enhance_gb": round(base_gb, 2),
        "output_gb": round(folder_gb(out), 3),
        "gb_per_1M_subspots_1k_features": per_million(folder_gb(out), sdata.tables["table_soscope"].shape),
    }


def per_million(gb: float, shape: tuple[int, int]) -> float:
    """Size on disk (GB) per 1,000,000 sub-spots × 1,000 features of an enhanced table of ``shape``."""
    return round(gb / (shape[0] / 1e6 * shape[1] / 1e3), 3)


def stage_slide(args) -> dict:
    """Write the 200k-spot slide with image (untimed), then time read + image features + train + write."""
    import dask
    import spatialdata as sd

    import soscope

    sys.path.insert(0, str(HERE))
    import scale

    store = Path(args.store)
    with dask.config.set(scheduler="threads"):
        scale.make_slide(args.spots, args.n_features, args.seed).write(store)
    base_gb = peak_rss_gb()
    t0, c0, load0 = time.perf_counter(), cpu_s(), load_now()
    sdata = sd.read_zarr(store)
    epochs = None if args.slide_epochs is None else int(args.slide_epochs)
    soscope.enhance(
        sdata, table="table", subspots="hex7", seed=args.seed, progress=False, epochs=epochs, dtype=args.dtype
    )
    elapsed, cpu = time.perf_counter() - t0, cpu_s() - c0
    history = sdata.tables["table_soscope"].uns["soscope"]["history"]
    out = store / "tables" / "table_soscope"
    return {
        "workload": "slide (image)" + ("" if epochs is None else f", {epochs} epoch(s)"),
        "dtype": args.dtype,
        "epochs_run": len(history.get("epoch", [])),
        "spots": args.spots,
        "features": args.n_features,
        "nnz_per_spot": "dense",
        "subspots": 7 * args.spots,
        "enhance_s": round(elapsed, 1),
        "cpu_s": round(cpu, 1),
        "load": f"{load0}→{load_now()}",
        "peak_gb": round(peak_rss_gb(), 2),
        "peak_before_enhance_gb": round(base_gb, 2),
        "output_gb": round(folder_gb(out), 3),
        "gb_per_1M_subspots_1k_features": per_million(folder_gb(out), (7 * args.spots, args.n_features)),
    }


def run_child(stage: str, args, **extra) -> dict:
    """Run a stage in a fresh process, sampling its process tree's resident memory meanwhile."""
    sys.path.insert(0, str(HERE))
    from scale import run_sampled

    cmd = [sys.executable, __file__, "--stage", stage, "--seed", str(args.seed), "--dtype", args.dtype]
    for k, v in extra.items():
        cmd += [f"--{k.replace('_', '-')}", str(v)]
    out, peak = run_sampled(cmd, f"stage {stage}")
    res = json.loads(out.strip().splitlines()[-1])
    res["sampled_peak_gb"] = round(peak / 1024**3, 2)
    return res


def machine() -> str:
    """One line naming the machine, the commit and the load."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", str(HERE.parent / "src")],
        capture_output=True,
        text=True,
        cwd=HERE,
    ).stdout.strip()
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    return (
        f"commit {commit}{' (src modified)' if dirty else ''}; {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}; load average {load}"
    )


def main() -> None:
    """Run the benchmark (or, with ``--stage``, one stage in this process)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--features", type=int, nargs="+", default=[2000, 18000, 33000])
    parser.add_argument("--spots", type=int, default=4000)
    parser.add_argument("--slide", action="store_true", help="also 200,000 spots x 2,000 features, image")
    parser.add_argument("--slide-spots", type=int, default=200_000)
    parser.add_argument(
        "--slide-epochs", type=int, help="train the slide this many epochs (default: soscope's: 3 at 200k)"
    )
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16"], help="enhanced values")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "features.md")
    parser.add_argument("--stage", choices=["features", "slide"], help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    parser.add_argument("--n-features", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:
        stage = stage_features if args.stage == "features" else stage_slide
        print(json.dumps(stage(args)))
        return

    header = machine()
    print(header, flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        jobs = [("features", args.spots, n) for n in args.features if n > 0]
        if args.slide:
            jobs.append(("slide", args.slide_spots, 2000))
        for i, (stage, spots, n) in enumerate(jobs):
            store = Path(tmp) / f"s{i}.zarr"
            extra = {"slide_epochs": args.slide_epochs} if stage == "slide" and args.slide_epochs else {}
            res = run_child(stage, args, store=store, spots=spots, n_features=n, **extra)
            shutil.rmtree(store, ignore_errors=True)
            print(json.dumps(res), flush=True)
            rows.append(res)
    cols = [
        "workload", "dtype", "spots", "features", "nnz_per_spot", "subspots", "epochs_run", "enhance_s",
        "cpu_s", "load", "peak_gb", "sampled_peak_gb", "peak_before_enhance_gb", "output_gb",
        "gb_per_1M_subspots_1k_features",
    ]  # fmt: skip
    lines = [
        f"\n## {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} (seed {args.seed})\n",
        header + "\n",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
        *("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows),
    ]
    feats = {r["features"]: r for r in rows if r["workload"] == "features"}
    if 2000 in feats:
        for n, r in feats.items():
            if n != 2000:
                lines.append(
                    f"\n{n:,} features: {r['enhance_s'] / feats[2000]['enhance_s']:.2f}x the time of 2,000 "
                    f"features; peak {r['peak_gb']} GB."
                )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a") as fh:
        fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
