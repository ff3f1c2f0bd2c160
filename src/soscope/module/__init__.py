"""Pure-torch parts of soscope: likelihoods, layers and the soScope network (no SpatialData here)."""

from ._distributions import (
    COUNT_LIKELIHOODS,
    LIKELIHOODS,
    CountPresence,
    Gaussian,
    NegativeBinomial,
    Poisson,
    ZeroInflatedNegativeBinomial,
    spot_likelihood,
)
from ._layers import GraphAttention, ResidualBlock
from ._soscope import N_TRAINED_BATCHES, LazyColumns, ModalitySpec, ModuleConfig, SoScopeModule, SpotBatch

__all__ = [
    "COUNT_LIKELIHOODS",
    "LIKELIHOODS",
    "N_TRAINED_BATCHES",
    "CountPresence",
    "Gaussian",
    "GraphAttention",
    "LazyColumns",
    "ModalitySpec",
    "ModuleConfig",
    "NegativeBinomial",
    "Poisson",
    "ResidualBlock",
    "SoScopeModule",
    "SpotBatch",
    "ZeroInflatedNegativeBinomial",
    "spot_likelihood",
]
