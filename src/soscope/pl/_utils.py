"""Helpers shared by soscope's plots: headless figures, saving, shapes → polygon vertex lists."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from soscope._errors import SoscopeInputError
from soscope._transforms import affine_xy  # noqa: F401  (used by the plots)

#: Segments per quarter circle when circles (Point + radius) are drawn as polygons.
CIRCLE_QUAD_SEGS = 8


def new_figure(figsize: tuple[float, float], dpi: float = 100):
    """Return a matplotlib Figure that needs no GUI backend (rendered with Agg when saved).

    The figure is not registered with pyplot, so making it never opens a window and never leaks
    memory in loops; Jupyter displays the returned object, and ``fig.savefig`` writes it.
    """
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, dpi=dpi, layout="constrained")


def save_figure(fig: Any, save: str | os.PathLike | None, dpi: float | None = None) -> None:
    """Write ``fig`` to ``save`` (format from the suffix, default PNG) when ``save`` is given."""
    if save is None:
        return
    path = Path(save)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    if not path.suffix:
        path = path.with_suffix(".png")
    # Figure.savefig picks the Agg canvas for raster formats itself: no backend selection needed.
    # The figures use constrained layout: no `bbox_inches="tight"` (it would draw everything twice).
    fig.savefig(path, dpi=dpi or fig.dpi, facecolor="white")


def axes_list(ax: Any, n: int, what: str) -> list:
    """Normalise a user-given ``ax`` (one Axes, a sequence or an array of Axes) to a flat list of ``n``."""
    if hasattr(ax, "figure") and not isinstance(ax, (list, tuple, np.ndarray)):
        axes = [ax]
    else:
        axes = list(np.asarray(ax, dtype=object).ravel())
    if len(axes) != n:
        raise SoscopeInputError(
            f"`ax` must hold {n} Axes ({what}), got {len(axes)}: pass a matching list/array of Axes, "
            "or leave `ax=None` to make a new figure."
        )
    return axes


def shapes_polygons(gdf: Any) -> np.ndarray:
    """Return the shapes' geometries as polygons (circles, i.e. Point + ``radius``, are buffered)."""
    import shapely

    geoms = np.asarray(gdf.geometry.values, dtype=object)
    if len(geoms) == 0:
        return geoms
    kinds = shapely.get_type_id(geoms)
    points = kinds == 0
    if points.any():
        if "radius" not in gdf.columns:
            raise SoscopeInputError(
                "Shapes with Point geometry need a 'radius' column (spatialdata circles); parse them with "
                "`ShapesModel.parse(gdf)` after adding the radius."
            )
        geoms = geoms.copy()
        radius = np.asarray(gdf["radius"], dtype=float)
        geoms[points] = shapely.buffer(geoms[points], radius[points], quad_segs=CIRCLE_QUAD_SEGS)
    return geoms


def shapes_areas(gdf: Any, geoms: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Areas in the target coordinate system: intrinsic area times |det| of the linear part.

    Circles (Point + ``radius``) get the exact ``pi r^2``, not the area of their drawn polygon.
    """
    import shapely

    area = shapely.area(geoms)
    if len(gdf) and "radius" in gdf.columns:
        points = shapely.get_type_id(np.asarray(gdf.geometry.values, dtype=object)) == 0
        if points.any():
            r = np.asarray(gdf["radius"], dtype=float)
            area = np.where(points, np.pi * r**2, area)
    return area * abs(float(np.linalg.det(matrix[:2, :2])))


def polygon_vertices(geoms: np.ndarray, matrix: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """Exterior rings of ``geoms`` as vertex arrays in the target coordinate system, vectorised.

    Returns the list of ``(n_i, 2)`` arrays (one per polygon part: multi-polygons give several) and, for each,
    the index of the geometry it came from.
    """
    import shapely

    if len(geoms) == 0:
        return [], np.zeros(0, np.int64)
    parts, owner = shapely.get_parts(geoms, return_index=True)
    rings = shapely.get_exterior_ring(parts)
    coords, ring_of = shapely.get_coordinates(rings, return_index=True)
    coords = coords @ matrix[:2, :2].T + matrix[:2, 2]
    cuts = np.flatnonzero(np.diff(ring_of)) + 1
    verts = np.split(coords, cuts)
    present = ring_of[np.r_[0, cuts]] if len(ring_of) else np.zeros(0, np.int64)
    return verts, np.asarray(owner)[present]


def polygon_paths(verts: Sequence[np.ndarray]) -> list:
    """Make closed matplotlib paths from closed rings (first vertex repeated last), made in bulk.

    Building 30k ``Path`` objects through the checked constructor takes seconds; the codes are shared per
    ring length and the paths built with matplotlib's own fast constructor when it exists.
    """
    from matplotlib.path import Path

    fast = getattr(Path, "_fast_from_codes_and_verts", None)
    codes: dict[int, np.ndarray] = {}
    out = []
    template = Path(np.zeros((2, 2)))
    for v in verts:
        n = len(v)
        c = codes.get(n)
        if c is None:
            c = np.full(n, Path.LINETO, dtype=Path.code_type)
            c[0] = Path.MOVETO
            c[-1] = Path.CLOSEPOLY
            codes[n] = c
        if fast is not None:
            out.append(fast(v, c, internals_from=template))
        else:  # pragma: no cover - future matplotlib without the private constructor
            out.append(Path(v, c))
    return out


def as_list(x: str | Sequence[str] | None) -> list[str] | None:
    """``None`` → None, a string → ``[s]``, a sequence → list of str."""
    if x is None:
        return None
    if isinstance(x, str):
        return [x]
    return [str(v) for v in x]
