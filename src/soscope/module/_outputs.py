"""Sub-spot outputs given the observed spots: conditional means and posterior predictive draws.

Pure tensor functions (no network): :meth:`SoScopeModule.enhance` calls them with the decoded sub-spot
values. Notation, for a spot ``i`` and its sub-spots ``k`` (one feature; everything is per feature):

* ``a_k``: polygon area relative to the mean footprint area; ``w_k``: the polygon's share inside the
  spot's footprint (``sub_weight``);
* counts: ``lam_k`` the expected counts in the whole polygon (``a_k`` is already in it), split into an
  inside part ``w_k lam_k`` and an outside part ``(1 - w_k) lam_k``; the spot observes the sum of the
  inside parts, ``x_i``, with mean ``Lam_i = sum_k w_k lam_k``;
* Gaussian: ``v_k`` the sub-spot value; the spot observes ``sum_k c_k v_k`` with
  ``c_k = a_k w_k / sum_j a_j w_j`` (the area-weighted mean over the footprint).

Every function takes sub-spot tensors ``(m, F)`` (or ``(m,)`` for ``a``, ``w``), the parent row of each
sub-spot ``sub_spot`` ``(m,)`` and the spot observations ``x`` ``(n, F)``.
"""

from __future__ import annotations

import torch

from ._distributions import NegativeBinomial, Poisson, ZeroInflatedNegativeBinomial

_TINY = 1e-30


def spot_sum(values: torch.Tensor, sub_spot: torch.Tensor, n_spots: int) -> torch.Tensor:
    """Sum ``(m, F)`` sub-spot values into their spots: ``(n, F)``."""
    out = torch.zeros((n_spots,) + values.shape[1:], dtype=values.dtype, device=values.device)
    return out.index_add_(0, sub_spot, values)


def _col(t: torch.Tensor) -> torch.Tensor:
    return t[:, None] if t.dim() == 1 else t


def inside_share(
    rate: torch.Tensor, weight: torch.Tensor, sub_spot: torch.Tensor, n_spots: int
) -> torch.Tensor:
    """Return each sub-spot's share of its spot's expected inside counts, ``w_k lam_k / Lam_i`` ``(m, F)``.

    Independent Poisson (or NB with a common shape, to first order) parts given their sum ``x_i`` are
    multinomial with these probabilities. The shares of a spot sum to 1 (0 where ``Lam_i`` is 0).
    """
    inside = _col(weight) * rate
    total = spot_sum(inside, sub_spot, n_spots)
    return inside / total[sub_spot].clamp_min(1e-12)


def condition_counts(
    rate: torch.Tensor,
    weight: torch.Tensor,
    sub_spot: torch.Tensor,
    x: torch.Tensor,
    *,
    outside_mean: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Return the expected counts in each sub-spot polygon given its spot's counts (NB, Poisson, ZINB).

    .. math::

        E[N_k \mid x_i] = (1 - w_k)\,\mu^{out}_k + x_i \, \frac{w_k \lambda_k}{\sum_j w_j \lambda_j}

    The inside part is the observed spot counts split in proportion to ``w_k lam_k`` (the conditional of
    independent Poisson parts given their sum; for the ZINB a non-zero spot is not a structural zero, so
    the same split holds, and a zero spot has zero inside counts either way). The outside part is not
    observed: its expected value ``mu_out_k`` is ``(1 - w_k) lam_k`` for the NB and Poisson, and
    ``(1 - w_k)(1 - pi) lam_k`` for the ZINB (``outside_mean = (1 - pi) lam``).

    Parameters
    ----------
    rate
        ``(m, F)`` expected counts ``lam`` in each polygon.
    weight
        ``(m,)`` footprint shares ``w``.
    sub_spot
        ``(m,)`` parent spot row of each sub-spot.
    x
        ``(n, F)`` observed spot counts.
    outside_mean
        ``(m, F)`` expected counts per polygon for the unobserved outside part (default ``rate``).

    """
    w = _col(weight)
    share = inside_share(rate, weight, sub_spot, x.shape[0])
    outside = rate if outside_mean is None else outside_mean
    return (1 - w) * outside + x[sub_spot] * share


def presence_probability(
    rate: torch.Tensor, weight: torch.Tensor, sub_spot: torch.Tensor, x: torch.Tensor | None
) -> torch.Tensor:
    r"""Return the probability that a sub-spot polygon holds a count given its spot's presence (Bernoulli).

    Counts in the polygon are Poisson(``lam_k``), split into independent inside (``w_k lam_k``) and
    outside (``(1 - w_k) lam_k``) parts; the spot observes ``x_i = 1[sum_k inside_k > 0]``:

    .. math::

        P(N_k > 0 \mid x_i) = 1 - e^{-(1 - w_k)\lambda_k}\,\bigl(1 - x_i\, q_k\bigr), \qquad
        q_k = P(\text{inside}_k > 0 \mid x_i = 1) = \frac{1 - e^{-w_k \lambda_k}}{1 - e^{-\Lambda_i}}

    with ``Lam_i = sum_j w_j lam_j``. A spot observed 0 leaves each sub-spot only its outside part,
    ``1 - exp(-(1 - w_k) lam_k)`` (0 for a polygon inside the footprint); ``x=None`` gives the
    unconditioned ``1 - exp(-lam_k)``.
    """
    if x is None:
        return -torch.expm1(-rate)
    w = _col(weight)
    inside = w * rate
    total = spot_sum(inside, sub_spot, x.shape[0])[sub_spot]
    # q = (1 - e^{-w lam}) / (1 - e^{-Lam}), both via expm1 (accurate for small rates)
    q = (torch.expm1(-inside) / torch.expm1(-total).clamp(max=-_TINY)).clamp(0.0, 1.0)
    observed = (x[sub_spot] > 0.5).to(rate.dtype)
    return -torch.expm1(-(1 - w) * rate) * (1 - observed * q) + observed * q


def footprint_coefficients(area: torch.Tensor, weight: torch.Tensor, sub_spot: torch.Tensor, n_spots: int):
    """Return the Gaussian spot weights ``c_k = a_k w_k / sum_j a_j w_j`` and per sub-spot ``sum_j c_j**2``.

    Parameters are as in :func:`condition_gaussian`.
    """
    u = (area * weight)[:, None]
    c = u / spot_sum(u, sub_spot, n_spots)[sub_spot].clamp_min(1e-12)
    c2 = spot_sum(c * c, sub_spot, n_spots)[sub_spot]
    return c, c2


def condition_gaussian(
    value: torch.Tensor, area: torch.Tensor, weight: torch.Tensor, sub_spot: torch.Tensor, x: torch.Tensor
) -> torch.Tensor:
    r"""Return sub-spot values given the spot value (Gaussian): the residual split in proportion to ``a w``.

    With independent sub-spot deviations of equal variance around the model values ``v_k`` and the spot
    observing ``sum_k c_k v_k`` (``c_k = a_k w_k / sum_j a_j w_j``), the conditional mean of each sub-spot
    given the spot residual ``r_i = x_i - sum_j c_j v_j`` is

    .. math::

        E[v_k \mid x_i] = v_k + r_i \, \frac{c_k}{\sum_j c_j^2}

    — proportional to ``a_k w_k``, and the footprint-weighted mean of the result equals ``x_i`` exactly.
    Sub-spots outside the footprint (``w_k = 0``) keep ``v_k``; equal weights give every sub-spot the whole
    residual.
    """
    c, c2 = footprint_coefficients(area, weight, sub_spot, x.shape[0])
    residual = x - spot_sum(c * value, sub_spot, x.shape[0])
    return value + residual[sub_spot] * c / c2.clamp_min(1e-12)


# ------------------------------------------------------------------------------------------ draws
def within_spot_rank(
    sub_spot: torch.Tensor, n_spots: int, weight: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return each sub-spot's rank among its spot's sub-spots and its spot's number of ranked sub-spots.

    Ranks follow the row order; with ``weight``, sub-spots inside the footprint (``w > 0``) come first and
    only they are counted, so the last ranked sub-spot of a spot is the last one that can take counts.
    """
    outside = torch.zeros_like(sub_spot) if weight is None else (weight <= 0).to(sub_spot.dtype)
    order = torch.sort(sub_spot * 2 + outside, stable=True).indices
    counts = torch.bincount(sub_spot, minlength=n_spots)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(sub_spot)
    rank[order] = torch.arange(len(sub_spot), device=sub_spot.device) - starts[sub_spot[order]]
    ranked = torch.bincount(sub_spot, weights=(1 - outside).to(torch.float64), minlength=n_spots).long()
    return rank, ranked[sub_spot]


def sample_multinomial_split(
    share: torch.Tensor,
    sub_spot: torch.Tensor,
    x: torch.Tensor,
    ranks: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Draw each spot's counts split over its sub-spots: ``(N_k)_k | x_i ~ Multinomial(x_i, p)``.

    ``share`` ``(m, F)`` holds ``p`` (summing to 1 over a spot's sub-spots). Drawn as a chain of
    binomials, one sub-spot rank at a time (``N_k ~ Binomial(x_i - sum_{j<k} N_j, p_k / (1 - sum_{j<k}
    p_j))``), so the cost is linear in the sub-spots. Non-integer observations split their integer part at
    random and their fractional part in proportion to ``p`` (the expected split is ``x_i p_k`` either way).
    ``ranks``: :func:`within_spot_rank` of ``sub_spot`` and the footprint weights (the same every draw).
    """
    rank, size = within_spot_rank(sub_spot, x.shape[0]) if ranks is None else ranks
    counts = torch.floor(x.clamp_min(0))
    frac = x.clamp_min(0) - counts
    remaining = counts.clone()
    remaining_p = torch.ones_like(x)
    out = torch.empty_like(share)
    for r in range(int(rank.max()) + 1 if len(rank) else 0):
        rows = torch.nonzero(rank == r).squeeze(1)
        spots = sub_spot[rows]
        p = share[rows]
        prob = (p / remaining_p[spots].clamp_min(1e-12)).clamp(0.0, 1.0)
        # a spot's last ranked sub-spot takes the rest (its ratio is 1 up to rounding)
        prob = torch.where((size[rows] == r + 1)[:, None], torch.ones_like(prob), prob)
        draw = torch.binomial(remaining[spots], prob)
        out[rows] = draw
        remaining[spots] -= draw
        remaining_p[spots] -= p
    return out + frac[sub_spot] * share


def sample_dirichlet_share(
    share: torch.Tensor, sub_spot: torch.Tensor, n_spots: int, concentration: torch.Tensor
) -> torch.Tensor:
    """Draw split probabilities ``(G_k / sum_j G_j)_k ~ Dirichlet(concentration_i * p)`` for each spot.

    The NB's overdispersion says a sub-spot's true rate varies around ``lam_k``: the parts are Poisson with
    gamma rates. With a common gamma scale per spot, chosen so that the spot total has the spot likelihood's
    moment-matched NB variance (``theta_eff = theta (sum_k m_k)**2 / sum_k m_k**2``, ``m_k = w_k lam_k``,
    see :func:`~soscope.module.spot_likelihood`), the gamma shapes are ``theta_eff p_k`` and the shares of
    the rates are Dirichlet: the split of the observed counts is then Dirichlet-multinomial, with mean
    ``x_i p_k`` as the multinomial's and the extra spread of the sub-spots' own variation. ``concentration``
    is ``theta_eff`` per sub-spot row ``(m, F)``; as it grows (Poisson) the draws tend to ``p``.
    """
    alpha = concentration * share
    g = torch.distributions.Gamma(alpha.clamp_min(1e-6), torch.ones_like(alpha)).sample() * (share > 0)
    total = spot_sum(g, sub_spot, n_spots)[sub_spot]
    # a spot whose draws all underflow (tiny shapes) keeps the expected shares
    return torch.where(total > 0, g / total.clamp_min(1e-30), share)


def sample_outside(
    likelihood: str,
    mean: torch.Tensor,
    *,
    theta: torch.Tensor | None = None,
    zi_logits: torch.Tensor | None = None,
) -> torch.Tensor:
    """Draw the unobserved outside-footprint counts of each polygon (observation noise around ``mean``).

    ``mean`` is the expected count of the NB/Poisson part before zero inflation (``(1 - w) lam``); NB and
    ZINB draws use the modality's inverse dispersion ``theta`` per polygon part, as the spot likelihood
    does for each sub-spot's contribution.
    """
    if likelihood == "nb":
        return NegativeBinomial(mean, theta).sample()
    if likelihood == "zinb":
        return ZeroInflatedNegativeBinomial(mean, theta, zi_logits).sample()
    if likelihood == "poisson":
        return Poisson(mean).sample()
    raise ValueError(f"no outside-footprint draws for likelihood {likelihood!r}")


def sample_gaussian(
    value: torch.Tensor,
    area: torch.Tensor,
    weight: torch.Tensor,
    sub_spot: torch.Tensor,
    x: torch.Tensor,
    sigma: torch.Tensor,
) -> torch.Tensor:
    """Draw sub-spot values given the observed spot value (Gaussian).

    Sub-spot values are ``v_k + e_k`` with independent ``e_k ~ N(0, sigma**2)`` (``sigma``: the modality's
    noise scale); given the spot constraint ``sum_k c_k (v_k + e_k) = x_i`` each is Gaussian with the mean
    of :func:`condition_gaussian` and variance ``sigma**2 (1 - c_k**2 / sum_j c_j**2)`` (a sub-spot outside
    the footprint: ``sigma**2``; a spot of one sub-spot: 0).
    """
    c, c2 = footprint_coefficients(area, weight, sub_spot, x.shape[0])
    mean = condition_gaussian(value, area, weight, sub_spot, x)
    sd = sigma * torch.sqrt((1 - c * c / c2.clamp_min(1e-12)).clamp_min(0.0))
    return mean + sd * torch.randn_like(mean)


def quantile(draws: torch.Tensor, q: float) -> torch.Tensor:
    """Return the ``q`` quantile over the first axis (linear interpolation, as numpy's default).

    Uses two ``kthvalue`` selections rather than a sort (which would hold an int64 index per draw), so the
    memory beyond ``draws`` is that of the result.
    """
    s = draws.shape[0]
    pos = q * (s - 1)
    lo = int(pos)
    hi = min(lo + 1, s - 1)
    v_lo = torch.kthvalue(draws, lo + 1, dim=0).values
    if hi == lo or pos == lo:
        return v_lo
    v_hi = torch.kthvalue(draws, hi + 1, dim=0).values
    return v_lo + (pos - lo) * (v_hi - v_lo)
