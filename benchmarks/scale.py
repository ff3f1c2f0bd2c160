"""Whole-slide scale: time and peak memory of inference and of one training epoch, 10k to 1,000,000 spots.

Synthetic Visium-like slides (55 µm circles on a 100 µm hexagonal lattice, hex7 → 7 sub-spots per spot,
200 features) are generated *lazily*: counts are drawn chunk by chunk of spots from smooth random fields
(random Fourier features, evaluable anywhere), and the H&E-like image is a Dask array rendered tile by tile;
neither is ever whole in memory. Each slide is written to a zarr store, then, in a fresh process:

* **inference**: read the store, set up (sub-spots, spot graph, image features tile by tile), run the
  trained model as a Dask graph over chunks and write the sub-spot shapes and the enhanced table back into
  the store (streamed chunk by chunk when large) — what ``soscope.enhance(sdata, model=...)`` does;
* **one training epoch**: one optimizer step per minibatch of 256 spots (plus their halo) over all spots,
  each minibatch built when it is used, so memory per step is bounded.

The model is trained once, briefly, on a small slide from the same generator. Peak memory is the largest
resident set of the worker process and its children, sampled every 0.2 s (and the kernel's own peak).

    python benchmarks/scale.py --epoch-max-steps 40  # 10k, 50k, 200k, 1M spots; epochs timed on 40 steps
    python benchmarks/scale.py                       # the same with whole epochs (11 min more at 1M)
    python benchmarks/scale.py --sizes 10000 50000   # some sizes
    python benchmarks/scale.py --quick               # 5k and 20k spots, 50 features: a smoke test

Results are appended as a table to ``benchmarks/results/scale.md`` (``--out``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

SPACING_UM = 100.0  # lattice spacing (Visium)
DIAMETER_UM = 55.0  # spot diameter
MPP = 2.8  # µm per pixel: a hex7 sub-spot (~35 µm) is ~12.6 pixels across, the features' minimum
TILE = 1024  # image tile (pixels)
ROW_CHUNK = 16384  # spots per generated block of counts
N_PROGRAMS = 4  # smooth fields driving counts and image colour
FIELD_LENGTH_UM = 700.0


# ---------------------------------------------------------------------------------------------- generator
class Fields:
    """``N_PROGRAMS`` smooth random fields (random Fourier features): cheap to evaluate at any point."""

    def __init__(self, seed: int, n_waves: int = 24):
        rng = np.random.default_rng([seed, 7])
        k = rng.normal(0, 1, (N_PROGRAMS, n_waves, 2)) * (2 * np.pi / FIELD_LENGTH_UM)
        self.k = k.astype(np.float32)
        self.phase = rng.uniform(0, 2 * np.pi, (N_PROGRAMS, n_waves)).astype(np.float32)
        self.norm = np.float32(np.sqrt(2.0 / n_waves))

    def __call__(self, x_um: np.ndarray, y_um: np.ndarray) -> np.ndarray:
        """Fields at the points: ``(n, N_PROGRAMS)``, each about N(0, 1)."""
        x = np.asarray(x_um, np.float32).ravel()[:, None, None]
        y = np.asarray(y_um, np.float32).ravel()[:, None, None]
        arg = x * self.k[None, :, :, 0] + y * self.k[None, :, :, 1] + self.phase[None]
        return (np.cos(arg).sum(-1) * self.norm).astype(np.float32)


def lattice_shape(n_spots: int) -> tuple[int, int]:
    """Rows and columns of a roughly square hexagonal lattice holding ``n_spots``."""
    cols = int(np.ceil(np.sqrt(n_spots * 2 / np.sqrt(3))))
    return int(np.ceil(n_spots / cols)), cols


def lattice_um(start: int, stop: int, cols: int) -> np.ndarray:
    """Centres (µm) of spots ``start..stop-1`` of the lattice, row-major (as Visium barcodes are laid out)."""
    i = np.arange(start, stop)
    r, c = np.divmod(i, cols)
    x = (c + 0.5 * (r % 2) + 1.0) * SPACING_UM
    y = (r * np.sqrt(3) / 2 + 1.0) * SPACING_UM
    return np.stack([x, y], 1)


def feature_params(n_features: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature baseline (log-normal, ~5,000 counts per spot in all) and loadings on the fields."""
    rng = np.random.default_rng([seed, 11])
    base = np.exp(rng.normal(0, 1.2, n_features))
    base *= 5000 / base.sum()
    load = rng.normal(0, 0.8, (N_PROGRAMS, n_features)) * (rng.random(n_features) < 0.6)
    return base.astype(np.float32), load.astype(np.float32)


def counts_block(start: int, stop: int, cols: int, n_features: int, seed: int) -> np.ndarray:
    """Draw the counts of spots ``start..stop-1``: Poisson around the baseline modulated by the fields."""
    xy = lattice_um(start, stop, cols)
    f = Fields(seed)(xy[:, 0], xy[:, 1])
    base, load = feature_params(n_features, seed)
    rate = base[None, :] * np.exp(f @ load - 0.5 * (load**2).sum(0)[None, :])
    rng = np.random.default_rng([seed, 13, start])
    return rng.poisson(rate).astype(np.float32)


def render_tile(y0: int, y1: int, x0: int, x1: int, seed: int) -> np.ndarray:
    """H&E-like RGB pixels ``[y0:y1, x0:x1]`` (uint8, c × y × x): colour from the fields, nuclei, noise."""
    from scipy import ndimage

    step = 8  # fields are smooth: evaluate them on a coarse grid and repeat
    ys = (np.arange(y0, y1, step) + step / 2) * MPP
    xs = (np.arange(x0, x1, step) + step / 2) * MPP
    gx, gy = np.meshgrid(xs, ys)
    f = Fields(seed)(gx, gy).reshape(len(ys), len(xs), N_PROGRAMS)
    f = np.repeat(np.repeat(f, step, 0), step, 1)[: y1 - y0, : x1 - x0]
    palette = np.array([[236, 170, 200], [210, 120, 170], [245, 200, 215], [190, 110, 150]], np.float32)
    w = np.exp(1.5 * f)
    w /= w.sum(-1, keepdims=True)
    rgb = w @ palette
    rng = np.random.default_rng([seed, 17, y0, x0])
    density = 0.004 * (1 + np.tanh(f[..., 0]))  # nuclei per pixel, more where field 0 is high
    nuclei = rng.random(density.shape) < density / 20
    nuclei = ndimage.binary_dilation(nuclei, iterations=2)
    rgb[nuclei] = rgb[nuclei] * 0.35 + np.array([60, 30, 110], np.float32) * 0.65
    rgb += rng.normal(0, 6, rgb.shape).astype(np.float32)
    return np.clip(rgb, 0, 255).astype(np.uint8).transpose(2, 0, 1)


def make_slide(n_spots: int, n_features: int, seed: int):
    """Build a SpatialData whose table counts and image are Dask arrays (generated when written)."""
    import anndata as ad
    import dask
    import dask.array as da
    import geopandas as gpd
    import pandas as pd
    import spatialdata as sd
    from spatialdata.models import Image2DModel, ShapesModel, TableModel
    from spatialdata.transformations import Scale

    n_rows, cols = lattice_shape(n_spots)
    xy = lattice_um(0, n_spots, cols) / MPP  # pixels
    scale = {"global": Scale([MPP, MPP], axes=("x", "y"))}
    gdf = gpd.GeoDataFrame(
        {"radius": np.full(n_spots, DIAMETER_UM / 2 / MPP)}, geometry=gpd.points_from_xy(xy[:, 0], xy[:, 1])
    )
    spots = ShapesModel.parse(gdf, transformations=scale)

    bounds = np.arange(0, n_spots + ROW_CHUNK, ROW_CHUNK).clip(max=n_spots)
    blocks = [
        da.from_delayed(
            dask.delayed(counts_block)(int(a), int(b), cols, n_features, seed),
            shape=(int(b - a), n_features),
            dtype=np.float32,
        )
        for a, b in zip(bounds[:-1], bounds[1:], strict=True)
        if b > a
    ]
    x = da.concatenate(blocks, axis=0)
    obs = pd.DataFrame({"region": pd.Categorical(["spots"] * n_spots), "instance_id": np.arange(n_spots)})
    obs.index = obs.index.astype(str)
    var = pd.DataFrame(index=[f"g{i}" for i in range(n_features)])
    table = TableModel.parse(
        ad.AnnData(X=x, obs=obs, var=var), region="spots", region_key="region", instance_key="instance_id"
    )

    width = int(np.ceil((cols + 2) * SPACING_UM / MPP))
    height = int(np.ceil((n_rows * np.sqrt(3) / 2 + 2) * SPACING_UM / MPP))
    ychunks = tuple(min(TILE, height - y) for y in range(0, height, TILE))
    xchunks = tuple(min(TILE, width - x) for x in range(0, width, TILE))

    def tile(block_info=None):
        (_, _), (y0, y1), (x0, x1) = block_info[None]["array-location"]
        return render_tile(y0, y1, x0, x1, seed)

    img = da.map_blocks(
        tile, chunks=((3,), ychunks, xchunks), dtype=np.uint8, meta=np.empty((0, 0, 0), np.uint8)
    )
    image = Image2DModel.parse(
        img, dims=("c", "y", "x"), scale_factors=[2, 2], chunks=(3, TILE, TILE), transformations=scale
    )
    return sd.SpatialData(images={"image": image}, shapes={"spots": spots}, tables={"table": table})


# ---------------------------------------------------------------------------------------------- stages
def peak_rss_gb() -> float:
    """Kernel's peak resident memory of this process and its finished children (GB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, kids) / 1024**2


def stage_generate(args) -> dict:
    """Write a lazily generated slide to ``args.store``."""
    import dask

    t0 = time.perf_counter()
    with dask.config.set(scheduler="threads"):
        make_slide(args.size, args.features, args.seed).write(args.store)
    return {"generate_s": time.perf_counter() - t0, "generate_peak_gb": peak_rss_gb()}


def stage_train(args) -> dict:
    """Train the model briefly on a small slide and save it to ``args.model``."""
    import spatialdata as sd

    import soscope

    out = stage_generate(args)
    t0 = time.perf_counter()
    model = soscope.SoScope(
        sd.read_zarr(args.store), table="table", subspots="hex7", progress=False, seed=args.seed
    )
    model.train(epochs=args.train_epochs)
    model.save(args.model, overwrite=True)
    return {**out, "train_s": time.perf_counter() - t0}


def stage_run(args) -> dict:
    """Inference (set-up, Dask graph over chunks, write-back) then one training epoch, timed apart."""
    import spatialdata as sd
    import torch

    import soscope
    from soscope._transforms import affine_xy
    from soscope.geometry import subspot_size
    from soscope.model import _core
    from soscope.model._apply import enhance_and_write
    from soscope.model._plan import plan_output
    from soscope.model._setup import _to_cs, concat_layouts
    from soscope.tiling import plan_chunks

    res: dict = {"torch_threads": torch.get_num_threads()}
    t0 = time.perf_counter()
    sdata = sd.read_zarr(args.store)
    model = soscope.SoScope.load(args.model, device=args.device, progress=False)
    prepared = model._prepare_other(sdata)
    res["setup_s"] = time.perf_counter() - t0
    res["setup_peak_gb"] = peak_rss_gb()
    data = prepared.data
    res["subspots"] = int(data.layout.n_subspots)
    res["streamed"] = plan_output(sdata, prepared, log=False).stream
    t0 = time.perf_counter()
    enhance_and_write(
        sdata, prepared, model.module, model.normaliser, uns=model._uns(), key_added="soscope",
        device=model.device, overwrite=True, inplace=True, progress=False,
    )  # fmt: skip
    res["infer_s"] = time.perf_counter() - t0
    res["infer_peak_gb"] = peak_rss_gb()

    # one epoch: every chunk's minibatch once, built when used (bounded memory per step), with the sub-spot
    # graph of the image regulariser found per minibatch, as in training
    sel = prepared.selection
    layouts = [
        _to_cs(prepared.layouts[n], affine_xy(sdata.shapes[n], sel.coordinate_system), polygons=True)
        for n in sel.spots
    ]
    layout = concat_layouts(layouts)
    data = dataclasses.replace(data, layout=layout, subspot_size=subspot_size(layout))
    del sdata, prepared, layouts
    module, norm = model.module, model.normaliser
    chunks = plan_chunks(
        data.centres, data.edge_index, sections=data.sections, chunk_spots=soscope.settings.train_chunk_spots,
        n_hops=_core.receptive_hops(module.config),
    )  # fmt: skip
    held_out = np.random.default_rng(0).random(data.n_spots) < 0.1
    batches = _core.ChunkBatches(data, norm, module.config, chunks, held_out=held_out)
    opt = torch.optim.AdamW(module.parameters(), lr=1e-4)
    module.to(model.device).train()
    order = np.random.default_rng(0).permutation(len(chunks))
    if args.epoch_max_steps and len(order) > args.epoch_max_steps:
        order = order[: args.epoch_max_steps]  # time a random sample of the epoch's steps, then scale up
    t0 = time.perf_counter()
    for i in order:
        out = module.loss(batches[i].to(model.device), kl_weight=1.0, image_reg_weight=0.1, max_features=512)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
    res["epoch_s"] = (time.perf_counter() - t0) * len(chunks) / len(order)
    res["epoch_steps"] = len(chunks)
    res["epoch_steps_timed"] = len(order)
    res["epoch_peak_gb"] = peak_rss_gb()
    return res


# ---------------------------------------------------------------------------------------------- driver
def run_sampled(cmd: list[str], what: str) -> tuple[str, int]:
    """Run ``cmd``, sampling its process tree's resident memory every 0.2 s; return stdout, peak bytes."""
    import psutil

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    peak = [0]

    def sample():
        try:
            p = psutil.Process(proc.pid)
            while proc.poll() is None:
                rss = p.memory_info().rss + sum(c.memory_info().rss for c in p.children(recursive=True))
                peak[0] = max(peak[0], rss)
                time.sleep(0.2)
        except psutil.Error:
            pass

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, _ = proc.communicate()
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed ({proc.returncode})")
    return out, peak[0]


def run_child(stage: str, args, **extra) -> dict:
    """Run a stage in a fresh Python process; sample its memory (process tree RSS) meanwhile."""
    cmd = [
        sys.executable,
        __file__,
        "--stage",
        stage,
        "--features",
        str(args.features),
        "--seed",
        str(args.seed),
        "--epoch-max-steps",
        str(args.epoch_max_steps),
        "--train-epochs",
        str(args.train_epochs),
    ]
    for k, v in extra.items():
        cmd += [f"--{k.replace('_', '-')}", str(v)]
    out, peak = run_sampled(cmd, stage)
    res = json.loads(out.strip().splitlines()[-1])
    res["sampled_peak_gb"] = peak / 1024**3
    return res


def main() -> None:
    """Run the benchmark (or, with ``--stage``, one stage of it in this process)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000, 200_000, 1_000_000])
    parser.add_argument("--features", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="5k and 20k spots, 50 features")
    parser.add_argument("--train-spots", type=int, default=3000)
    parser.add_argument("--train-epochs", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--epoch-max-steps", type=int, default=0,
        help="time at most this many random steps of an epoch and scale up to the epoch (default: all)",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--workdir", type=Path, default=None, help="where the stores go (default: a temp dir)"
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "scale.md")
    # internal: one stage in a child process
    parser.add_argument("--stage", choices=["generate", "train", "run"], help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--store", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.stage:
        fn = {"generate": stage_generate, "train": stage_train, "run": stage_run}[args.stage]
        print(json.dumps(fn(args)), flush=True)
        return
    if args.quick:
        args.sizes, args.features, args.train_spots, args.train_epochs = [5000, 20000], 50, 2000, 2

    work = Path(tempfile.mkdtemp(prefix="soscope_scale_", dir=args.workdir))
    rows = []
    try:
        model_dir = work / "model"
        t = run_child(
            "train",
            args,
            size=args.train_spots,
            store=work / "train.zarr",
            model=model_dir,
            device=args.device,
        )
        print(f"model trained on {args.train_spots} spots in {t['train_s']:.1f} s", flush=True)
        shutil.rmtree(work / "train.zarr", ignore_errors=True)
        for n in sorted(args.sizes):
            store = work / f"slide_{n}.zarr"
            load_before = os.getloadavg()
            g = run_child("generate", args, size=n, store=store)
            r = run_child("run", args, size=n, store=store, model=model_dir, device=args.device)
            load_after = os.getloadavg()
            peak = max(r["sampled_peak_gb"], r["epoch_peak_gb"])
            row = {"spots": n, **{f"gen_{k}": v for k, v in g.items()}, **r, "peak_gb": peak,
                   "load": f"{load_before[0]:.1f}/{load_after[0]:.1f}"}  # fmt: skip
            rows.append(row)
            print(
                f"{n:>9,} spots: set-up {r['setup_s']:.1f} s, inference+write {r['infer_s']:.1f} s "
                f"({1e6 * (r['setup_s'] + r['infer_s']) / n:.0f} µs/spot), epoch {r['epoch_s']:.1f} s "
                f"({r['epoch_steps']} steps, {1e6 * r['epoch_s'] / n:.0f} µs/spot), peak {peak:.2f} GB, "
                f"generate {g['generate_s']:.1f} s / {g['sampled_peak_gb']:.2f} GB, load {row['load']}",
                flush=True,
            )
            shutil.rmtree(store, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if rows:
            write_report(rows, args)


def write_report(rows: list[dict], args) -> None:
    """Append the table of this run to the report."""
    import torch

    import soscope

    lines = [
        f"## {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} — {args.features} features, hex7, "
        f"soscope {soscope.__version__}, torch {torch.__version__}, {os.cpu_count()} cores "
        f"({platform.machine()})",
        "",
        "| spots | sub-spots | set-up (s) | inference + write (s) | µs / spot (set-up + inference) "
        "| streamed | epoch (s) | steps | µs / spot (epoch) | peak memory: set-up / inference / all (GB) "
        "| generate (s) "
        "| load avg (before/after) |",
        "|---:|---:|---:|---:|---:|:-:|---:|---:|---:|---:|---:|:-:|",
    ]
    for r in rows:
        n = r["spots"]
        cells = [
            f"{n:,}", f"{r['subspots']:,}", f"{r['setup_s']:.1f}", f"{r['infer_s']:.1f}",
            f"{1e6 * (r['setup_s'] + r['infer_s']) / n:.0f}", "yes" if r["streamed"] else "no",
            f"{r['epoch_s']:.1f}" + ("" if r["epoch_steps_timed"] == r["epoch_steps"] else " *"),
            f"{r['epoch_steps']}", f"{1e6 * r['epoch_s'] / n:.0f}",
            f"{r['setup_peak_gb']:.2f} / {r['infer_peak_gb']:.2f} / {r['peak_gb']:.2f}",
            f"{r['gen_generate_s']:.1f}", r["load"],
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    by = {r["spots"]: r for r in rows}
    if 50_000 in by and 1_000_000 in by:
        per = {n: (by[n]["setup_s"] + by[n]["infer_s"]) / n for n in (50_000, 1_000_000)}
        lines += ["", f"Time per spot at 1M / at 50k: {per[1_000_000] / per[50_000]:.2f} (target < 1.5)."]
    if any(r["epoch_steps_timed"] < r["epoch_steps"] for r in rows):
        lines += ["", f"\\* epoch time scaled up from {args.epoch_max_steps} random steps of the epoch."]
    lines += [
        "",
        "Peak memory: largest resident set of the process running set-up, inference, write-back and the "
        "epoch (sampled every 0.2 s, and the kernel's peak). Command: `python benchmarks/scale.py "
        + f"--sizes {' '.join(map(str, args.sizes))} --features {args.features}"
        + (f" --epoch-max-steps {args.epoch_max_steps}" if args.epoch_max_steps else "")
        + "`.",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    head = (
        ""
        if args.out.exists()
        else "# Whole-slide scale\n\nWritten by `benchmarks/scale.py`; newest run last.\n\n"
    )
    with open(args.out, "a") as fh:
        fh.write(head + "\n".join(lines) + "\n")
    print(f"report appended to {args.out}")


if __name__ == "__main__":
    main()
