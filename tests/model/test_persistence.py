"""save, load, enhance; features matched by name; safe loading; determinism; enhance(model=path)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import spatialdata as sd
import torch
from model_helpers import _variant, make_sdata, train_model

import soscope
from soscope.model._soscope import MODEL_FILE

KEY = "ref"


def _x(sdata, key: str = KEY) -> np.ndarray:
    x = sdata.tables[f"table_{key}"].X
    return np.asarray(x.toarray() if hasattr(x, "toarray") else x)


def _with_table(sdata, adata):
    """Return a SpatialData sharing ``sdata``'s elements, with ``adata`` as ``"table"``."""
    return sd.SpatialData(
        images=dict(sdata.images), shapes=dict(sdata.shapes), tables={**dict(sdata.tables), "table": adata}
    )


@pytest.fixture(scope="module")
def reference(hex_model, hex_sdata):
    """Enhanced X of the in-memory model on the data it was trained on."""
    return _x(hex_model.enhance(hex_sdata, key_added=KEY, inplace=False))


@pytest.fixture(scope="module")
def saved(hex_model, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "soscope_model"
    target = hex_model.save(path)
    assert target == path / MODEL_FILE and target.is_file()
    return path


@pytest.fixture
def loaded(saved):
    return soscope.SoScope.load(saved, device="cpu", progress=False)


# ------------------------------------------------------------------------------------ round trip
def test_save_load_enhance_identical(loaded, hex_model, hex_sdata, reference):
    assert loaded.is_trained and loaded.prepared is None
    assert loaded.feature_names == hex_model.feature_names
    assert loaded.scheme == hex_model.scheme
    for (k, a), (k2, b) in zip(
        hex_model.module.state_dict().items(), loaded.module.state_dict().items(), strict=True
    ):
        assert k == k2 and torch.equal(a, b)
    out = loaded.enhance(hex_sdata, key_added=KEY, inplace=False)
    assert np.array_equal(_x(out), reference)
    assert "table_ref" not in hex_sdata.tables, "inplace=False must leave the input alone"


def test_loaded_model_needs_data(loaded):
    with pytest.raises(soscope.SoscopeInputError, match="loaded without data"):
        loaded.enhance()
    with pytest.raises(soscope.SoscopeInputError, match="without data"):
        loaded.train(epochs=1)


def test_save_refuses_overwrite(hex_model, saved):
    with pytest.raises(soscope.SoscopeInputError, match="overwrite"):
        hex_model.save(saved)


def test_load_from_file_path(saved, reference, hex_sdata):
    m = soscope.SoScope.load(saved / MODEL_FILE, device="cpu", progress=False)
    np.testing.assert_allclose(
        _x(m.enhance(hex_sdata, key_added=KEY, inplace=False)), reference, rtol=1e-6, atol=1e-6
    )


def test_enhance_through_path(saved, reference):
    sdata2 = make_sdata()  # the same sample, built again
    out = soscope.enhance(sdata2, model=saved, key_added=KEY, device="cpu", progress=False)
    assert out is sdata2
    np.testing.assert_allclose(_x(sdata2), reference, rtol=1e-6, atol=1e-6)
    assert "spots_ref" in sdata2.shapes


# ------------------------------------------------------------------------------------ feature matching
def test_missing_features_are_named(loaded, hex_sdata):
    table = hex_sdata.tables["table"]
    dropped = ["gene_3", "gene_17"]
    keep = [v for v in table.var_names if v not in dropped]
    other = _with_table(hex_sdata, table[:, keep].copy())
    with pytest.raises(soscope.ModelCompatibilityError, match="gene_3") as err:
        loaded.enhance(other, inplace=False)
    assert "gene_17" in str(err.value) and "2 of the model's 40 features" in str(err.value)


def test_renamed_features_are_missing(hex_model, hex_sdata):
    table = hex_sdata.tables["table"].copy()
    table.var_names = [("renamed_0" if v == "gene_0" else v) for v in table.var_names]
    with pytest.raises(soscope.ModelCompatibilityError, match="gene_0"):
        hex_model.enhance(_with_table(hex_sdata, table), inplace=False)


def test_reordered_features_match_by_name(loaded, hex_sdata, reference):
    table = hex_sdata.tables["table"]
    order = np.random.default_rng(0).permutation(table.n_vars)
    shuffled = table[:, order].copy()
    assert list(shuffled.var_names) != list(table.var_names)
    out = loaded.enhance(_with_table(hex_sdata, shuffled), key_added=KEY, inplace=False)
    written = out.tables[f"table_{KEY}"]
    assert list(written.var_names) == list(table.var_names), "output follows the model's feature order"
    np.testing.assert_allclose(_x(out), reference, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------------ safe loading
def _write_marker(path: str) -> None:
    Path(path).write_text("pwned")


class _Evil:
    """Unpickling this runs ``_write_marker``."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (_write_marker, (self.marker,))


def test_the_payload_really_runs_code(tmp_path):
    """Sanity of the malicious payload: plain unpickling does run it."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(_Evil(marker)))
    assert marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("how", ["torch", "pickle"])
def test_malicious_model_file_is_refused(tmp_path, how):
    model_dir = tmp_path / "evil_model"
    model_dir.mkdir()
    marker = tmp_path / "marker"
    payload = {"format": "soscope-model/1", "state_dict": _Evil(marker)}
    if how == "torch":
        torch.save(payload, model_dir / MODEL_FILE)
    else:
        with open(model_dir / MODEL_FILE, "wb") as fh:
            pickle.dump(payload, fh)
    with pytest.raises(soscope.ModelCompatibilityError, match="not allowed|not a soscope model"):
        soscope.SoScope.load(model_dir, device="cpu")
    with pytest.raises(soscope.ModelCompatibilityError):
        soscope.enhance(make_sdata(), model=model_dir, device="cpu", progress=False)
    assert not marker.exists(), "loading a model file must never run code"


def test_garbage_file_is_refused(tmp_path):
    (tmp_path / MODEL_FILE).write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(soscope.ModelCompatibilityError):
        soscope.SoScope.load(tmp_path, device="cpu")


def test_foreign_torch_file_is_refused(tmp_path):
    torch.save({"weights": torch.zeros(3)}, tmp_path / MODEL_FILE)
    with pytest.raises(soscope.ModelCompatibilityError, match="not a soscope model"):
        soscope.SoScope.load(tmp_path, device="cpu")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(soscope.ModelCompatibilityError, match="not a soscope model"):
        soscope.SoScope.load(tmp_path / "list.pt", device="cpu")


def test_missing_model_file(tmp_path):
    with pytest.raises(soscope.SoscopeInputError, match="no soscope model"):
        soscope.SoScope.load(tmp_path / "nowhere", device="cpu")


# ------------------------------------------------------------------------------------ determinism
def test_same_seed_same_result(hex_sdata):
    a = train_model(hex_sdata, seed=3)
    b = train_model(hex_sdata, seed=3)
    xa = _x(a.enhance(hex_sdata, key_added=KEY, inplace=False))
    xb = _x(b.enhance(hex_sdata, key_added=KEY, inplace=False))
    assert np.array_equal(xa, xb)
    assert a.history.train_loss == b.history.train_loss
    c = train_model(hex_sdata, seed=4)
    assert not np.array_equal(xa, _x(c.enhance(hex_sdata, key_added=KEY, inplace=False)))


def test_batches_rebuilt_when_used_train_like_cached_ones(hex_sdata, monkeypatch):
    """Rebuilding each minibatch at every step (no memory for built ones) trains bit-identically.

    With no memory for built batches (a whole slide), each minibatch is rebuilt from its chunk at every
    step: training is bit-identical to keeping them all (small data).
    """
    import soscope.model._core as core

    cached = train_model(hex_sdata, seed=5)
    calls = []
    real_make_batch = core.make_batch
    monkeypatch.setattr(core, "make_batch", lambda *a, **k: calls.append(1) or real_make_batch(*a, **k))
    with soscope.settings.override(batch_cache_bytes=0):
        rebuilt = train_model(hex_sdata, seed=5)
    data = rebuilt.prepared.data
    n_chunks = len(core.plan_chunks(
        data.centres, data.edge_index, sections=data.sections,
        chunk_spots=rebuilt.train_config.batch_size, n_hops=core.receptive_hops(rebuilt.module.config),
    ))  # fmt: skip
    assert len(calls) == n_chunks * len(rebuilt.history.epoch), "one build per step: nothing kept"
    assert rebuilt.history.train_loss == cached.history.train_loss
    xa = _x(cached.enhance(hex_sdata, key_added=KEY, inplace=False))
    assert np.array_equal(xa, _x(rebuilt.enhance(hex_sdata, key_added=KEY, inplace=False)))


def test_round_trip_two_modalities(grid_sdata, tmp_path):
    """A multi-omics model (nb + poisson heads) reloads and gives the same tables."""
    sdata = _variant(grid_sdata, "peaks")
    model = train_model(sdata, epochs=2)
    ref = model.enhance(sdata, key_added=KEY, inplace=False)
    model.save(tmp_path / "m")
    out = soscope.SoScope.load(tmp_path / "m", device="cpu", progress=False).enhance(
        sdata, key_added=KEY, inplace=False
    )
    for name in ("table_ref_gene_expression", "table_ref_peaks"):
        assert np.array_equal(np.asarray(out.tables[name].X), np.asarray(ref.tables[name].X))
        assert out.tables[name].uns["soscope"]["likelihood"] == {"Gene Expression": "nb", "Peaks": "poisson"}


# ------------------------------------------------------------------------------------ construction path
def test_load_rebuilds_through_the_constructor(loaded, hex_model, monkeypatch, saved):
    """The loaded model has the trained model's constructor arguments, platform and training settings."""
    assert loaded.settings == hex_model.settings
    assert loaded.platform == hex_model.platform and loaded.platform != "unknown"
    assert loaded.train_config == hex_model.train_config
    assert loaded.history.as_dict() == hex_model.history.as_dict()
    calls = []
    real_init = soscope.SoScope.__init__
    monkeypatch.setattr(
        soscope.SoScope, "__init__", lambda self, *a, **k: calls.append(k) or real_init(self, *a, **k)
    )
    soscope.SoScope.load(saved, device="cpu", progress=False)
    assert len(calls) == 1 and calls[0]["n_latent"] == hex_model.settings["n_latent"]


def test_platform_written_after_load(loaded, hex_model, hex_sdata):
    out = loaded.enhance(hex_sdata, key_added=KEY, inplace=False)
    assert out.tables[f"table_{KEY}"].uns["soscope"]["platform"] == hex_model.platform


def test_format_1_files_still_load(hex_model, tmp_path, reference, hex_sdata):
    """A file written before the constructor arguments and the platform were saved loads as before."""
    hex_model.save(tmp_path)
    payload = torch.load(tmp_path / MODEL_FILE, weights_only=True)
    payload["format"] = "soscope-model/1"
    payload["settings"] = payload.pop("init_params")
    for key in ("platform", "image_extractor_state", "train_config", "is_trained"):
        del payload[key]
    torch.save(payload, tmp_path / MODEL_FILE)
    old = soscope.SoScope.load(tmp_path, device="cpu", progress=False)
    assert old.platform == "unknown" and old.is_trained
    assert np.array_equal(_x(old.enhance(hex_sdata, key_added=KEY, inplace=False)), reference)


@pytest.mark.parametrize(
    "extra",
    [
        {"subspots": "hex7"},
        {"likelihood": "nb"},
        {"epochs": 3},
        {"batch_size": 64},
        {"seed": 1},
        {"n_latent": 4},
    ],
)
def test_enhance_with_a_model_refuses_training_arguments(saved, extra):
    """Training-only arguments have no effect on a trained model: refused, by name, not silently dropped."""
    (name,) = extra
    with pytest.raises(soscope.SoscopeInputError, match=f"`{name}=`.*only apply when training"):
        soscope.enhance(make_sdata(), model=saved, device="cpu", progress=False, **extra)


def test_enhance_with_a_model_names_every_ignored_argument(hex_model):
    with pytest.raises(soscope.SoscopeInputError) as err:
        soscope.enhance(make_sdata(), model=hex_model, epochs=2, use_graph=False, progress=False)
    assert "`epochs=`" in str(err.value) and "`use_graph=`" in str(err.value)


# ------------------------------------------------------------------------------------ custom extractors
class TinyNet(torch.nn.Module):
    """A small image extractor, ``(B, C, H, W) -> (B, 4)``, importable from this test module."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, kernel_size=3)

    def forward(self, x):  # noqa: D102
        return self.conv(x).mean(dim=(2, 3))


def _mean_colour(patches: np.ndarray) -> np.ndarray:
    """Return the mean colour of each patch, ``(B, H, W, C) -> (B, C)`` (a callable extractor)."""
    return patches.mean(axis=(1, 2))


@pytest.fixture(scope="module")
def torch_extractor_model(hex_sdata):
    torch.manual_seed(11)
    return train_model(hex_sdata, epochs=2, image_features=TinyNet())


@pytest.fixture(scope="module")
def torch_extractor_saved(torch_extractor_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("torch_extractor")
    torch_extractor_model.save(path)
    return path


def _enhanced(model, sdata) -> np.ndarray:
    return _x(model.enhance(sdata, key_added=KEY, inplace=False))


def test_torch_extractor_needs_trust_to_be_rebuilt(torch_extractor_saved):
    with pytest.raises(soscope.SoscopeInputError, match="trusted_modules") as err:
        soscope.SoScope.load(torch_extractor_saved, device="cpu", progress=False)
    assert f"{TinyNet.__module__}:TinyNet" in str(err.value) and "image_features=" in str(err.value)


def test_torch_extractor_rebuilt_from_a_trusted_module(
    torch_extractor_saved, torch_extractor_model, hex_sdata
):
    m = soscope.SoScope.load(torch_extractor_saved, device="cpu", progress=False, trusted_modules=[__name__])
    assert isinstance(m._image_extractor, TinyNet)
    assert m.settings["image_features"] == f"torch:{TinyNet.__module__}:TinyNet"
    original = torch_extractor_model._image_extractor
    assert torch.equal(m._image_extractor.conv.weight, original.conv.weight), "the saved weights"
    assert np.array_equal(_enhanced(m, hex_sdata), _enhanced(torch_extractor_model, hex_sdata))


@pytest.mark.parametrize("given", ["instance", "class"])
def test_torch_extractor_given_at_load_gets_the_saved_weights(
    torch_extractor_saved, torch_extractor_model, hex_sdata, given
):
    fresh = TinyNet()
    before = fresh.conv.weight.detach().clone()
    m = soscope.SoScope.load(
        torch_extractor_saved,
        device="cpu",
        progress=False,
        image_features=fresh if given == "instance" else TinyNet,
    )
    assert torch.equal(fresh.conv.weight, before), "the caller's module is left as it was"
    assert torch.equal(m._image_extractor.conv.weight, torch_extractor_model._image_extractor.conv.weight)
    assert np.array_equal(_enhanced(m, hex_sdata), _enhanced(torch_extractor_model, hex_sdata))


def test_callable_extractor_is_asked_for_at_load(hex_sdata, tmp_path):
    model = train_model(hex_sdata, epochs=2, image_features=_mean_colour)
    with pytest.warns(UserWarning, match="image_features="):
        model.save(tmp_path)
    torch.load(tmp_path / MODEL_FILE, weights_only=True)  # still a safe file
    with pytest.raises(soscope.SoscopeInputError, match="_mean_colour.*image_features=fn"):
        soscope.SoScope.load(tmp_path, device="cpu", progress=False)
    m = soscope.SoScope.load(tmp_path, device="cpu", progress=False, image_features=_mean_colour)
    assert np.array_equal(_enhanced(m, hex_sdata), _enhanced(model, hex_sdata))


def test_named_extractor_cannot_be_replaced_at_load(saved):
    with pytest.raises(soscope.SoscopeInputError, match="image_features='morphology'"):
        soscope.SoScope.load(saved, device="cpu", progress=False, image_features=_mean_colour)
