"""Spot likelihoods against scipy, their sampling moments, maximum-likelihood recovery, moment matching."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from soscope.module import (
    CountPresence,
    Gaussian,
    NegativeBinomial,
    Poisson,
    ZeroInflatedNegativeBinomial,
    spot_likelihood,
)

D = torch.float64
MUS = [0.3, 2.0, 15.0, 120.0]
THETAS = [0.5, 3.0, 40.0]
KS = np.arange(0, 60)


def _t(x):
    return torch.as_tensor(x, dtype=D)


def _grid(mus, thetas):
    mu, theta = np.meshgrid(mus, thetas, indexing="ij")
    return mu.ravel(), theta.ravel()


# ------------------------------------------------------------------------------------ log_prob vs truth
def test_nb_log_prob_matches_scipy():
    mu, theta = _grid(MUS, THETAS)
    k = KS[:, None].astype(float)
    got = NegativeBinomial(_t(mu), _t(theta)).log_prob(_t(k)).numpy()
    want = stats.nbinom.logpmf(k, n=theta, p=theta / (theta + mu))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_zinb_log_prob_matches_hand_mixture():
    mu, theta = _grid(MUS, THETAS)
    logits = np.linspace(-3, 2, mu.size)
    pi = 1 / (1 + np.exp(-logits))
    k = KS[:, None].astype(float)
    got = ZeroInflatedNegativeBinomial(_t(mu), _t(theta), _t(logits)).log_prob(_t(k)).numpy()
    nb = stats.nbinom.pmf(k, n=theta, p=theta / (theta + mu))
    want = np.log(np.where(k == 0, pi + (1 - pi) * nb, (1 - pi) * nb))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_poisson_log_prob_matches_scipy():
    mu = np.array(MUS)
    k = KS[:, None].astype(float)
    got = Poisson(_t(mu)).log_prob(_t(k)).numpy()
    np.testing.assert_allclose(got, stats.poisson.logpmf(k, mu), rtol=1e-6, atol=1e-6)


def test_count_presence_log_prob():
    mu = np.array([1e-3, 0.1, 0.7, 2.0, 9.0])
    d = CountPresence(_t(mu))
    np.testing.assert_allclose(d.log_prob(_t(np.ones_like(mu))).numpy(), np.log1p(-np.exp(-mu)), rtol=1e-6)
    np.testing.assert_allclose(d.log_prob(_t(np.zeros_like(mu))).numpy(), -mu, rtol=1e-6)
    # P(0) + P(1) = 1
    p = np.exp(d.log_prob(_t(np.ones_like(mu))).numpy()) + np.exp(d.log_prob(_t(np.zeros_like(mu))).numpy())
    np.testing.assert_allclose(p, 1.0, rtol=1e-9)
    np.testing.assert_allclose(d.mean.numpy(), 1 - np.exp(-mu), rtol=1e-9)


def test_gaussian_log_prob_matches_scipy():
    mu = np.array([-2.0, 0.0, 3.5])
    sigma = np.array([0.3, 1.0, 4.0])
    x = np.linspace(-6, 6, 25)[:, None]
    got = Gaussian(_t(mu), _t(sigma)).log_prob(_t(x)).numpy()
    np.testing.assert_allclose(got, stats.norm.logpdf(x, mu, sigma), rtol=1e-9, atol=1e-9)


def test_nb_pmf_sums_to_one():
    mu, theta = _grid([0.5, 4.0], [1.0, 10.0])
    k = np.arange(0, 400)[:, None].astype(float)
    for dist in (
        NegativeBinomial(_t(mu), _t(theta)),
        ZeroInflatedNegativeBinomial(_t(mu), _t(theta), _t(np.full(mu.shape, -1.0))),
    ):
        np.testing.assert_allclose(torch.exp(dist.log_prob(_t(k))).sum(0).numpy(), 1.0, rtol=1e-6)


# ------------------------------------------------------------------------------------ sampling moments
N_SAMPLES = 200_000


def _check_moments(samples: torch.Tensor, mean: np.ndarray, var: np.ndarray, rtol: float = 0.03):
    s = samples.double().numpy()
    np.testing.assert_allclose(s.mean(0), mean, rtol=rtol, atol=1e-3)
    np.testing.assert_allclose(s.var(0), var, rtol=2 * rtol, atol=1e-3)


def test_nb_sample_moments():
    torch.manual_seed(0)
    mu, theta = np.array([0.5, 3.0, 20.0]), np.array([2.0, 0.7, 10.0])
    d = NegativeBinomial(_t(mu), _t(theta))
    x = d.sample((N_SAMPLES,))
    assert x.shape == (N_SAMPLES, 3)
    assert torch.all(x >= 0) and torch.all(x == torch.round(x))
    _check_moments(x, mu, mu + mu**2 / theta)
    np.testing.assert_allclose(d.variance.numpy(), mu + mu**2 / theta)


def test_zinb_sample_moments():
    torch.manual_seed(1)
    mu, theta, logits = np.array([0.5, 3.0, 20.0]), np.array([2.0, 0.7, 10.0]), np.array([-2.0, 0.0, 1.0])
    pi = 1 / (1 + np.exp(-logits))
    d = ZeroInflatedNegativeBinomial(_t(mu), _t(theta), _t(logits))
    x = d.sample((N_SAMPLES,))
    mean = (1 - pi) * mu
    var = (1 - pi) * (mu + mu**2 / theta) + pi * (1 - pi) * mu**2
    _check_moments(x, mean, var)
    np.testing.assert_allclose(d.mean.numpy(), mean)
    np.testing.assert_allclose(d.variance.numpy(), var)
    # the share of zeros: pi + (1 - pi) * NB(0)
    p0 = pi + (1 - pi) * (theta / (theta + mu)) ** theta
    np.testing.assert_allclose((x == 0).double().mean(0).numpy(), p0, atol=5e-3)


def test_poisson_sample_moments():
    torch.manual_seed(2)
    mu = np.array([0.2, 4.0, 50.0])
    x = Poisson(_t(mu)).sample((N_SAMPLES,))
    _check_moments(x, mu, mu)


def test_count_presence_sample_moments():
    torch.manual_seed(3)
    mu = np.array([0.05, 0.7, 3.0])
    x = CountPresence(_t(mu)).sample((N_SAMPLES,))
    assert set(torch.unique(x).tolist()) <= {0.0, 1.0}
    p = 1 - np.exp(-mu)
    _check_moments(x, p, p * (1 - p))


def test_gaussian_sample_moments():
    torch.manual_seed(4)
    mu, sigma = np.array([-1.0, 0.0, 7.0]), np.array([0.5, 1.0, 3.0])
    x = Gaussian(_t(mu), _t(sigma)).sample((N_SAMPLES,))
    np.testing.assert_allclose(x.numpy().mean(0), mu, atol=0.03)
    np.testing.assert_allclose(x.numpy().std(0), sigma, rtol=0.01)


# ------------------------------------------------------------------------------------ maximum likelihood
def _fit(nll, params, steps=500, lr=0.05):
    opt = torch.optim.Adam(params, lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss = nll()
        loss.backward()
        opt.step()
    return [p.detach() for p in params]


def _compress(x: torch.Tensor):
    """Distinct values of each column and their frequencies: the mean log-likelihood from few evaluations."""
    values = torch.unique(x)
    freq = torch.stack([(x == v).sum(0) for v in values]).to(D) / x.shape[0]  # (V, columns)
    return values[:, None].expand_as(freq), freq


def test_nb_maximum_likelihood_recovers_parameters():
    torch.manual_seed(10)
    mu0, theta0 = torch.tensor([4.0, 30.0], dtype=D), torch.tensor([2.0, 5.0], dtype=D)
    v, f = _compress(NegativeBinomial(mu0, theta0).sample((40_000,)))
    log_mu = torch.zeros(2, dtype=D, requires_grad=True)
    log_theta = torch.zeros(2, dtype=D, requires_grad=True)
    _fit(
        lambda: -(f * NegativeBinomial(log_mu.exp(), log_theta.exp()).log_prob(v)).sum(), [log_mu, log_theta]
    )
    np.testing.assert_allclose(log_mu.exp().detach().numpy(), mu0.numpy(), rtol=0.03)
    np.testing.assert_allclose(log_theta.exp().detach().numpy(), theta0.numpy(), rtol=0.1)


def test_zinb_maximum_likelihood_recovers_parameters():
    torch.manual_seed(11)
    mu0, theta0, logit0 = (
        torch.tensor([6.0], dtype=D),
        torch.tensor([3.0], dtype=D),
        torch.tensor([-1.0], dtype=D),
    )
    v, f = _compress(ZeroInflatedNegativeBinomial(mu0, theta0, logit0).sample((60_000,)))
    log_mu = torch.zeros(1, dtype=D, requires_grad=True)
    log_theta = torch.zeros(1, dtype=D, requires_grad=True)
    logit = torch.zeros(1, dtype=D, requires_grad=True)
    nll = lambda: -(f * ZeroInflatedNegativeBinomial(log_mu.exp(), log_theta.exp(), logit).log_prob(v)).sum()  # noqa: E731
    _fit(nll, [log_mu, log_theta, logit], steps=800)
    assert abs(log_mu.exp().item() - 6.0) / 6.0 < 0.03
    assert abs(log_theta.exp().item() - 3.0) / 3.0 < 0.15
    assert abs(torch.sigmoid(logit).item() - torch.sigmoid(logit0).item()) < 0.02


@pytest.mark.parametrize("dist", [Poisson, CountPresence])
def test_poisson_and_presence_maximum_likelihood(dist):
    torch.manual_seed(12)
    mu0 = torch.tensor([0.4, 2.5], dtype=D)
    v, f = _compress(dist(mu0).sample((40_000,)))
    log_mu = torch.zeros(2, dtype=D, requires_grad=True)
    _fit(lambda: -(f * dist(log_mu.exp()).log_prob(v)).sum(), [log_mu])
    np.testing.assert_allclose(
        log_mu.exp().detach().numpy(), mu0.numpy(), rtol=0.03 if dist is Poisson else 0.06
    )


def test_gaussian_maximum_likelihood():
    torch.manual_seed(13)
    x = Gaussian(torch.tensor([1.5], dtype=D), torch.tensor([0.8], dtype=D)).sample((20_000,))
    mu = torch.zeros(1, dtype=D, requires_grad=True)
    log_sigma = torch.zeros(1, dtype=D, requires_grad=True)
    _fit(lambda: -Gaussian(mu, log_sigma.exp()).log_prob(x).mean(), [mu, log_sigma])
    assert abs(mu.item() - 1.5) < 0.03
    assert abs(log_sigma.exp().item() - 0.8) < 0.02


# ------------------------------------------------------------------------------------ spot likelihood
def test_spot_nb_moment_matching_analytic():
    m = torch.tensor([[1.0, 3.0, 6.0], [0.2, 0.2, 0.2]], dtype=D)  # sub-spot means (rows: spots)
    theta = torch.tensor(2.0, dtype=D)
    d = spot_likelihood("nb", m.sum(1), (m**2).sum(1), theta=theta)
    np.testing.assert_allclose(d.mean.numpy(), m.sum(1).numpy())
    want_var = (m + m**2 / theta).sum(1)  # sum of the parts' variances
    np.testing.assert_allclose(d.variance.numpy(), want_var.numpy(), rtol=1e-6)
    # without sum_sq: a plain NB with the given theta
    plain = spot_likelihood("nb", m.sum(1), theta=theta)
    np.testing.assert_allclose(plain.variance.numpy(), (m.sum(1) + m.sum(1) ** 2 / theta).numpy())


def test_spot_nb_moment_matching_simulated():
    torch.manual_seed(20)
    parts = torch.tensor([1.0, 3.0, 6.0, 0.5], dtype=D)
    theta = torch.tensor(2.0, dtype=D)
    draws = NegativeBinomial(parts, theta).sample((300_000,)).sum(-1).numpy()  # independent NB parts
    d = spot_likelihood("nb", parts.sum()[None], (parts**2).sum()[None], theta=theta)
    assert isinstance(d, NegativeBinomial)
    np.testing.assert_allclose(draws.mean(), d.mean.item(), rtol=0.01)
    np.testing.assert_allclose(draws.var(), d.variance.item(), rtol=0.03)
    # a plain NB of the summed mean overstates the spread of the sum
    naive = parts.sum() + parts.sum() ** 2 / theta
    assert draws.var() < 0.8 * naive.item()
    # and the matched NB describes the sums: its zero probability agrees with the simulated one
    np.testing.assert_allclose(
        np.exp(d.log_prob(torch.zeros(1, dtype=D)).item()), (draws == 0).mean(), atol=3e-3
    )


def test_spot_likelihood_dispatch():
    mean = torch.full((2, 3), 2.0, dtype=D)
    one = torch.ones(3, dtype=D)
    assert isinstance(
        spot_likelihood("zinb", mean, mean, theta=one, zi_logits=-one), ZeroInflatedNegativeBinomial
    )
    assert isinstance(spot_likelihood("poisson", mean), Poisson)
    assert isinstance(spot_likelihood("bernoulli", mean), CountPresence)
    assert isinstance(spot_likelihood("gaussian", mean, sigma=one), Gaussian)
    with pytest.raises(ValueError, match="unknown likelihood"):
        spot_likelihood("gamma", mean)


def test_nb_log_prob_float32_accuracy():
    """The network runs in float32: the NB stays accurate there over realistic ranges."""
    mu, theta = _grid([0.3, 2.0, 15.0, 120.0, 1000.0], [0.5, 3.0, 40.0, 500.0])
    k = np.arange(0, 300)[:, None].astype(float)
    f = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
    got = NegativeBinomial(f(mu), f(theta)).log_prob(f(k)).double().numpy()
    want = stats.nbinom.logpmf(k, n=theta, p=theta / (theta + mu))
    relevant = want > -50
    np.testing.assert_allclose(got[relevant], want[relevant], atol=2e-3, rtol=1e-5)
