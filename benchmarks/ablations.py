"""Contribution of each part of the model: accuracy of ablated variants on synthetic data with truth.

    python benchmarks/ablations.py [--spots 1200] [--features 300]

Prints (and writes ``results/ablations.md``) the mean per-feature Pearson over informative features for the
full model, each ablation, and the naive baselines.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

VARIANTS = {
    "full model": ({}, {}),
    "no image (interpolation offset, graph VAE)": ({"use_image": False}, {}),
    "no graph (spot-only encoder)": ({"use_graph": False}, {}),
    "with graph-autoencoder pretraining (published two-step; 30 epochs)": ({}, {"pretrain_epochs": 30}),
    "no image regulariser": ({}, {"image_reg_weight": 0.0}),
    "no spot deviations (image only)": ({}, {"image_warmup": 1.0}),
    "no early stopping (3x epochs)": ({}, {"early_stopping": False, "epochs_factor": 3}),
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--spots", type=int, default=1200)
    parser.add_argument("--features", type=int, default=300)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "ablations.md")
    args = parser.parse_args()

    import soscope
    from soscope.datasets import synthetic
    from soscope.evaluate import score
    from soscope.model._core import default_epochs

    sdata = synthetic(n_spots=args.spots, n_features=args.features, seed=0)
    _, base = score(sdata, key_added=None, truth="truth", features="informative", ssim=False)
    rows = [(f"baseline: {k}", v["pearson"], float("nan")) for k, v in base["mean"].items()]
    for i, (name, (model_kw, train_kw)) in enumerate(VARIANTS.items()):
        train_kw = dict(train_kw)
        factor = train_kw.pop("epochs_factor", None)
        if factor:
            train_kw["epochs"] = factor * default_epochs(args.spots)
        t0 = time.perf_counter()
        model = soscope.SoScope(sdata, table="table", progress=False, **model_kw)
        model.train(**train_kw)
        model.enhance(sdata, key_added=f"ablation{i}", overwrite=True)
        _, summary = score(
            sdata,
            key_added=f"ablation{i}",
            truth="truth",
            features="informative",
            baselines=False,
            ssim=False,
        )
        rows.append((name, summary["mean"]["soscope"]["pearson"], time.perf_counter() - t0))
        print(f"{name}: {rows[-1][1]:.3f} ({rows[-1][2]:.0f} s)", flush=True)
    lines = [
        f"# Ablations on synthetic data ({args.spots:,} spots × {args.features} features, hex7, with image)",
        "",
        "| variant | mean Pearson (informative features) | time (s) |",
        "|---|---:|---:|",
        *[f"| {n} | {p:.3f} | {'' if t != t else f'{t:.0f}'} |" for n, p, t in rows],
    ]
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
