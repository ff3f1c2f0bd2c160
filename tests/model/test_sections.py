"""Train on some sections, apply to another: accuracy against truth, batch calibration, saved models.

Synthetic study of three sections (A, B, C) with the same biology, different tissue layouts, each imaged
separately (``image_A`` under ``spots_A`` ...) and a different capture bias per section.
"""

import numpy as np
import pytest

import soscope
from soscope.datasets import synthetic
from soscope.evaluate import score
from soscope.io import select

N_SPOTS, N_FEATURES, EPOCHS = 300, 60, 60
ARGS = dict(table="table", progress=False, seed=0, device="cpu")


@pytest.fixture(scope="module")
def study():
    return synthetic(n_spots=N_SPOTS, n_features=N_FEATURES, n_sections=3, section_bias=0.5, seed=1)


def _pearson(sdata, key, spots="spots_C"):
    _, summary = score(sdata, key_added=key, spots=spots, features="informative", ssim=False)
    return {k: v["pearson"] for k, v in summary["mean"].items()}


@pytest.fixture(scope="module")
def from_ab(study, tmp_path_factory):
    model = soscope.SoScope(study, sections=["spots_A", "spots_B"], **ARGS)
    model.train(epochs=EPOCHS)
    path = tmp_path_factory.mktemp("model") / "ab"
    model.save(path)
    soscope.enhance(study, model=path, sections=["spots_C"], key_added="from_ab", progress=False)
    return model, path


@pytest.fixture(scope="module")
def self_trained(study):
    model = soscope.SoScope(study, sections=["spots_C"], **ARGS)
    model.train(epochs=EPOCHS)
    model.enhance(key_added="self_c")
    return model


def test_each_section_gets_its_own_image(study):
    sel = select(study, table="table")
    assert sel.images == {"spots_A": "image_A", "spots_B": "image_B", "spots_C": "image_C"}
    assert sel.image is None and sel.has_image
    assert select(study, table="table", sections=["spots_B"]).image == "image_B"


def test_image_dict_must_cover_every_spots_element(study):
    with pytest.raises(soscope.SoscopeInputError, match="no image for spots.*spots_B"):
        select(study, table="table", sections=["spots_A", "spots_B"], image={"spots_A": "image_A"})


def test_trained_on_ab_applied_to_c_reaches_90_percent_of_self_trained(study, from_ab, self_trained):
    applied = _pearson(study, "from_ab")
    own = _pearson(study, "self_c")["soscope"]
    assert applied["soscope"] >= 0.9 * own, (applied, own)
    assert applied["soscope"] > max(applied["even_split"], applied["gaussian_interpolation"]) + 0.1, applied


def test_new_section_is_calibrated_without_retraining(study, from_ab):
    model, path = from_ab
    loaded = soscope.SoScope.load(path, progress=False)
    before = {k: v.detach().clone() for k, v in loaded.module.state_dict().items()}
    loaded.enhance(study, sections=["spots_C"], key_added="from_ab_again")
    after = loaded.module.state_dict()
    # the network is unchanged; only a bias row for the new section was added (and the saved model knew 2)
    assert set(loaded.normaliser.batch_codes) == {"spots_A", "spots_B", "spots_C"}
    assert loaded.module.n_reference_batches == 2
    for name, value in before.items():
        if "batch_bias" in name or "batch_embed" in name:
            assert after[name].shape[0] == 3 and np.allclose(after[name][:2], value)
        else:
            assert np.array_equal(after[name].numpy(), value.numpy()), name
    # the same results as soscope.enhance(model=path): calibration is deterministic
    a = study.tables["table_from_ab"].X
    b = study.tables["table_from_ab_again"].X
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def _log_ratio_spread(enhanced_sum: np.ndarray, truth_sum: np.ndarray) -> np.ndarray:
    return np.log((enhanced_sum + 1) / (truth_sum + 1))


def test_calibration_brings_the_new_section_to_the_training_scale(study, from_ab):
    """Per feature, enhanced/truth on C matches enhanced/truth on A far better than the raw counts do."""
    model, _ = from_ab
    model.enhance(study, sections=["spots_A"], key_added="ab_on_a")
    truth = study.tables["truth"]
    sec = truth.obs["section"].astype(str).to_numpy()
    tsum = {s: np.asarray(truth.X[sec == s].sum(0)).ravel() for s in ("A", "C")}
    esum = {
        "A": np.asarray(study.tables["table_ab_on_a"].X.sum(0)).ravel(),
        "C": np.asarray(study.tables["table_from_ab"].X.sum(0)).ravel(),
    }
    table = study.tables["table"]
    region = table.obs["region"].astype(str).to_numpy()
    inside = np.asarray(truth.layers["footprint"])
    raw = {s: np.asarray(table.X[region == f"spots_{s}"].sum(0)).ravel() for s in ("A", "C")}
    tin = {s: inside[sec == s].sum(0) for s in ("A", "C")}
    enhanced_gap = _log_ratio_spread(esum["C"], tsum["C"]) - _log_ratio_spread(esum["A"], tsum["A"])
    raw_gap = _log_ratio_spread(raw["C"], tin["C"]) - _log_ratio_spread(raw["A"], tin["A"])
    assert enhanced_gap.std() < 0.5 * raw_gap.std(), (enhanced_gap.std(), raw_gap.std())


def test_a_list_of_samples_trains_one_model(tmp_path):
    samples = [synthetic(n_spots=80, n_features=20, seed=s) for s in (11, 12)]
    model = soscope.SoScope(samples, n_hidden=32, **ARGS)
    sel = model.prepared.selection
    assert sel.spots == ("spots-0", "spots-1")
    assert sel.images == {"spots-0": "image-0", "spots-1": "image-1"}  # overlapping images: named alike
    assert set(model.normaliser.batch_codes) == {"spots-0", "spots-1"}
    model.train(epochs=2)
    new = synthetic(n_spots=80, n_features=20, seed=13)
    model.enhance(new, key_added="from_list")
    assert new.tables["table_from_list"].n_obs == 7 * 80
    with pytest.raises(soscope.SoscopeInputError, match="not SpatialData"):
        soscope.SoScope([samples[0], "not a SpatialData"], **ARGS)
