"""The likelihood registry (``soscope._likelihoods``): one list of names that every layer agrees on."""

import pytest

import soscope
from soscope._likelihoods import BINARY_LIKELIHOODS, INTEGER_LIKELIHOODS, LIKELIHOODS, likelihood_info
from soscope.model._likelihood_choice import resolve_likelihoods
from soscope.module import COUNT_LIKELIHOODS
from soscope.module import LIKELIHOODS as MODULE_LIKELIHOODS
from soscope.module._distributions import spot_likelihood


def test_every_registered_likelihood_has_a_distribution():
    import torch

    mean = torch.full((2, 3), 2.0)
    ones = torch.ones(2, 3)
    for name in LIKELIHOODS:
        dist = spot_likelihood(name, mean, sum_sq=mean**2, theta=ones, zi_logits=-ones, sigma=ones)
        assert torch.isfinite(dist.log_prob(torch.ones(2, 3))).all(), name
    assert MODULE_LIKELIHOODS == tuple(LIKELIHOODS)


def test_value_kinds_follow_the_registry():
    assert INTEGER_LIKELIHOODS == {"nb", "negative_binomial", "zinb", "poisson"}
    assert BINARY_LIKELIHOODS == {"bernoulli"}
    # every model but the Gaussian sums its sub-spots' counts into the spot
    assert set(COUNT_LIKELIHOODS) == set(LIKELIHOODS) - {"gaussian"}


def test_aliases_and_case_resolve_to_one_name():
    assert likelihood_info("NB").name == "nb"
    assert likelihood_info(" negative_binomial ").name == "nb"
    assert resolve_likelihoods([None], ["rna"], "Negative_Binomial") == {"rna": "nb"}
    with pytest.raises(soscope.SoscopeInputError, match=r"unknown likelihood 'gamma'; choose one of \['nb'"):
        likelihood_info("gamma")
