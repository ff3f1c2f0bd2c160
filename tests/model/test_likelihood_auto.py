"""likelihood="auto": nb for integer counts, gaussian for continuous, bernoulli for 0/1, poisson for peaks."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from model_helpers import MODEL_ARGS, _variant, _with_x

import soscope
from soscope.model._likelihood_choice import choose_likelihood, resolve_likelihoods

KEY = "auto"


CASES = {
    "counts": {"all": "nb"},
    "normalised": {"all": "gaussian"},
    "binary": {"all": "bernoulli"},
    "peaks": {"Gene Expression": "nb", "Peaks": "poisson"},
}


@pytest.mark.parametrize("kind", list(CASES))
def test_auto_choice_is_used_and_stored(grid_sdata, kind):
    sdata = _variant(grid_sdata, kind)
    model = soscope.SoScope(sdata, likelihood="auto", **MODEL_ARGS)
    want = CASES[kind]
    assert model.prepared.likelihoods == want
    assert {m.name: m.likelihood for m in model.module.config.modalities} == want
    model.train(epochs=2)
    out = model.enhance(sdata, key_added=KEY, inplace=False)
    names = ["table_auto"] if len(want) == 1 else ["table_auto_gene_expression", "table_auto_peaks"]
    for name, modality in zip(names, want, strict=True):
        table = out.tables[name]
        assert table.uns["soscope"]["likelihood"] == want
        assert table.uns["soscope"]["likelihood_used"] == want[modality]
        assert table.uns["soscope"]["modality"] == modality
        assert np.isfinite(np.asarray(table.X)).all()
    if kind == "binary":  # expected presence in each sub-spot polygon stays within [0, ...) and finite
        assert (np.asarray(out.tables["table_auto"].X) >= 0).all()


def test_single_modality_named_peaks(grid_sdata):
    sdata = _variant(grid_sdata, "counts")
    var = sdata.tables["table"].var.copy()
    var["feature_types"] = "Peaks"
    sdata = _with_x(sdata, sdata.tables["table"].X, var=var)
    model = soscope.SoScope(sdata, modality_key="feature_types", **MODEL_ARGS)
    assert model.prepared.likelihoods == {"Peaks": "poisson"}


@pytest.mark.parametrize("likelihood", ["nb", "zinb", "poisson"])
def test_explicit_count_likelihood_on_continuous_data_raises(grid_sdata, likelihood):
    sdata = _variant(grid_sdata, "normalised")
    with pytest.raises(soscope.SoscopeInputError, match="integer counts"):
        soscope.SoScope(sdata, likelihood=likelihood, **MODEL_ARGS)


def test_explicit_bernoulli_on_counts_raises(grid_sdata):
    with pytest.raises(soscope.SoscopeInputError, match="0/1"):
        soscope.SoScope(grid_sdata, likelihood="bernoulli", **MODEL_ARGS)


def test_explicit_choice_overrides_auto(grid_sdata):
    model = soscope.SoScope(grid_sdata, likelihood="poisson", **MODEL_ARGS)
    assert model.prepared.likelihoods == {"all": "poisson"}
    model = soscope.SoScope(_variant(grid_sdata, "normalised"), likelihood="gaussian", **MODEL_ARGS)
    assert model.prepared.likelihoods == {"all": "gaussian"}


def test_negative_integer_counts_raise(grid_sdata):
    """Negative integers are broken counts, not continuous data: the count check refuses them."""
    x = grid_sdata.tables["table"].X.toarray().astype(np.int32)
    x[0, 0] = -2
    with pytest.raises(soscope.SoscopeInputError, match="negative"):
        soscope.SoScope(_with_x(grid_sdata, x), **MODEL_ARGS)


def test_unknown_likelihood_raises(grid_sdata):
    with pytest.raises(soscope.SoscopeInputError, match=r"modality 'all': unknown likelihood 'gamma'"):
        soscope.SoScope(grid_sdata, likelihood="gamma", **MODEL_ARGS)
    with pytest.raises(soscope.SoscopeInputError, match="does not have"):
        soscope.SoScope(grid_sdata, likelihood={"RNA": "nb"}, **MODEL_ARGS)


# ------------------------------------------------------------------------------------ the rule itself
@pytest.mark.parametrize(
    ("x", "modality", "want"),
    [
        (np.array([[0, 3], [7, 1]]), "Gene Expression", "nb"),
        (np.array([[0.0, 3.0], [7.0, 1.0]]), "Gene Expression", "nb"),  # integer-valued floats
        (sp.csr_matrix(np.array([[0, 3], [7, 1]])), "Gene Expression", "nb"),
        (np.array([[0.5, 3.0], [7.0, 1.0]]), "Gene Expression", "gaussian"),
        (np.array([[-1, 3], [7, 1]]), "Gene Expression", "nb"),  # broken counts: the count check reports them
        (np.array([[0, 1], [1, 0]]), "Gene Expression", "bernoulli"),
        (sp.csr_matrix(np.array([[0, 1], [1, 0]], dtype=np.float32)), "Peaks", "bernoulli"),
        (np.array([[0, 3], [7, 1]]), "Peaks", "poisson"),
        (np.array([[0, 3], [7, 1]]), "ATAC", "poisson"),
        (np.array([[0.2, 3.0], [7.0, 1.0]]), "Peaks", "gaussian"),
    ],
)
def test_choose_likelihood(x, modality, want):
    got, why = choose_likelihood(x, modality)
    assert got == want and why


def test_resolve_per_modality_dict():
    mats = [np.array([[0, 3], [7, 1]]), np.array([[0.5, 1.5], [2.0, 0.0]])]
    got = resolve_likelihoods(mats, ["RNA", "Protein"], {"RNA": "zinb"})
    assert got == {"RNA": "zinb", "Protein": "gaussian"}
