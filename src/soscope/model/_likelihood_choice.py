"""``likelihood="auto"``: pick each modality's likelihood from its data, and say why."""

from __future__ import annotations

import logging

import numpy as np
import scipy.sparse as sp

from .._errors import SoscopeInputError
from .._likelihoods import likelihood_info
from ..io import is_integer_valued

logger = logging.getLogger("soscope")

_CHROMATIN_WORDS = ("peak", "atac", "chromatin", "cut&tag", "cuttag", "fragment", "dna")


def _sample_values(x, max_values: int = 2_000_000) -> np.ndarray:
    data = x.data if sp.issparse(x) else np.asarray(x).ravel()
    return np.asarray(data[:max_values], dtype=np.float64)


def choose_likelihood(x, modality: str) -> tuple[str, str]:
    """Return the likelihood for one modality's ``(N, F)`` matrix and a sentence saying why.

    Integer counts → negative binomial (``"nb"``), except binary matrices → ``"bernoulli"`` and chromatin
    modalities (peaks, ATAC, CUT&Tag: sparse, little overdispersion once binned) → ``"poisson"``;
    non-integer data → ``"gaussian"``.
    """
    v = _sample_values(x)
    if not is_integer_valued(x):
        return "gaussian", "values are not integers (normalised or continuous data)"
    # integers with negative entries are broken counts, not continuous data: the count check reports them
    if v.size and v.max() <= 1:
        return "bernoulli", "values are binary (0/1): presence of counts"
    if any(w in modality.lower() for w in _CHROMATIN_WORDS):
        return "poisson", f"integer counts of a chromatin modality ({modality!r})"
    return "nb", "integer counts"


def resolve_likelihoods(matrices: list, modalities: list[str], likelihood: str | dict) -> dict[str, str]:
    """Map each modality to a likelihood name from the user's ``likelihood`` argument."""
    chosen = {}
    for x, name in zip(matrices, modalities, strict=True):
        requested = likelihood.get(name, "auto") if isinstance(likelihood, dict) else likelihood
        if requested == "auto":
            chosen[name], why = choose_likelihood(x, name)
            logger.info("likelihood='auto' picked %r for modality %r: %s", chosen[name], name, why)
        else:
            try:
                chosen[name] = likelihood_info(requested).name
            except SoscopeInputError as err:
                raise SoscopeInputError(f"modality {name!r}: {err}") from None
    if isinstance(likelihood, dict):
        unknown = set(likelihood) - set(modalities)
        if unknown:
            raise SoscopeInputError(
                f"likelihood names modalities {sorted(unknown)} that the data does not have; modalities are "
                f"{modalities}"
            )
    return chosen
