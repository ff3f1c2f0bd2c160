"""The full model against truth: every likelihood on data generated from it, bias correction, 36 sub-spots.

Each case trains on a small synthetic tissue (hex7 or grid:6, H&E-like image) and scores the enhanced
sub-spots against the true sub-spot values, beside the naive baselines (even split, Gaussian interpolation).
"""

import numpy as np
import pytest

import soscope
from soscope.datasets import synthetic
from soscope.evaluate import score

N_SPOTS, N_FEATURES, EPOCHS = 300, 40, 40
NAIVE = ("even_split", "gaussian_interpolation")


def _pearson(sdata, key):
    _, summary = score(sdata, key_added=key, features="informative", ssim=False, baselines=list(NAIVE))
    return {k: v["pearson"] for k, v in summary["mean"].items()}


@pytest.mark.parametrize(
    ("observation", "likelihood", "expected", "margin"),
    [
        ("counts", "auto", "nb", 0.15),  # RNA counts
        ("counts", "zinb", "zinb", 0.15),
        ("poisson", "poisson", "poisson", 0.15),  # protein / fragments
        ("binary", "auto", "bernoulli", 0.02),  # binarised chromatin: a noisy truth, smaller gaps
        ("gaussian", "auto", "gaussian", 0.15),  # normalised values
    ],
)
def test_each_likelihood_recovers_truth_better_than_naive_baselines(
    observation, likelihood, expected, margin
):
    sdata = synthetic(
        n_spots=N_SPOTS, n_features=N_FEATURES, seed=3, observation=observation,
        counts_per_cell=3.0 if observation == "binary" else 400.0,
    )  # fmt: skip
    soscope.enhance(
        sdata, table="table", likelihood=likelihood, epochs=EPOCHS, progress=False, key_added="lik"
    )
    assert sdata.tables["table_lik"].uns["soscope"]["likelihood"] == {"all": expected}
    acc = _pearson(sdata, "lik")
    best_naive = max(acc[b] for b in NAIVE)
    assert acc["soscope"] > best_naive + margin, acc


def _type_profiles(values: np.ndarray, types: np.ndarray, sections: np.ndarray, keep: np.ndarray) -> dict:
    out = {}
    for sec in np.unique(sections):
        for t in np.unique(types):
            rows = keep & (sections == sec) & (types == t)
            if rows.sum() >= 10:
                out[(sec, t)] = np.log1p(values[rows]).mean(0)
    return out


def _cross_section_distance(profiles: dict, sections: list[str]) -> float:
    types = {t for (_, t) in profiles}
    shared = [t for t in types if all((s, t) in profiles for s in sections)]
    assert shared, "no cell type with enough sub-spots in both sections"
    return float(
        np.mean(
            [np.sqrt(np.mean((profiles[(sections[0], t)] - profiles[(sections[1], t)]) ** 2)) for t in shared]
        )
    )


def _bias_gaps() -> tuple[float, float, float]:
    """Cross-section distance of same-type profiles: raw spots, enhanced sub-spots, truth."""
    sdata = synthetic(n_spots=N_SPOTS, n_features=N_FEATURES, n_sections=2, section_bias=0.6, seed=2)
    soscope.enhance(sdata, table="table", epochs=EPOCHS, progress=False, key_added="bias")
    truth = sdata.tables["truth"]
    enhanced = sdata.tables["table_bias"]
    obs = truth.obs
    key = list(zip(obs["spot_id"].astype(int), obs["subspot"].astype(int), strict=True))
    ekey = list(zip(enhanced.obs["spot_id"].astype(int), enhanced.obs["subspot"].astype(int), strict=True))
    pos = {k: i for i, k in enumerate(ekey)}
    rows = np.array([pos[k] for k in key])
    enh = np.asarray(enhanced.X)[rows]
    table = sdata.tables["table"]
    spot_row = {int(s): i for i, s in enumerate(table.obs["spot_id"])}
    raw = np.asarray(table.X.todense())[[spot_row[int(s)] for s in obs["spot_id"]]]  # each sub-spot: its spot
    types = obs["cell_type"].astype(str).to_numpy()
    sections = obs["section"].astype(str).to_numpy()
    keep = obs["cell_type_fraction"].to_numpy() >= 0.6
    inform = sdata.tables["table"].var["informative"].to_numpy()
    scale = lambda v: v / v.sum(1, keepdims=True).clip(1e-9) * 1e4  # noqa: E731  library-normalised
    before = _cross_section_distance(_type_profiles(scale(raw)[:, inform], types, sections, keep), ["A", "B"])
    after = _cross_section_distance(_type_profiles(scale(enh)[:, inform], types, sections, keep), ["A", "B"])
    truth_gap = _cross_section_distance(
        _type_profiles(scale(np.asarray(truth.X, float))[:, inform], types, sections, keep), ["A", "B"]
    )
    return before, after, truth_gap


def test_section_bias_is_removed():
    """Same-type sub-spots agree across sections after enhancement much better than the raw spots do."""
    before, after, truth_gap = _bias_gaps()
    assert after < 0.6 * before, (before, after, truth_gap)


def test_grid6_36_subspots_per_square_spot_beat_baselines():
    sdata = synthetic(n_spots=150, n_features=N_FEATURES, k=36, seed=4)
    soscope.enhance(sdata, table="table", subspots="grid:6", epochs=EPOCHS, progress=False, key_added="g6")
    enhanced = sdata.tables["table_g6"]
    assert enhanced.n_obs == 36 * 150
    assert enhanced.uns["soscope"]["subspots"] == "grid:6"
    acc = _pearson(sdata, "g6")
    assert acc["soscope"] > max(acc[b] for b in NAIVE) + 0.1, acc


def test_pretraining_is_switchable():
    sdata = synthetic(n_spots=120, n_features=20, seed=1)
    model = soscope.SoScope(sdata, table="table", progress=False, n_hidden=32, spot_latent=True)
    history = model.train(epochs=3, pretrain_epochs=6)
    assert len(history.pretrain_loss) == 6 and history.pretrain_loss[-1] < history.pretrain_loss[0]
    off = soscope.SoScope(sdata, table="table", progress=False, n_hidden=32).train(
        epochs=3, pretrain_epochs=0
    )
    assert off.pretrain_loss == []
    with pytest.raises(soscope.SoscopeInputError, match="pretrain_epochs"):
        soscope.SoScope(sdata, table="table", progress=False, n_hidden=32).train(epochs=3, pretrain_epochs=-1)
