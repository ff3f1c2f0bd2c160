"""Sub-spot outputs of ``SoScopeModule.enhance`` against hand-computed cases, one per likelihood.

The network is set so that its decoded sub-spot values are exactly the chosen ones: the spot heads and
batch biases are zero, there is no image head, and each sub-spot's fixed offset is ``log(lam / a)`` (counts)
or ``v`` (Gaussian). Every expected output below is written out from the numbers of the case.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from soscope.module import ModalitySpec, ModuleConfig, SoScopeModule, SpotBatch
from soscope.module._outputs import quantile, sample_multinomial_split, within_spot_rank

D = torch.float64


def _module(likelihood: str, n_features: int = 1) -> SoScopeModule:
    config = ModuleConfig(
        modalities=[ModalitySpec("m", n_features, likelihood)],
        n_input=n_features,
        n_latent=2,
        n_hidden=8,
        n_graph_layers=0,
        use_graph=False,
        use_image=False,
    )
    module = SoScopeModule(config).double().eval()
    with torch.no_grad():
        for head in module.spot_heads:  # no spot deviation: the decoded values are the offsets alone
            head.weight.zero_()
            head.bias.zero_()
    return module


def _batch(x, sub_spot, area, weight, values, *, count: bool) -> SpotBatch:
    """Spots ``x`` (n, F) with sub-spots whose decoded values are ``values`` (m, F)."""
    x = torch.as_tensor(x, dtype=D)
    area = torch.as_tensor(area, dtype=D)
    values = torch.as_tensor(values, dtype=D)
    offset = torch.log(values / area[:, None]) if count else values
    n = x.shape[0]
    return SpotBatch(
        x=[x],
        x_in=torch.zeros_like(x),
        edge_index=torch.zeros((2, 0), dtype=torch.long),
        batch=torch.zeros(n, dtype=torch.long),
        sub_spot=torch.as_tensor(sub_spot, dtype=torch.long),
        sub_area=area,
        sub_weight=torch.as_tensor(weight, dtype=D),
        sub_offset=[offset],
    )


# one spot, three sub-spots: fully inside, half inside, outside the footprint
LAM = [2.0, 3.0, 5.0]
AREA = [1.0, 3.0, 1.0]
WEIGHT = [1.0, 0.5, 0.0]


@pytest.mark.parametrize("likelihood", ["nb", "poisson"])
def test_counts_split_the_observed_spot_inside_and_keep_the_rate_outside(likelihood):
    module = _module(likelihood)
    batch = _batch([[12.0]], [0, 0, 0], AREA, WEIGHT, [[v] for v in LAM], count=True)
    out = module.enhance(batch)[0]
    # inside parts w*lam = 2, 1.5, 0 (sum 3.5): the 12 observed counts split 2 : 1.5 : 0
    expected = [12 * 2 / 3.5, 0.5 * 3.0 + 12 * 1.5 / 3.5, 5.0]
    np.testing.assert_allclose(out["enhanced"][:, 0].numpy(), expected, rtol=1e-12)
    np.testing.assert_allclose(out["mean"][:, 0].numpy(), LAM, rtol=1e-12)
    # the inside parts add up to the observation
    inside = out["enhanced"][:, 0] - (1 - batch.sub_weight) * torch.tensor(LAM, dtype=D)
    assert inside.sum().item() == pytest.approx(12.0, rel=1e-12)


def test_zinb_outside_part_is_the_zero_inflated_expectation():
    module = _module("zinb")
    pi = 0.25
    with torch.no_grad():
        module.zi_logits[0].fill_(math.log(pi / (1 - pi)))
    batch = _batch([[12.0]], [0, 0, 0], AREA, WEIGHT, [[v] for v in LAM], count=True)
    out = module.enhance(batch)[0]
    expected = [12 * 2 / 3.5, 0.5 * 0.75 * 3.0 + 12 * 1.5 / 3.5, 0.75 * 5.0]
    np.testing.assert_allclose(out["enhanced"][:, 0].numpy(), expected, rtol=1e-12)
    np.testing.assert_allclose(out["mean"][:, 0].numpy(), [0.75 * v for v in LAM], rtol=1e-12)


def test_bernoulli_gives_presence_probabilities_conditioned_on_the_spot():
    module = _module("bernoulli")
    lam = [0.5, 1.0, 2.0]
    # the same three sub-spots under a spot observed 0 and a spot observed 1
    batch = _batch(
        [[0.0], [1.0]], [0, 0, 0, 1, 1, 1], AREA * 2, WEIGHT * 2, [[v] for v in lam * 2], count=True
    )
    out = module.enhance(batch)[0]
    got = out["enhanced"][:, 0].numpy()
    outside = [(1 - w) * v for v, w in zip(lam, WEIGHT, strict=True)]  # 0, 0.5, 2
    # observed 0: no count inside the footprint, only the outside part can hold one
    np.testing.assert_allclose(got[:3], [1 - math.exp(-o) for o in outside], rtol=1e-12, atol=1e-15)
    assert got[0] == 0.0
    # observed 1, by inclusion-exclusion: P(N_k > 0 | S > 0) with S the footprint total (mean 0.5 + 0.5)
    big_lam = 1.0
    p_s = 1 - math.exp(-big_lam)
    want = [
        (1 - math.exp(-v) - math.exp(-big_lam) + math.exp(-big_lam - o)) / p_s
        for v, o in zip(lam, outside, strict=True)
    ]
    np.testing.assert_allclose(got[3:], want, rtol=1e-12)
    # unconditioned: 1 - exp(-lam)
    np.testing.assert_allclose(out["mean"][:3, 0].numpy(), [1 - math.exp(-v) for v in lam], rtol=1e-12)
    assert ((got >= 0) & (got <= 1)).all()


def test_gaussian_residual_is_split_in_proportion_to_area_times_weight():
    module = _module("gaussian")
    values = [1.0, 2.0, 4.0]
    batch = _batch([[3.0]], [0, 0, 0], AREA, WEIGHT, [[v] for v in values], count=False)
    out = module.enhance(batch)[0]
    # a*w = 1, 1.5, 0 -> c = 0.4, 0.6, 0; model spot value 0.4*1 + 0.6*2 = 1.6, residual 1.4
    c = [0.4, 0.6, 0.0]
    r = 3.0 - 1.6
    expected = [v + r * ck / (0.4**2 + 0.6**2) for v, ck in zip(values, c, strict=True)]
    got = out["enhanced"][:, 0].numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    # the footprint-weighted mean is the observation; the outside sub-spot keeps its model value
    assert float(np.dot(c, got)) == pytest.approx(3.0, rel=1e-12)
    assert got[2] == pytest.approx(4.0)
    np.testing.assert_allclose(out["mean"][:, 0].numpy(), values)


def test_gaussian_equal_weights_take_the_whole_residual():
    module = _module("gaussian")
    batch = _batch([[5.0]], [0, 0], [1.0, 1.0], [1.0, 1.0], [[1.0], [3.0]], count=False)
    got = module.enhance(batch)[0]["enhanced"][:, 0].numpy()
    np.testing.assert_allclose(got, [4.0, 6.0], rtol=1e-12)  # residual 5 - 2 = 3 on each


# ----------------------------------------------------------------------------- predictive draws
def test_multinomial_split_draws_sum_to_the_observation_with_multinomial_moments():
    torch.manual_seed(0)
    n = 20_000  # the same spot repeated: one call draws n independent splits
    p = torch.tensor([0.5, 0.3, 0.0, 0.2], dtype=D)
    weight = torch.tensor([1.0, 0.5, 0.0, 0.3], dtype=D).repeat(n)
    sub_spot = torch.arange(n).repeat_interleave(4)
    share = p.repeat(n)[:, None]
    x = torch.full((n, 1), 9.0, dtype=D)
    draws = sample_multinomial_split(share, sub_spot, x, within_spot_rank(sub_spot, n, weight))
    d = draws[:, 0].reshape(n, 4).numpy()
    assert (d == np.round(d)).all() and (d >= 0).all()
    np.testing.assert_array_equal(d.sum(1), 9.0)
    assert (d[:, 2] == 0).all()  # no counts for a sub-spot outside the footprint
    pn = p.numpy()
    se = np.sqrt(9 * pn * (1 - pn) / n)
    assert (np.abs(d.mean(0) - 9 * pn) <= 5 * se + 1e-12).all()
    np.testing.assert_allclose(d.var(0), 9 * pn * (1 - pn), rtol=0.05, atol=1e-12)


def test_multinomial_split_keeps_the_fractional_part_in_expectation():
    sub_spot = torch.tensor([0, 0])
    share = torch.tensor([[0.25], [0.75]], dtype=D)
    x = torch.tensor([[0.5]], dtype=D)  # nothing to draw: the fraction is split by the shares
    draws = sample_multinomial_split(share, sub_spot, x)
    np.testing.assert_allclose(draws[:, 0].numpy(), [0.125, 0.375])


def test_quantile_matches_numpy_linear():
    torch.manual_seed(1)
    d = torch.randn(37, 5, 3, dtype=D)
    for q in (0.1, 0.5, 0.9):
        np.testing.assert_allclose(quantile(d, q).numpy(), np.quantile(d.numpy(), q, axis=0), rtol=1e-12)


@pytest.mark.parametrize("likelihood", ["poisson", "nb"])
def test_count_draws_have_the_split_and_observation_spread(likelihood):
    """Inside the footprint the spread is that of the split of the observed counts; outside, the noise's.

    Poisson parts given their sum are multinomial; NB parts (gamma rates around ``lam``) are
    Dirichlet-multinomial with concentration the spot's moment-matched ``theta_eff``.
    """
    torch.manual_seed(2)
    module = _module(likelihood)
    theta = 4.0
    with torch.no_grad():
        module.log_theta[0].fill_(math.log(theta))
    lam = [2.0, 6.0, 5.0]
    weight = [1.0, 1.0, 0.0]
    batch = _batch([[20.0]], [0, 0, 0], [1.0, 1.0, 1.0], weight, [[v] for v in lam], count=True)
    out = module.enhance(batch, n_samples=4000)[0]
    std = out["std"][:, 0].numpy()
    p = np.array([0.25, 0.75])  # 2 : 6 inside
    var_split = 20 * p * (1 - p)
    var_out = 5.0
    if likelihood == "nb":
        theta_eff = theta * 8.0**2 / (2.0**2 + 6.0**2)  # 6.4
        var_split = var_split * (20 + theta_eff) / (1 + theta_eff)
        var_out = 5.0 + 25.0 / theta
    np.testing.assert_allclose(std[:2], np.sqrt(var_split), rtol=0.06)
    np.testing.assert_allclose(std[2], math.sqrt(var_out), rtol=0.06)
    q10, q90 = out["q10"][:, 0].numpy(), out["q90"][:, 0].numpy()
    enhanced = out["enhanced"][:, 0].numpy()
    assert (q10 <= enhanced).all() and (enhanced <= q90).all() and (q10 < q90).all()
    if likelihood == "poisson":  # Binomial(20, 0.25): 10 % / 90 % quantiles 3 and 8
        assert q10[0] == pytest.approx(3.0, abs=1.0) and q90[0] == pytest.approx(8.0, abs=1.0)


def test_bernoulli_and_gaussian_draws_follow_their_conditionals():
    torch.manual_seed(3)
    module = _module("bernoulli")
    batch = _batch([[1.0]], [0, 0, 0], AREA, WEIGHT, [[0.5], [1.0], [2.0]], count=True)
    out = module.enhance(batch, n_samples=4000)[0]
    p = out["enhanced"][:, 0].numpy()
    np.testing.assert_allclose(out["std"][:, 0].numpy(), np.sqrt(p * (1 - p)), atol=0.03)
    assert set(np.unique(out["q10"].numpy())) <= {0.0, 1.0}

    module = _module("gaussian")
    sigma = 0.5
    with torch.no_grad():
        module.log_sigma[0].fill_(math.log(sigma))
    batch = _batch([[3.0]], [0, 0, 0], AREA, WEIGHT, [[1.0], [2.0], [4.0]], count=False)
    out = module.enhance(batch, n_samples=4000)[0]
    c = np.array([0.4, 0.6, 0.0])
    want = sigma * np.sqrt(1 - c**2 / (c**2).sum())
    np.testing.assert_allclose(out["std"][:, 0].numpy(), want, rtol=0.06)


# ----------------------------------------------------------------------------- no hidden state
def test_module_keeps_no_state_between_calls():
    torch.manual_seed(4)
    module = _module("nb", n_features=2)
    with torch.no_grad():
        module.spot_heads[0].weight.normal_(std=0.5)  # spot deviations that the prior penalises
    batch = _batch(
        [[5.0, 1.0], [2.0, 3.0]], [0, 0, 1], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0], np.ones((3, 2)), count=True
    )
    batch.x_in = torch.randn(2, 2, dtype=D)
    before = set(vars(module))
    profiles, deltas = module.spot_profiles(torch.randn(2, 2, dtype=D), batch.batch)
    assert len(profiles) == len(deltas) == 1 and deltas[0].abs().sum() > 0
    _, off = module.spot_profiles(torch.randn(2, 2, dtype=D), batch.batch, spot_deviation=False)
    assert (off[0] == 0).all()
    on = module.loss(batch, sample=False)["loss"]
    warm = module.loss(batch, sample=False, spot_deviation=False)["loss"]
    module.enhance(batch, n_samples=2)
    assert set(vars(module)) == before  # nothing written on the module by any call
    assert on.item() != warm.item()
    # calls do not depend on earlier calls: the same loss again after the warm-up call
    assert module.loss(batch, sample=False)["loss"].item() == on.item()
