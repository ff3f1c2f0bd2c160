"""soscope: super-resolution and denoising of spatial omics (soScope) for SpatialData.

``soscope.enhance(sdata)`` splits each measured spot into sub-spots, guided by the image, and writes
sub-spot polygons and an enhanced table back into the SpatialData.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ._errors import ModelCompatibilityError, SoscopeError, SoscopeInputError, TrainingDivergedError
from ._version import __version__

if TYPE_CHECKING:
    from . import datasets, evaluate, io, pl
    from ._enhance import enhance
    from ._settings import settings
    from .model import SoScope

__all__ = [
    "ModelCompatibilityError",
    "SoScope",
    "SoscopeError",
    "SoscopeInputError",
    "TrainingDivergedError",
    "__version__",
    "datasets",
    "enhance",
    "evaluate",
    "io",
    "pl",
    "settings",
]

_LAZY = {
    "enhance": ("._enhance", "enhance"),
    "SoScope": (".model", "SoScope"),
    "settings": ("._settings", "settings"),
}
_SUBMODULES = {
    "datasets",
    "evaluate",
    "io",
    "pl",
    "geometry",
    "features",
    "module",
    "model",
    "train",
    "tiling",
}


def __getattr__(name: str):
    # heavy imports (torch, spatialdata) only when used, so `import soscope` and the CLI stay fast
    if name in _LAZY:
        mod, attr = _LAZY[name]
        value = getattr(importlib.import_module(mod, __name__), attr)
    elif name in _SUBMODULES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module 'soscope' has no attribute {name!r}")
    globals()[name] = value
    return value
