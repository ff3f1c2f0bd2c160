"""Wall time and peak memory of soscope.enhance on a synthetic Visium-like section.

Default: 4,000 spots × 2,000 features with an H&E-like image (hex7 → 28,000 sub-spots), written to a zarr
store and enhanced in place (read → sub-spots → image features → train → enhance → atomic write-back).

    python benchmarks/enhance_synthetic.py [--spots 4000] [--features 2000]
        [--out results/enhance_synthetic.md]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far (GB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--spots", type=int, default=4000)
    parser.add_argument("--features", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "enhance_synthetic.md"
    )
    args = parser.parse_args()

    import spatialdata as sd
    import torch

    import soscope
    from soscope.datasets import synthetic
    from soscope.evaluate import score

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "synthetic.zarr"
        t0 = time.perf_counter()
        synthetic(n_spots=args.spots, n_features=args.features, seed=args.seed).write(store)
        t_data = time.perf_counter() - t0
        rows.append(("generate + write synthetic store", t_data, peak_rss_gb()))

        t0 = time.perf_counter()
        sdata = sd.read_zarr(store)
        model = soscope.SoScope(sdata, table="table", progress=False, seed=args.seed)
        t_setup = time.perf_counter() - t0
        rows.append(("read + set up (sub-spots, graphs, image features)", t_setup, peak_rss_gb()))
        t0 = time.perf_counter()
        history = model.train()
        t_train = time.perf_counter() - t0
        rows.append((f"train ({len(history.epoch)} epochs, early stopping)", t_train, peak_rss_gb()))
        t0 = time.perf_counter()
        model.enhance(sdata)
        t_enh = time.perf_counter() - t0
        rows.append(("enhance + atomic write to zarr", t_enh, peak_rss_gb()))
        total = t_setup + t_train + t_enh
        rows.append(("**soscope end to end** (read → written)", total, peak_rss_gb()))
        _, summary = score(sdata, key_added="soscope", truth="truth", features="informative", ssim=False)
    n_sub = sdata.tables["table_soscope"].n_obs
    lines = [
        f"# soscope.enhance on synthetic data: {args.spots:,} spots × {args.features:,} features, with image",
        "",
        f"{n_sub:,} sub-spots (hex7); torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"seed {args.seed}.",
        "",
        "| step | wall time (s) | peak RSS so far (GB) |",
        "|---|---:|---:|",
        *[f"| {name} | {t:.1f} | {m:.2f} |" for name, t, m in rows],
        "",
        "Mean per-feature Pearson vs truth over informative features: "
        + ", ".join(f"{k} {v['pearson']:.3f}" for k, v in summary["mean"].items()),
    ]
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
