"""Likelihoods of spot observations, as ``torch.distributions.Distribution`` subclasses.

Every likelihood here is parameterised by the *mean* of the spot observation (``mu``) plus its own
shape parameters, because a spot's mean is built by summing sub-spot means (see ``spot_observation``).
"""

from __future__ import annotations

import torch
from torch.distributions import Distribution, constraints

from .._likelihoods import LIKELIHOODS as _REGISTRY

_EPS = 1e-8
_NO_SHAPE = torch.Size()  # default sample shape: one draw per parameter (a shared immutable default)

#: the registry's names (:mod:`soscope._likelihoods`), and those whose spot observation sums its sub-spots
LIKELIHOODS = tuple(_REGISTRY)
COUNT_LIKELIHOODS = tuple(name for name, info in _REGISTRY.items() if info.is_count)


class NegativeBinomial(Distribution):
    """Negative binomial with mean ``mu`` and inverse dispersion ``theta`` (variance ``mu + mu**2/theta``)."""

    arg_constraints = {"mu": constraints.nonnegative, "theta": constraints.positive}
    support = constraints.nonnegative_integer

    def __init__(self, mu: torch.Tensor, theta: torch.Tensor, validate_args: bool = False):
        self.mu, self.theta = torch.broadcast_tensors(mu, theta)
        super().__init__(self.mu.shape, validate_args=validate_args)

    @property
    def mean(self) -> torch.Tensor:
        return self.mu

    @property
    def variance(self) -> torch.Tensor:
        return self.mu + self.mu**2 / self.theta

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        mu, theta = self.mu, self.theta
        log_theta_mu = torch.log(theta + mu + _EPS)
        return (
            theta * (torch.log(theta + _EPS) - log_theta_mu)
            + value * (torch.log(mu + _EPS) - log_theta_mu)
            + torch.lgamma(value + theta)
            - torch.lgamma(theta)
            - torch.lgamma(value + 1.0)
        )

    def sample(self, sample_shape: torch.Size = _NO_SHAPE) -> torch.Tensor:
        with torch.no_grad():
            rate = torch.distributions.Gamma(self.theta, self.theta / (self.mu + _EPS)).sample(sample_shape)
            return torch.poisson(rate)


class ZeroInflatedNegativeBinomial(NegativeBinomial):
    """NB with an extra point mass at zero: ``pi`` (probability of a structural zero) given as logits."""

    def __init__(self, mu: torch.Tensor, theta: torch.Tensor, zi_logits: torch.Tensor, validate_args=False):
        super().__init__(mu, theta, validate_args=validate_args)
        self.zi_logits = torch.broadcast_to(zi_logits, self.mu.shape)

    @property
    def mean(self) -> torch.Tensor:
        return (1 - torch.sigmoid(self.zi_logits)) * self.mu

    @property
    def variance(self) -> torch.Tensor:
        # mixture of a point mass at 0 and the NB: (1 - pi) * Var_NB + pi * (1 - pi) * mu**2
        pi = torch.sigmoid(self.zi_logits)
        return (1 - pi) * (self.mu + self.mu**2 / self.theta) + pi * (1 - pi) * self.mu**2

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        nb = super().log_prob(value)
        log_pi = torch.nn.functional.logsigmoid(self.zi_logits)
        log_not_pi = torch.nn.functional.logsigmoid(-self.zi_logits)
        zero = torch.logaddexp(log_pi, log_not_pi + nb)
        return torch.where(value < 0.5, zero, log_not_pi + nb)

    def sample(self, sample_shape: torch.Size = _NO_SHAPE) -> torch.Tensor:
        with torch.no_grad():
            counts = super().sample(sample_shape)
            keep = torch.rand_like(counts) >= torch.sigmoid(self.zi_logits)
            return counts * keep


class Poisson(Distribution):
    """Poisson with mean ``mu`` (chromatin fragments, antibody tags)."""

    arg_constraints = {"mu": constraints.nonnegative}
    support = constraints.nonnegative_integer

    def __init__(self, mu: torch.Tensor, validate_args: bool = False):
        self.mu = mu
        super().__init__(mu.shape, validate_args=validate_args)

    @property
    def mean(self) -> torch.Tensor:
        return self.mu

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return value * torch.log(self.mu + _EPS) - self.mu - torch.lgamma(value + 1.0)

    def sample(self, sample_shape: torch.Size = _NO_SHAPE) -> torch.Tensor:
        with torch.no_grad():
            return torch.poisson(self.mu.expand(sample_shape + self.mu.shape))


class CountPresence(Distribution):
    """Bernoulli observation of "at least one count": ``P(1) = 1 - exp(-mu)`` for a Poisson mean ``mu``.

    Binarised peaks or fragments say only whether a spot had any; the spot is open when any of its
    sub-spots contributed, which is what this likelihood states.
    """

    arg_constraints = {"mu": constraints.nonnegative}
    support = constraints.boolean

    def __init__(self, mu: torch.Tensor, validate_args: bool = False):
        self.mu = mu
        super().__init__(mu.shape, validate_args=validate_args)

    @property
    def mean(self) -> torch.Tensor:
        return -torch.expm1(-self.mu)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        mu = self.mu.clamp_min(_EPS)
        log_p1 = torch.log(-torch.expm1(-mu))
        return torch.where(value > 0.5, log_p1, -mu)

    def sample(self, sample_shape: torch.Size = _NO_SHAPE) -> torch.Tensor:
        with torch.no_grad():
            return torch.bernoulli(self.mean.expand(sample_shape + self.mu.shape))


class Gaussian(Distribution):
    """Normal with mean ``mu`` and standard deviation ``sigma`` (normalised or continuous data)."""

    arg_constraints = {"mu": constraints.real, "sigma": constraints.positive}
    support = constraints.real

    def __init__(self, mu: torch.Tensor, sigma: torch.Tensor, validate_args: bool = False):
        self.mu, self.sigma = torch.broadcast_tensors(mu, sigma)
        super().__init__(self.mu.shape, validate_args=validate_args)

    @property
    def mean(self) -> torch.Tensor:
        return self.mu

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        var = self.sigma**2
        return -0.5 * ((value - self.mu) ** 2 / var + torch.log(2 * torch.pi * var))

    def sample(self, sample_shape: torch.Size = _NO_SHAPE) -> torch.Tensor:
        with torch.no_grad():
            return torch.normal(self.mu.expand(sample_shape + self.mu.shape), self.sigma)


def spot_likelihood(
    name: str,
    mean: torch.Tensor,
    sum_sq: torch.Tensor | None = None,
    *,
    theta: torch.Tensor | None = None,
    zi_logits: torch.Tensor | None = None,
    sigma: torch.Tensor | None = None,
) -> Distribution:
    """Distribution of a spot's observation built from its sub-spots' contributions.

    Parameters
    ----------
    name
        One of :data:`LIKELIHOODS`.
    mean
        ``(n, F)`` expected spot observation: the footprint-weighted sum of sub-spot expected counts
        (count likelihoods) or the area-weighted mean of sub-spot values (``gaussian``).
    sum_sq
        ``(n, F)`` sum over sub-spots of the squared contributions (NB family only). A sum of
        independent NB variables with common ``theta`` has mean ``sum m_k`` and variance
        ``sum m_k + sum m_k**2 / theta``; an NB with ``theta_eff = theta * (sum m_k)**2 / sum m_k**2``
        matches both moments — the overdispersion of a spot that sums several sub-spots, rather than
        the published code's MSE on means.
    theta, zi_logits, sigma
        Shape parameters of the NB (inverse dispersion), ZINB (zero-inflation logits) and Gaussian.

    """
    if name in ("nb", "zinb"):
        theta_eff = theta if sum_sq is None else theta * (mean**2 + _EPS) / (sum_sq + _EPS)
        if name == "nb":
            return NegativeBinomial(mean, theta_eff)
        return ZeroInflatedNegativeBinomial(mean, theta_eff, zi_logits)
    if name == "poisson":
        return Poisson(mean)
    if name == "bernoulli":
        return CountPresence(mean)
    if name == "gaussian":
        return Gaussian(mean, sigma)
    raise ValueError(f"unknown likelihood {name!r}; choose one of {LIKELIHOODS}")
