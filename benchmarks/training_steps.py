"""Training length on a large-ish section: accuracy against truth at ~1,000, ~2,000 and ~4,000 steps.

soscope's default number of epochs (:func:`soscope.model._core.default_epochs`) aimed at ~600 optimizer
steps but never went below 20 epochs, so a large section trained far longer than a small one (a 200,000-spot
slide: 20 epochs x 782 steps = 15,640 steps). This benchmark asks whether those extra steps buy accuracy (its
results led to the default now: no more epochs than reach 1,500 steps on large sections): it builds
``soscope.datasets.synthetic(n_spots=N, n_features=200)`` (H&E-like image, Visium-like hex7 sub-spots, true
sub-spot counts), runs ``soscope.enhance`` with the number of epochs that gives about each target number of
optimizer steps (``steps / ceil(N / 256)`` epochs, rounded), and with soscope's default epochs
(``epochs=None``) for reference, and scores every enhancement against the truth with
:func:`soscope.evaluate.score` over the ``informative`` features, as ``benchmarks/accuracy.py`` does (mean
per-feature Pearson, Spearman, RMSE of log1p values, SSIM of the maps). The same runs are repeated
without the image (``image=False``) unless ``--image-runs with``. Early stopping (patience 30 epochs after
at least 20) may end a run sooner: the epochs and optimizer steps that actually ran are read from the
training history that ``soscope.enhance`` stores in ``uns["soscope"]["history"]`` of the enhanced table.
Gaussian interpolation and even split are scored once as baselines (context for the size of the
differences).

Each run records its wall time, CPU time of this process and the 1-minute load average at its start: the
machine may be shared, which slows wall times. torch runs on one thread (``torch.set_num_threads(1)``);
run under ``OMP_NUM_THREADS=1`` when other jobs share the cores.

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/training_steps.py                 # N = 20,000
    python benchmarks/training_steps.py --spots 10000 --steps 1000 2000 4000
    python benchmarks/training_steps.py --spots 5000 --epochs 1 10 --no-default --image-runs with  # timing

Time: about 0.15 s per optimizer step on one thread, plus about a minute per run (image features, enhancing,
scoring) at 20,000 spots: about 30 min per image setting at 20,000 spots on a shared 2-core machine.

Results are appended to ``benchmarks/results/training_steps.md`` (``--out``) with the commit, seed, machine
and load.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import platform
import resource
import shlex
import sys
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
METRICS = ("pearson", "spearman", "rmse", "ssim")
#: spots per optimizer step (``soscope.settings.train_chunk_spots``)
CHUNK_SPOTS = 256
#: difference in mean Pearson treated as "the same accuracy"
MARGIN = 0.005
T_START = time.perf_counter()


def log(msg: str) -> None:
    """Print ``msg`` with the seconds since start."""
    print(f"[{time.perf_counter() - T_START:7.1f} s] {msg}", flush=True)


def cpu_s() -> float:
    """CPU time (user + system) of this process so far (s): less sensitive than wall time to other load."""
    use = resource.getrusage(resource.RUSAGE_SELF)
    return use.ru_utime + use.ru_stime


def code_state() -> str:
    """Describe the imported soscope: its git commit (when a checkout), changes, model sources' hash."""
    import hashlib
    import subprocess

    import soscope

    src = Path(soscope.__file__).resolve().parent
    h = hashlib.sha256()
    for sub in ("model", "module", "train"):
        for f in sorted((src / sub).glob("*.py")):
            h.update(f.read_bytes())
    git = lambda *a: subprocess.run(  # noqa: E731
        ["git", "-C", str(src), *a], capture_output=True, text=True, timeout=10
    ).stdout.strip()
    try:
        commit, dirty = git("rev-parse", "--short", "HEAD"), git("status", "--porcelain", "--", ".")
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", ""
    state = (
        f"commit {commit}" + (" with uncommitted changes under src/" if dirty else "")
        if commit
        else f"soscope from {src} (not a git checkout)"
    )
    return f"{state}; model sources (model/, module/, train/) sha256 {h.hexdigest()[:12]}"


def machine(note: str | None = None) -> str:
    """One line naming the code (commit, model sources' hash), the machine and the load."""
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    return (
        f"{code_state()}{f' ({note})' if note else ''}; {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}; load average {load}"
    )


def epochs_for(steps: int, steps_per_epoch: int) -> int:
    """Epochs giving about ``steps`` optimizer steps (at least 1)."""
    return max(1, round(steps / steps_per_epoch))


def run_one(sdata, feats: list[str], *, epochs: int | None, use_image: bool, seed: int) -> dict:
    """Enhance with ``epochs`` (None: soscope's default), score against truth, drop the outputs again."""
    import soscope
    from soscope.evaluate import score, summary

    key = f"e{epochs if epochs is not None else 'default'}_{'img' if use_image else 'noimg'}"
    kw = {} if use_image else {"image": False}
    load0 = os.getloadavg()[0]
    t0, c0 = time.perf_counter(), cpu_s()
    soscope.enhance(sdata, epochs=epochs, seed=seed, progress=False, key_added=key, **kw)
    wall, cpu = time.perf_counter() - t0, cpu_s() - c0
    table = f"table_{key}"
    hist = sdata.tables[table].uns["soscope"]["history"]
    steps = np.asarray(hist.get("steps", []), dtype=np.int64)
    t1 = time.perf_counter()
    per_feature, _ = score(sdata, key_added=key, features=feats, baselines=False, ssim=True)
    t_score = time.perf_counter() - t1
    mean = summary(per_feature, reference="soscope")["mean"]["soscope"]
    # drop the outputs: the next run writes its own, and memory stays flat
    for name in [t for t in sdata.tables if t == table]:
        del sdata.tables[name]
    for name in [s for s in sdata.shapes if s.endswith(f"_{key}")]:
        del sdata.shapes[name]
    row = {
        "image": "yes" if use_image else "no",
        "epochs_asked": "default" if epochs is None else epochs,
        "epochs_run": len(np.asarray(hist["epoch"])),
        "best_epoch": int(np.asarray(hist.get("best_epoch", -1))),
        "stopped_early": bool(np.asarray(hist.get("stopped_early", False))),
        "steps_run": int(steps.sum()) if steps.size else float("nan"),
        **{m: mean[m] for m in METRICS},
        "wall_s": wall,
        "cpu_s": cpu,
        "score_s": t_score,
        "load": load0,
    }
    log(
        f"{key}: {row['epochs_run']} epochs ({row['steps_run']} steps, best epoch {row['best_epoch']}), "
        f"{wall:.1f} s; Pearson {mean['pearson']:.4f}, Spearman {mean['spearman']:.4f}, "
        f"RMSE {mean['rmse']:.4f}, SSIM {mean['ssim']:.4f}"
    )
    return row


def baselines(sdata, feats: list[str]) -> dict:
    """Mean scores of even split and Gaussian interpolation (context)."""
    from soscope.evaluate import score, summary

    per_feature, _ = score(
        sdata, key_added=None, features=feats, baselines=["even_split", "gaussian_interpolation"], ssim=True
    )
    return summary(per_feature, reference="even_split")["mean"]


def fmt(v, nd: int = 4) -> str:
    """Format a number (a dash when missing)."""
    if isinstance(v, str):
        return v
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    return "–" if v is None or not np.isfinite(v) else f"{v:.{nd}f}"


def conclusion(rows: list[dict], targets: dict[int, int]) -> list[str]:
    """Compare each run's mean Pearson with the longest explicit run (same image setting)."""
    lines = []
    for img in ("yes", "no"):
        sub = [r for r in rows if r["image"] == img and r["epochs_asked"] != "default"]
        if len(sub) < 2:
            continue
        ref = max(sub, key=lambda r: r["epochs_asked"])
        for r in sub + [r for r in rows if r["image"] == img and r["epochs_asked"] == "default"]:
            if r is ref:
                continue
            d = r["pearson"] - ref["pearson"]
            lines.append(
                f"- image {img}: {r['epochs_asked']} epochs ({r['steps_run']} steps) vs "
                f"{ref['epochs_asked']} ({ref['steps_run']} steps): mean Pearson {d:+.4f}, Spearman "
                f"{r['spearman'] - ref['spearman']:+.4f}, RMSE {r['rmse'] - ref['rmse']:+.4f}, SSIM "
                f"{r['ssim'] - ref['ssim']:+.4f} — "
                + ("within" if abs(d) <= MARGIN else "outside")
                + f" {MARGIN} mean Pearson."
            )
    return lines


def main() -> None:
    """Run the benchmark."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--spots", type=int, default=20_000, help="spots of the synthetic section")
    parser.add_argument("--n-features", type=int, default=200)
    parser.add_argument(
        "--steps", type=int, nargs="+", default=[1000, 2000, 4000], help="target optimizer steps per run"
    )
    parser.add_argument("--epochs", type=int, nargs="+", help="epochs per run (overrides --steps)")
    parser.add_argument(
        "--no-default", action="store_true", help="skip the run with soscope's default epochs"
    )
    parser.add_argument(
        "--image-runs",
        choices=("both", "with", "without"),
        default="both",
        help="run with the image, without it (image=False), or both (with first)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "training_steps.md")
    parser.add_argument("--note", help="said after the code state in the report (where the code came from)")
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", message=".*Pandas4Warning.*")
    logging.getLogger("soscope").setLevel(logging.WARNING)
    import torch

    import soscope
    from soscope.datasets import synthetic
    from soscope.model._core import default_epochs

    torch.set_num_threads(1)
    header = machine(args.note)
    log(header)
    spe = math.ceil(args.spots / CHUNK_SPOTS)
    epochs = args.epochs or [epochs_for(s, spe) for s in args.steps]
    targets = {e: e * spe for e in epochs}

    t0 = time.perf_counter()
    sdata = synthetic(n_spots=args.spots, n_features=args.n_features, seed=args.seed)
    tru = sdata.tables["truth"]
    feats = list(tru.var_names[tru.var["informative"].to_numpy(bool)])
    n_spots = sdata.tables["table"].n_obs
    t_build = time.perf_counter() - t0
    log(
        f"synthetic: {n_spots} spots, {tru.n_obs} sub-spots, {len(feats)} informative features; "
        f"{t_build:.1f} s; {spe} steps/epoch; epochs {epochs}; default {default_epochs(n_spots)}"
    )
    base = baselines(sdata, feats)
    log("baselines: " + ", ".join(f"{k} Pearson {v['pearson']:.4f}" for k, v in base.items()))

    rows = []
    for use_image in {"both": (True, False), "with": (True,), "without": (False,)}[args.image_runs]:
        for e in [*epochs, *([] if args.no_default else [None])]:
            rows.append(run_one(sdata, feats, epochs=e, use_image=use_image, seed=args.seed))

    cmd = shlex.join(["python", "benchmarks/training_steps.py", *sys.argv[1:]])
    omp = os.environ.get("OMP_NUM_THREADS", "unset")
    cols = ["image", "epochs_asked", "epochs_run", "best_epoch", "stopped_early", "steps_run", *METRICS,
            "wall_s", "cpu_s", "load"]  # fmt: skip
    lines = [
        f"\n## {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} (seed {args.seed})\n",
        f"`{cmd}` (OMP_NUM_THREADS={omp}, torch {torch.__version__} on {torch.get_num_threads()} thread(s), "
        f"soscope {soscope.__version__})\n",
        header + f"; at the end {os.getloadavg()[0]:.1f}\n",
        f"`synthetic(n_spots={args.spots}, n_features={args.n_features}, seed={args.seed})`: "
        f"{n_spots} spots, {tru.n_obs} hex7 sub-spots; scored over the {len(feats)} informative features "
        f"(means over features; RMSE of log1p values, lower is better). {spe} optimizer steps per epoch "
        f"at batch {CHUNK_SPOTS} (a few spots are held out for validation, so `steps_run` counts what ran); "
        f"soscope's default here: {default_epochs(n_spots)} epochs. Wall and CPU times include training and "
        "enhancing (not scoring); `load` is the 1-minute load average at the start of the run.\n",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
        *(
            "| "
            + " | ".join(fmt(r[c], 1) if c in ("wall_s", "cpu_s", "load") else fmt(r[c]) for c in cols)
            + " |"
            for r in rows
        ),
        "",
        "Baselines (no training): "
        + "; ".join(
            f"{k.replace('_', ' ')}: " + ", ".join(f"{m} {v[m]:.4f}" for m in METRICS)
            for k, v in base.items()
        )
        + ".\n",
        *conclusion(rows, targets),
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a") as fh:
        fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    log(f"appended to {args.out}")


if __name__ == "__main__":
    main()
