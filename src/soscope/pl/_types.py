"""Cell-type abundance maps of an enhancement with a single-cell reference: spots next to sub-spots."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from soscope._constants import SoscopeKeys
from soscope._errors import SoscopeInputError
from soscope.io import choose_coordinate_system
from soscope.pl._maps import _draw_map, _style, _table_map
from soscope.pl._utils import new_figure, save_figure

__all__ = ["cell_types"]


def _fractions_table(adata: Any) -> Any:
    """Return ``adata``'s rows with ``X`` the type fractions of its ``obsm["cell_type_abundance"]``."""
    import anndata as ad

    ab = np.asarray(adata.obsm[SoscopeKeys.CELL_TYPE_ABUNDANCE], dtype=np.float64)
    total = ab.sum(1, keepdims=True)
    frac = np.divide(ab, total, out=np.full_like(ab, np.nan), where=total > 0).astype(np.float32)
    types = [str(t) for t in adata.uns[SoscopeKeys.UNS]["reference"]["cell_types"]]
    out = ad.AnnData(X=frac, obs=adata.obs.copy(), uns={"spatialdata_attrs": adata.uns["spatialdata_attrs"]})
    out.var_names = types
    return out


def _regions(adata: Any) -> list[str]:
    region = adata.uns["spatialdata_attrs"]["region"]
    return [region] if isinstance(region, str) else list(region)


def cell_types(
    sdata: Any,
    types: str | Sequence[str] | None = None,
    *,
    key_added: str = "soscope",
    table: str = "table",
    coordinate_system: str | None = None,
    n_types: int = 4,
    cmap: str = "magma",
    panel_size: float = 3.2,
    dpi: float = 100,
    save: str | os.PathLike | None = None,
):
    """Map each cell type's share at spot and at sub-spot resolution (an enhancement with ``reference=``).

    Row 1: each spot's type fractions (the spot table ``f"{table}_{key_added}_spots"``); row 2: each
    sub-spot's (``obsm["cell_type_abundance"]`` of the enhanced table), on one colour scale (0–1) per type.

    Parameters
    ----------
    sdata
        A SpatialData that :func:`soscope.enhance` wrote into with a reference.
    types
        Type names (``uns["soscope"]["reference"]["cell_types"]``); default the ``n_types`` most abundant.
    key_added, table
        The ``key_added`` of the enhancement and the input table's name.
    coordinate_system
        Where to draw (default: the shared one, ``"global"`` first).
    n_types
        How many types to draw when ``types`` is None.
    cmap, panel_size, dpi
        Colour map, panel width (inches) and resolution.
    save
        Write the figure to this path.

    Returns
    -------
    The matplotlib :class:`~matplotlib.figure.Figure`.

    Raises
    ------
    SoscopeInputError
        No enhancement with a reference under ``key_added``, or unknown type names.

    """
    import spatialdata as sd
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    enhanced_name, spots_name = f"{table}_{key_added}", f"{table}_{key_added}_spots"
    for name in (enhanced_name, spots_name):
        if name not in sdata.tables:
            raise SoscopeInputError(
                f"No table {name!r}: enhance with a single-cell reference first "
                f"(soscope.enhance(sdata, reference=..., key_added={key_added!r})); tables: "
                f"{sorted(sdata.tables)}"
            )
    enhanced = sdata.tables[enhanced_name]
    if SoscopeKeys.CELL_TYPE_ABUNDANCE not in enhanced.obsm:
        raise SoscopeInputError(
            f"Table {enhanced_name!r} has no obsm['cell_type_abundance']: no reference was used."
        )
    spot_fr, sub_fr = _fractions_table(sdata.tables[spots_name]), _fractions_table(enhanced)
    names = list(sub_fr.var_names)
    if types is None:
        order = np.argsort(-np.nansum(np.asarray(sub_fr.X), axis=0), kind="stable")
        chosen = [names[i] for i in order[:n_types]]
    else:
        chosen = [types] if isinstance(types, str) else list(types)
        unknown = [t for t in chosen if t not in names]
        if unknown:
            raise SoscopeInputError(f"Unknown cell type(s) {unknown}; the reference's types: {names}.")
    regions = {k: _regions(t) for k, t in (("spots", spot_fr), ("sub", sub_fr))}
    shapes = {r: sdata.shapes[r] for rs in regions.values() for r in rs}
    view = sd.SpatialData(shapes=shapes, tables={"_spot_types": spot_fr, "_subspot_types": sub_fr})
    cs = choose_coordinate_system(shapes, coordinate_system, purpose="the cell-type maps")
    cols = [names.index(t) for t in chosen]
    maps = {
        "spots": _table_map(view, "_spot_types", cols, cs, per_area=False),
        "sub": _table_map(view, "_subspot_types", cols, cs, per_area=False),
    }
    fig = new_figure((panel_size * len(chosen), panel_size * 2.1), dpi=dpi)
    axes = fig.subplots(2, len(chosen), squeeze=False)
    norm = Normalize(0.0, 1.0)
    bounds = maps["spots"].bounds()
    for j, t in enumerate(chosen):
        for i, (key, label) in enumerate((("spots", "spots"), ("sub", "sub-spots"))):
            _draw_map(axes[i, j], maps[key], j, cmap, norm, 1.0)
            _style(axes[i, j], bounds, f"{t}: {label}")
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=axes, shrink=0.6, label="share of the type")
    save_figure(fig, save, dpi)
    return fig
