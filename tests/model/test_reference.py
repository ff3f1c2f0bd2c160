"""A single-cell reference: deconvolution, type-aware outputs, errors writing nothing, save and apply."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
import spatialdata as sd
from model_helpers import one_thread
from store_helpers import tree_digest

import soscope
from soscope._errors import SoscopeInputError
from soscope.model import CellTypeReference, deconvolve
from soscope.model._reference import ReferenceFit, cells_from_counts

ARGS = dict(table="table", n_hidden=32, n_latent=8, device="cpu", progress=False, seed=0)


def _reference_from_truth(sdata, key: str = "cell_type") -> ad.AnnData:
    """Single cells stand-in: the truth sub-spots with their dominant type (the synthetic's cell types)."""
    tru = sdata.tables["truth"]
    x = tru.X.toarray() if sp.issparse(tru.X) else np.asarray(tru.X)
    return ad.AnnData(
        X=x.astype(np.float32),
        obs={key: tru.obs["cell_type"].astype(str).to_numpy()},
        var=tru.var[[]].copy(),
    )


@pytest.fixture(scope="module")
def sample():
    return soscope.datasets.synthetic(n_spots=200, n_features=60, seed=3)


@pytest.fixture(scope="module")
def enhanced(sample):
    with one_thread():
        model = soscope.SoScope(sample, reference=_reference_from_truth(sample), **ARGS)
        model.train(epochs=3)
        out = model.enhance(inplace=False)
    return model, out


# ------------------------------------------------------------------------------------------ deconvolution
def _planted(n_spots=400, n_types=4, n_genes=80, depth=2000.0, seed=0):
    rng = np.random.default_rng(seed)
    profiles = rng.dirichlet(np.full(n_genes, 0.3), size=n_types)
    fractions = rng.dirichlet(np.full(n_types, 0.5), size=n_spots)
    platform = np.exp(rng.normal(0, 0.4, n_genes))
    platform /= np.exp(np.log(platform).mean())
    w = fractions * depth
    counts = rng.poisson(w @ (profiles * platform)).astype(np.float64)
    return counts, profiles, platform, fractions


def test_deconvolution_recovers_planted_abundances_and_platform():
    counts, profiles, platform, fractions = _planted()
    w, rho = deconvolve(counts, profiles, smoothness=0.0)
    est = w / w.sum(1, keepdims=True)
    per_type = [np.corrcoef(est[:, t], fractions[:, t])[0, 1] for t in range(fractions.shape[1])]
    assert min(per_type) > 0.95
    assert np.corrcoef(np.log(rho), np.log(platform))[0, 1] > 0.9
    # the spot's counts are explained: the fitted expected counts sum to about its counts
    np.testing.assert_allclose((w @ (profiles * rho)).sum(1), counts.sum(1), rtol=0.02)
    # sparse counts give the same answer (never densified)
    w_sparse, rho_sparse = deconvolve(sp.csr_matrix(counts), profiles, smoothness=0.0)
    np.testing.assert_allclose(w_sparse, w, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(rho_sparse, rho, rtol=1e-6)


def test_smoothness_helps_shallow_neighbouring_spots():
    """On a lattice of shallow spots whose type mix varies slowly, the spatial prior lowers the error."""
    rng = np.random.default_rng(1)
    side, n_types, n_genes = 20, 3, 60
    yy, xx = np.mgrid[0:side, 0:side]
    logits = np.stack([xx / side * 3, yy / side * 3, np.ones_like(xx, dtype=float)], -1).reshape(-1, n_types)
    fractions = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    profiles = rng.dirichlet(np.full(n_genes, 0.3), size=n_types)
    counts = rng.poisson(fractions * 30.0 @ profiles).astype(np.float64)
    idx = np.arange(side * side).reshape(side, side)
    right = np.c_[idx[:, :-1].ravel(), idx[:, 1:].ravel()]
    down = np.c_[idx[:-1].ravel(), idx[1:].ravel()]
    pairs = np.vstack([right, down])
    adj = sp.coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(side**2, side**2))
    adj = (adj + adj.T).tocsr()

    def error(smoothness):
        w, _ = deconvolve(counts, profiles, adj, smoothness=smoothness, platform=np.ones(n_genes))
        return np.abs(w / w.sum(1, keepdims=True) - fractions).mean()

    assert error(10.0) < 0.8 * error(0.0)


# ------------------------------------------------------------------------------------------ the reference
def test_reference_from_profiles_and_cells_agree():
    rng = np.random.default_rng(0)
    x = rng.poisson(5, size=(30, 10)).astype(np.float32)
    types = np.repeat(["a", "b", "c"], 10)
    cells = CellTypeReference.from_anndata(ad.AnnData(X=x, obs={"t": types}), "t")
    sums = np.stack([x[types == t].sum(0) for t in "abc"])
    profiles = CellTypeReference.from_anndata(ad.AnnData(X=sums, obs={"t": list("abc")}), "t")
    np.testing.assert_allclose(cells.profiles, profiles.profiles, rtol=1e-6)
    sparse = CellTypeReference.from_anndata(ad.AnnData(X=sp.csr_matrix(x), obs={"t": types}), "t")
    np.testing.assert_allclose(sparse.profiles, cells.profiles, rtol=1e-6)
    np.testing.assert_allclose(cells.profiles.sum(1), 1.0)
    assert cells.cell_types == ["a", "b", "c"] and cells.n_cells.tolist() == [10, 10, 10]


# ------------------------------------------------------------------------------------------ outputs
def test_outputs_hold_type_abundances(sample, enhanced):
    model, out = enhanced
    fit = model.normaliser.reference
    types = fit.reference.cell_types
    tab = out.tables["table_soscope"]
    spots = out.tables["table_soscope_spots"]
    n_kt = tab.obsm["cell_type_abundance"]
    assert n_kt.shape == (tab.n_obs, len(types)) and np.all(n_kt >= 0)
    assert list(tab.uns["soscope"]["reference"]["cell_types"]) == types
    assert spots.n_obs == sample.tables["table"].n_obs
    w = spots.obsm["cell_type_abundance"]
    # the sub-spots deconvolve the enhanced counts, which sum to their spot's: summed over each spot's
    # footprint they agree with the spot-level deconvolution (the same cells, up to the two fits)
    inside = np.zeros_like(w)
    rows = spots.obs["instance_id"].astype(str).to_numpy()
    pos = {r: i for i, r in enumerate(rows)}
    spot_of = np.array([pos[s] for s in tab.obs["spot_id"].astype(str)])
    np.add.at(inside, spot_of, n_kt * tab.obs["footprint_weight"].to_numpy()[:, None])
    agreement = [np.corrcoef(inside[:, t], w[:, t])[0, 1] for t in range(w.shape[1])]
    assert np.mean(agreement) > 0.9, agreement
    np.testing.assert_allclose(inside.sum(), w.sum(), rtol=0.2)
    # the spot table annotates the spots element and validates
    from spatialdata.models import TableModel

    TableModel().validate(spots)


def test_subspot_types_follow_the_truth(sample, enhanced):
    """Sub-spot type fractions correlate with the truth's (image + reference; the synthetic's cell types)."""
    _, out = enhanced
    tab = out.tables["table_soscope"]
    tru = sample.tables["truth"]
    assert (tab.obs["spot_id"].astype(str).to_numpy() == tru.obs["spot_id"].astype(str).to_numpy()).all()
    n_kt = tab.obsm["cell_type_abundance"]
    est = n_kt / np.maximum(n_kt.sum(1, keepdims=True), 1e-12)
    truth = np.asarray(tru.obsm["cell_type_fractions"])
    per_type = [np.corrcoef(est[:, t], truth[:, t])[0, 1] for t in range(truth.shape[1])]
    assert np.mean(per_type) >= 0.5


# ------------------------------------------------------------------------------------------ bad input
def _bad(kind, sample):
    ref = _reference_from_truth(sample)
    if kind == "no shared features":
        ref.var_names = [f"other_{i}" for i in range(ref.n_vars)]
        return ref, "cell_type", "shares 0 features"
    if kind == "missing key":
        return ref, "celltype", "no obs column 'celltype'"
    if kind == "one type":
        ref.obs["cell_type"] = "only"
        return ref, "cell_type", "at least 2 types"
    if kind == "negative":
        ref.X[0, 0] = -1.0
        return ref, "cell_type", "negative values"
    if kind == "nan":
        ref.X[0, 0] = np.nan
        return ref, "cell_type", "NaN"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["no shared features", "missing key", "one type", "negative", "nan"])
def test_bad_reference_is_refused_and_writes_nothing(sample, tmp_path, kind):
    path = tmp_path / "s.zarr"
    sd.SpatialData(shapes=dict(sample.shapes), tables={"table": sample.tables["table"]}).write(path)
    store = sd.read_zarr(path)
    before = tree_digest(path)
    ref, key, message = _bad(kind, sample)
    with pytest.raises(SoscopeInputError, match=message):
        soscope.enhance(store, reference=ref, cell_type_key=key, epochs=1, progress=False, device="cpu")
    assert tree_digest(path) == before


def test_reference_with_a_trained_model_is_refused(sample, enhanced):
    model, _ = enhanced
    with pytest.raises(SoscopeInputError, match="reference"):
        soscope.enhance(sample, model=model, reference=_reference_from_truth(sample), inplace=False)


# ------------------------------------------------------------------------------------------ save / apply
def test_saved_model_applies_its_reference_to_a_new_section(tmp_path):
    study = soscope.datasets.synthetic(n_spots=150, n_features=60, n_sections=2, seed=5)
    ref = _reference_from_truth(study)
    with one_thread():
        model = soscope.SoScope(study, sections=["spots_A"], reference=ref, **ARGS)
        model.train(epochs=2)
        direct = model.enhance(study, sections=["spots_B"], inplace=False)
        model.save(tmp_path / "m")
        loaded = soscope.SoScope.load(tmp_path / "m", progress=False)
        applied = loaded.enhance(study, sections=["spots_B"], inplace=False)
    a, b = direct.tables["table_soscope"], applied.tables["table_soscope"]
    np.testing.assert_allclose(np.asarray(b.X), np.asarray(a.X), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b.obsm["cell_type_abundance"], a.obsm["cell_type_abundance"], rtol=1e-5)
    assert b.obsm["cell_type_abundance"].sum() > 0
    assert b.uns["soscope"]["reference"]["weight"] == model.normaliser.reference.weight
    types = model.normaliser.reference.reference.cell_types
    assert list(b.uns["soscope"]["reference"]["cell_types"]) == types
    # the section's own spots were deconvolved with the saved profiles and platform effect
    n_b = int((study.tables["table"].obs["region"] == "spots_B").sum())
    assert applied.tables["table_soscope_spots"].n_obs == n_b


def test_cell_type_maps_draw_every_spot_and_sub_spot(enhanced, tmp_path):
    """soscope.pl.cell_types: a row of spots and a row of sub-spots per type, one 0-1 scale."""
    _, out = enhanced
    fig = soscope.pl.cell_types(out, n_types=3, save=tmp_path / "types.png")
    maps = [ax for ax in fig.axes if ax.get_title()]  # the colour bar has no title
    assert len(maps) == 6 and (tmp_path / "types.png").stat().st_size > 10_000
    drawn = {len(ax.collections[0].get_array()) for ax in maps}
    assert drawn == {out.tables["table_soscope_spots"].n_obs, out.tables["table_soscope"].n_obs}
    with pytest.raises(SoscopeInputError, match="Unknown cell type"):
        soscope.pl.cell_types(out, types=["nope"])


def test_segmented_cells_get_a_type_call_and_probabilities():
    """subspots="cells:...": each cell's type probabilities (abundance shares) and its most likely type."""
    from soscope.model._output import cell_type_outputs

    abundance = np.array([[3.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.5, 0.5, 4.0]])
    obsm, obs = cell_type_outputs(abundance, ["a", "b", "c"], cells=True)
    np.testing.assert_allclose(obsm["cell_type_probability"].sum(1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(obsm["cell_type_probability"][0], [0.75, 0.25, 0.0])
    np.testing.assert_allclose(obsm["cell_type_probability"][1], [1 / 3] * 3)  # no abundance: uniform
    assert obs["cell_type"].astype(str).tolist() == ["a", "a", "c"]
    np.testing.assert_array_equal(obsm["cell_type_abundance"], abundance.astype(np.float32))
    obsm, obs = cell_type_outputs(abundance, ["a", "b", "c"], cells=False)  # polygons: abundances only
    assert list(obsm) == ["cell_type_abundance"] and obs.shape[1] == 0


def test_cells_from_counts_recovers_planted_cells():
    """Sub-spot deconvolution: counts made from known cells of each type give those cells back."""
    rng = np.random.default_rng(3)
    n_types, n_genes = 4, 80
    x = rng.gamma(0.5, size=(n_types * 20, n_genes)) * np.repeat(rng.uniform(50, 400, n_types), 20)[:, None]
    ref = CellTypeReference.from_anndata(
        ad.AnnData(X=x, obs={"t": np.repeat([f"t{i}" for i in range(n_types)], 20)}), "t"
    )
    # counts per cell are the mean row totals of each type
    np.testing.assert_allclose(
        ref.cells_scale(), [x[i * 20 : (i + 1) * 20].sum(1).mean() for i in range(n_types)], rtol=1e-10
    )
    cols = np.arange(n_genes)
    fit = ReferenceFit(ref, 0, cols, cols, np.ones(n_genes))
    cells = rng.poisson(1.0, size=(200, n_types)).astype(float)
    y = cells @ (fit.profiles * ref.cells_scale()[:, None])
    est = cells_from_counts(y, fit, n_iter=3000)
    np.testing.assert_allclose(est, cells, atol=0.05)
