"""The likelihood registry: every observation model soscope knows, with what it demands of the data.

Torch-free on purpose: input validation (``soscope.io``) and the CLI consult it without importing torch.
The distributions themselves are in :mod:`soscope.module._distributions`, keyed by these names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ._errors import SoscopeInputError


@dataclass(frozen=True)
class LikelihoodInfo:
    """One observation model.

    Attributes
    ----------
    name
        The name users pass (``likelihood="nb"``).
    values
        What the observations must be: ``"counts"`` (non-negative integers), ``"binary"`` (0/1) or
        ``"real"`` (any finite value).
    description
        One line for messages and docs.
    aliases
        Other spellings accepted for it.

    """

    name: str
    values: Literal["counts", "binary", "real"]
    description: str
    aliases: tuple[str, ...] = ()

    @property
    def is_count(self) -> bool:
        """Whether a spot's observation is the sum of its sub-spots' counts (every non-Gaussian model)."""
        return self.values != "real"


#: The observation models, by name (the order is the documented one).
LIKELIHOODS: dict[str, LikelihoodInfo] = {
    info.name: info
    for info in (
        LikelihoodInfo("nb", "counts", "negative binomial: overdispersed counts", ("negative_binomial",)),
        LikelihoodInfo("zinb", "counts", "zero-inflated negative binomial: counts with excess zeros"),
        LikelihoodInfo("poisson", "counts", "Poisson: counts without overdispersion (ADT, fragments)"),
        LikelihoodInfo("bernoulli", "binary", "Bernoulli: presence of counts (binarised chromatin)"),
        LikelihoodInfo("gaussian", "real", "Gaussian: continuous or normalised values"),
    )
}
#: Names whose observations must be non-negative integers / 0-1 values (aliases included).
INTEGER_LIKELIHOODS = frozenset(
    n for info in LIKELIHOODS.values() if info.values == "counts" for n in (info.name, *info.aliases)
)
BINARY_LIKELIHOODS = frozenset(
    n for info in LIKELIHOODS.values() if info.values == "binary" for n in (info.name, *info.aliases)
)


def likelihood_info(name: str) -> LikelihoodInfo:
    """Return the registry entry of ``name`` (or one of its aliases, case-insensitive).

    Raises
    ------
    SoscopeInputError
        When ``name`` is no known likelihood (the message lists them).

    """
    key = str(name).strip().lower()
    for info in LIKELIHOODS.values():
        if key == info.name or key in info.aliases:
            return info
    raise SoscopeInputError(
        f"unknown likelihood {name!r}; choose one of {list(LIKELIHOODS)} (or 'auto' to choose from the data)"
    )
