"""Baselines only (no training) on synthetic(style="realistic") with each realism option switched off.

Seed 0, 1,200 spots x 300 features, the 90 informative features scored by ``soscope.evaluate.score``
(mean Pearson); plus two truth-based references computed here (raw per-feature Pearson): the expected
counts (the noise ceiling) and each sub-spot given the mean of its spot's true sub-spots (a spot-level
oracle). Writes nothing; prints a Markdown table (``benchmarks/results/realistic/diagnostics.md``).

    python benchmarks/synthetic_realism.py
"""

import logging
import time
import warnings

import numpy as np
import pandas as pd

warnings.filterwarnings("ignore")
logging.getLogger("soscope").setLevel(logging.WARNING)
from soscope.datasets import synthetic  # noqa: E402  (after the warning filters)
from soscope.evaluate import score, summary  # noqa: E402


def pearson_cols(a, b):
    a = a - a.mean(0)
    b = b - b.mean(0)
    d = np.sqrt((a * a).sum(0) * (b * b).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (a * b).sum(0) / d


variants = {
    "realistic (defaults)": {},
    "depth=False": {"depth": False},
    "expression_states=0": {"expression_states": 0.0},
    "look_alike_types=False": {"look_alike_types": False},
    "stain_gradient=0": {"stain_gradient": 0.0},
    "painted": {"style": "painted"},
}
rows = []
for name, kw in variants.items():
    t = time.time()
    kw = {"style": "realistic", **kw}
    sd = synthetic(n_spots=1200, n_features=300, seed=0, **kw)
    tru = sd["truth"]
    inf = tru.var["informative"].to_numpy(bool)
    feats = list(tru.var_names[inf])
    pf, _ = score(sd, key_added=None, features=feats, baselines=True, ssim=False)
    m = summary(pf)["mean"]
    x = np.asarray(tru.X)[:, inf].astype(float)
    mean = np.asarray(tru.layers["mean"])[:, inf].astype(float)
    spot = tru.obs["spot_id"].to_numpy()
    spot_mean = pd.DataFrame(x).groupby(spot).transform("mean").to_numpy()
    row = {"variant": name}
    for k, v in m.items():
        row[k] = v.get("pearson")
    row["ceiling: expected counts (own Pearson, raw)"] = np.nanmean(pearson_cols(mean, x))
    row["spot mean of true sub-spots (own Pearson, raw)"] = np.nanmean(pearson_cols(spot_mean, x))
    row["median counts/spot"] = float(np.median(np.asarray(sd["table"].X.sum(1)).ravel()))
    rows.append(row)
    print(
        name,
        f"{time.time() - t:.0f} s",
        {k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()},
        flush=True,
    )
df = pd.DataFrame(rows).set_index("variant")
print(df.round(3).to_markdown())
