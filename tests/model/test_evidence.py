"""Image evidence weighted by what it predicts: noise gets weight 0 (no-image model), the truth a weight."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
from model_helpers import MODEL_ARGS, make_sdata, one_thread

import soscope
from soscope.evaluate import score
from soscope.geometry import make_subspots
from soscope.io import SelectionRequest
from soscope.model._data import Normaliser, make_batch
from soscope.model._evidence import (
    EvidenceWeights,
    evidence_from_payload,
    evidence_to_payload,
    footprint_design,
    select_weights,
)
from soscope.model._setup import prepare
from soscope.tiling import Chunk


def _lattice(n_row=16, n_col=16, spacing=100.0):
    r, c = np.divmod(np.arange(n_row * n_col), n_col)
    xy = np.column_stack([c * spacing + (r % 2) * spacing / 2, r * spacing * np.sqrt(3) / 2])
    gdf = gpd.GeoDataFrame({"radius": np.full(len(xy), 27.5)}, geometry=shapely.points(xy))
    gdf.index = pd.RangeIndex(len(xy))
    return xy, make_subspots(gdf, "hex7", spacing=spacing)


def _field(points: np.ndarray, n_features: int, rng) -> np.ndarray:
    """Densities that vary at the sub-spot scale (finer than the spot lattice): what an image can add."""
    freq = rng.normal(0, 1 / 40.0, (n_features, 2))
    phase = rng.uniform(0, 2 * np.pi, n_features)
    return 20.0 * np.exp(1.2 * np.sin(points @ freq.T + phase))


def _select(z_sub: np.ndarray, dens_sub: np.ndarray, xy, lay, rng) -> EvidenceWeights:
    aw = lay.area * lay.footprint_weight
    unit = lay.footprint_area.mean()
    lam = np.zeros((lay.n_spots, dens_sub.shape[1]))
    np.add.at(lam, lay.spot_index, aw[:, None] * dens_sub / unit)
    counts = rng.poisson(lam).astype(np.float64)
    area = lay.footprint_area / unit
    target = counts / area[:, None]
    floor = 0.05 * target.mean(0) + 1e-8
    z = (z_sub - z_sub.mean(0)) / z_sub.std(0)
    return select_weights(
        target, target, footprint_design(z, lay), area, xy, np.zeros(len(xy), dtype=str), 100.0, floor,
        is_count=True,
    )  # fmt: skip


def test_noise_image_gets_weight_zero():
    rng = np.random.default_rng(0)
    xy, lay = _lattice()
    dens = _field(lay.centroid, 30, rng)
    w = _select(rng.normal(size=(lay.n_subspots, 6)), dens, xy, lay, rng)
    assert w.beta == 0.0, w.reason
    assert w.scores is not None and w.scores.shape == (len(w.alphas), len(w.betas))
    # no weight helps on held-out spots by more than noise
    assert w.scores.min() > 0.97


def test_informative_image_gets_a_weight():
    rng = np.random.default_rng(1)
    xy, lay = _lattice()
    dens = _field(lay.centroid, 30, rng)
    # image features: a noisy linear view of the log densities of a few features
    z = np.log(dens[:, :6]) + rng.normal(0, 0.1, (lay.n_subspots, 6))
    w = _select(z, dens, xy, lay, rng)
    assert w.beta > 0.2, w.reason
    assert w.scores.min() < 0.9
    # the record survives the model file's plain-data form
    back = evidence_from_payload(evidence_to_payload([w]))[0]
    assert back.beta == w.beta and back.alpha == w.alpha
    np.testing.assert_allclose(back.scores, w.scores)


def test_zero_weight_reproduces_the_no_image_offsets():
    sdata = make_sdata(k=7, image=True)
    with_img = prepare(sdata, SelectionRequest(table="table"), progress=False).data
    no_img = prepare(sdata, SelectionRequest(table="table", image=False), progress=False).data
    norm_img = Normaliser.fit(with_img, offsets="weighted")
    norm_no = Normaliser.fit(no_img, offsets="weighted")
    assert norm_img.evidence is not None and norm_no.evidence is None
    for e in norm_img.evidence:
        e.beta = 0.0
    every = np.arange(with_img.n_spots)
    chunk = Chunk(core=every, nodes=every)
    a = make_batch(with_img, chunk, norm_img)
    b = make_batch(no_img, chunk, norm_no)
    for oa, ob in zip(a.sub_offset, b.sub_offset, strict=True):
        np.testing.assert_array_equal(oa.numpy(), ob.numpy())
    # with a weight, the image changes only the split within spots, by beta times its contrast
    for e in norm_img.evidence:
        e.beta = 0.5
    c = make_batch(with_img, chunk, norm_img)
    diff = (c.sub_offset[0] - b.sub_offset[0]).numpy()
    assert np.abs(diff).max() > 1e-3


def _noise_extractor(patches):
    """Image features unrelated to the tissue: pure noise, reproducible from the patch contents' shape."""
    rng = np.random.default_rng(len(patches))
    return rng.normal(size=(len(patches), 5)).astype(np.float32)


def test_noise_image_gives_the_no_image_model():
    sdata = make_sdata(k=7, image=True)
    with one_thread():
        # segmentation=None: nuclei counted on the image would be real evidence beside the noise
        noisy = soscope.SoScope(
            sdata, image_features=_noise_extractor, image_evidence="weighted", segmentation=None, **MODEL_ARGS
        )
        assert noisy.normaliser.image_weights == [0.0]
        assert not noisy.module.use_image
        noisy.train(epochs=3)
        out_noisy = noisy.enhance(sdata, key_added="noisy", inplace=False)
        plain = soscope.SoScope(sdata, use_image=False, **MODEL_ARGS)
        plain.train(epochs=3)
        out_plain = plain.enhance(sdata, key_added="plain", inplace=False)
    x_noisy = np.asarray(out_noisy.tables["table_noisy"].X)
    x_plain = np.asarray(out_plain.tables["table_plain"].X)
    np.testing.assert_allclose(x_noisy, x_plain, rtol=1e-5, atol=1e-6)
    ev = out_noisy.tables["table_noisy"].uns["soscope"]["image_evidence"]
    assert ev["all"]["beta"] == 0.0 and "does not predict" in ev["all"]["reason"]


@pytest.mark.slow
def test_informative_image_gets_a_weight_and_beats_no_image():
    sdata = soscope.datasets.synthetic(n_spots=400, n_features=60, seed=3)
    acc = {}
    with one_thread():
        for key, kw in (("img", {"image_evidence": "weighted"}), ("noimg", {"use_image": False})):
            model = soscope.SoScope(sdata, **{**MODEL_ARGS, **kw})
            if key == "img":
                assert model.normaliser.image_weights[0] > 0.2
                assert model.module.use_image
            model.train(epochs=30)
            model.enhance(sdata, key_added=key)
            _, summ = score(sdata, key_added=key, features="informative", baselines=False, ssim=False)
            acc[key] = summ["mean"]["soscope"]["pearson"]
    ev = sdata.tables["table_img"].uns["soscope"]["image_evidence"]["all"]
    assert ev["beta"] > 0 and np.asarray(ev["cv_scores"]).min() < 1.0
    assert acc["img"] > acc["noimg"] + 0.05, acc


def test_weighted_is_the_default_and_legacy_offsets_are_unchanged():
    data = prepare(make_sdata(k=7, image=True), SelectionRequest(table="table"), progress=False).data
    default = Normaliser.fit(data)
    assert default.offsets == "weighted" and default.evidence is not None
    norm = Normaliser.fit(data, offsets="legacy")
    assert norm.offsets == "legacy" and norm.evidence is None and norm.image_informative
    every = np.arange(data.n_spots)
    batch = make_batch(data, Chunk(core=every, nodes=every), norm)
    xm, ym, coef = norm.image_ridge[0]
    z = norm.standardise_image(data.image_features[data.layout.rows_of(every)])
    expected = np.log(np.maximum(ym + (z - xm) @ coef, 0.05 * norm.density_mean[0] + 1e-8))
    np.testing.assert_allclose(batch.sub_offset[0].numpy(), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="image_evidence"):
        Normaliser.fit(data, offsets="nope")


def test_weights_saved_with_the_model(tmp_path):
    sdata = make_sdata(k=7, image=True)
    with one_thread():
        model = soscope.SoScope(sdata, image_evidence="weighted", **MODEL_ARGS)
        model.train(epochs=1)
        model.save(tmp_path / "m")
        back = soscope.SoScope.load(tmp_path / "m", device="cpu", progress=False)
    assert back.normaliser.offsets == "weighted"
    assert back.normaliser.image_weights == model.normaliser.image_weights
    a, b = model.normaliser.evidence[0], back.normaliser.evidence[0]
    assert a.alpha == b.alpha
    np.testing.assert_allclose(a.scores, b.scores)
