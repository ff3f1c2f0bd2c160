"""Which platform produced the spots, and the default configuration soscope uses for it.

:func:`detect_platform` looks at what the data says about itself, strongest evidence first:

1. provenance written by a reader: ``sdata.attrs["spatialdata_io_reader"]`` (spatialdata-io) or the
   table's ``uns["soscope_reader"]`` (:func:`soscope.io.read_dbit`, :func:`soscope.io.read_soscope_layout`);
2. the spot names: Visium HD bins ``"s_016um_00012_00034-1"``, DBiT pixels ``"12x34"``, or the
   ``array_A`` / ``array_B`` columns of spatialdata-io's DBiT reader;
3. a shapes element of segmented cells next to the spots (Xenium and other imaging platforms);
4. the geometry alone: circles on a hexagonal lattice (Visium), square bins that tile the plane with a
   2 / 8 / 16 unit side (Visium HD in µm), circles with no lattice order (Slide-seq / Curio beads).

Anything else is ``"generic"``: the sub-spot scheme then follows the spots' geometry
(:func:`soscope.geometry.parse_subspot_scheme` with ``"auto"``). The table of defaults,
:data:`PLATFORM_DEFAULTS`, is documented in ``docs/platforms.md``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from soscope._errors import SoscopeInputError
from soscope._transforms import affine_xy

__all__ = ["PLATFORM_DEFAULTS", "Platform", "PlatformDefaults", "detect_platform"]


@dataclass(frozen=True)
class PlatformDefaults:
    """Default configuration of one platform.

    Attributes
    ----------
    subspots
        Sub-spot scheme used for ``subspots="auto"`` (``"cells"``: the segmented cells element that
        :func:`detect_platform` found; ``"auto"``: from the geometry).
    likelihood
        The likelihood that ``likelihood="auto"`` is expected to pick for the platform's usual counts (the
        choice itself is made per modality from the values, see ``choose_likelihood``).
    neighbours
        Spots adjacent to an interior spot in the spot graph (6 on hexagonal lattices, 4 on square ones,
        about 6 for irregular beads and cells).
    image_scale
        Which image the platform's readers provide and soscope reads features from.

    """

    subspots: str
    likelihood: str
    neighbours: int
    image_scale: str


#: Per-platform defaults; keys are the names :func:`detect_platform` returns.
PLATFORM_DEFAULTS: dict[str, PlatformDefaults] = {
    "visium": PlatformDefaults("hex7", "nb", 6, "full-resolution H&E (or hires PNG), 55 µm spots"),
    "visium_hd": PlatformDefaults("grid:2", "nb", 4, "full-resolution H&E; 2 / 8 / 16 µm bins"),
    "dbit": PlatformDefaults("grid:3", "nb", 4, "optional H&E aligned by an affine fit; 10-50 µm pixels"),
    "slide_seq": PlatformDefaults("grid:2", "nb", 6, "none (beads carry no image)"),
    "xenium": PlatformDefaults("cells", "nb", 6, "morphology / DAPI image at ~0.2 µm per pixel"),
    "generic": PlatformDefaults("auto", "auto", 6, "the image registered to the spots, if any"),
}

#: spatialdata-io reader name (``sdata.attrs["spatialdata_io_reader"]``) → platform
_READERS = {
    "visium": "visium",
    "visium_hd": "visium_hd",
    "xenium": "xenium",
    "curio": "slide_seq",
    "dbit": "dbit",
}
_HD_BARCODE = re.compile(r"^s_(\d{3})um_\d+_\d+")
_DBIT_BARCODE = re.compile(r"^\d+x\d+$")
_HD_BIN_SIZES = (2.0, 8.0, 16.0)
_CELL_NAME = re.compile(r"cell|nucle", re.IGNORECASE)
#: Visium: 55 µm spots on a 100 µm lattice
_VISIUM_DIAMETER_PER_SPACING = (0.40, 0.70)
_VISIUM_DIAMETER_UM = 55.0


@dataclass
class Platform:
    """What :func:`detect_platform` found.

    Attributes
    ----------
    name
        A key of :data:`PLATFORM_DEFAULTS`.
    evidence
        One sentence saying why (logged and stored in ``uns["soscope"]["platform_evidence"]``).
    cells
        For ``"xenium"``: the shapes element of segmented cells used as sub-spots.
    geometry
        ``"circles"`` / ``"squares"`` / ``"polygons"``, lattice spacing and spot size in the spots'
        intrinsic units.

    """

    name: str
    evidence: str
    cells: str | None = None
    geometry: dict[str, Any] = field(default_factory=dict)

    @property
    def defaults(self) -> PlatformDefaults:
        """The platform's entry of :data:`PLATFORM_DEFAULTS`."""
        return PLATFORM_DEFAULTS[self.name]

    @property
    def microns_per_unit(self) -> float:
        """µm per unit of the spots' coordinate system (for nucleus sizes and densities).

        Known from the spots themselves on Visium (55 µm circles) and Visium HD (the bin size of the
        barcodes); elsewhere 1: the coordinate system is taken to be in µm, as spatialdata-io's readers of
        imaging platforms and :func:`soscope.datasets.synthetic` write it.
        """
        return float(self.geometry.get("microns_per_unit", 1.0))

    @property
    def subspots(self) -> str:
        """The sub-spot scheme for ``subspots="auto"``."""
        s = self.defaults.subspots
        return f"cells:{self.cells}" if s == "cells" else s


def _geometry(gdf) -> dict[str, Any]:
    """Kind, lattice order, spacing and size of one spots element (intrinsic units)."""
    from soscope.geometry import ORDER_MIN, lattice_orientation, lattice_spacing, spot_centres, spot_kind

    kind = spot_kind(gdf)
    xy = spot_centres(gdf)
    spacing = lattice_spacing(xy) if len(xy) > 1 else float("nan")
    order = lattice_orientation(xy, spacing) if len(xy) > 1 else {"psi4": 0.0, "psi6": 0.0}
    if order["psi6"] >= ORDER_MIN and order["psi6"] > order["psi4"]:
        lattice = "hex"
    elif order["psi4"] >= ORDER_MIN:
        lattice = "square"
    else:
        lattice = "irregular"
    if kind == "circles":
        size = float(2.0 * np.median(np.asarray(gdf["radius"], dtype=float)))
    else:
        geoms = gdf.geometry
        size = float(np.sqrt(np.median(geoms.area)))
        # squares: area equals the squared side of the bounding box
        bounds = geoms.bounds.to_numpy()
        side = np.maximum(bounds[:, 2] - bounds[:, 0], bounds[:, 3] - bounds[:, 1])
        if np.allclose(geoms.area.to_numpy(), side**2, rtol=0.05):
            kind = "squares"
    return {"kind": kind, "lattice": lattice, "spacing": float(spacing), "size": size}


def _cells_element(sdata, selection) -> str | None:
    """Find a shapes element of segmented cells beside the spots (small outlines named like cells)."""
    import shapely

    from soscope._constants import SoscopeKeys
    from soscope.geometry import spot_footprints
    from soscope.io._validate import is_soscope_output

    truth_regions = set()
    for t in sdata.tables.values():
        if t.uns.get(SoscopeKeys.TRUTH, False):
            region = t.uns.get("spatialdata_attrs", {}).get("region", [])
            truth_regions |= {region} if isinstance(region, str) else set(region)
    spot_area = float(np.median(shapely.area(spot_footprints(sdata.shapes[selection.spots[0]].iloc[:2000]))))
    found = []
    for name in sdata.shapes:
        if name in selection.spots or name in truth_regions or is_soscope_output(sdata, name):
            continue
        if not _CELL_NAME.search(name) or len(sdata.shapes[name]) == 0:
            continue
        gdf = sdata.shapes[name]
        try:
            area = float(np.median(shapely.area(spot_footprints(gdf.iloc[:500]))))
        except SoscopeInputError:  # not usable as cells (points without radius, mixed geometry types)
            continue
        if area < spot_area / 4:
            # cell outlines before circles, cells before nuclei
            found.append((bool(re.search("nucle", name, re.I)), "radius" in gdf.columns, name))
    return sorted(found)[0][2] if found else None


def detect_platform(sdata, selection) -> Platform:
    """Guess the platform of the selected spots (see the module docstring for the evidence used).

    Parameters
    ----------
    sdata
        The SpatialData.
    selection
        The :class:`~soscope.io.Selection` of table and spots (from :func:`soscope.io.select`).

    Returns
    -------
    Platform
        Its ``name`` keys :data:`PLATFORM_DEFAULTS`; ``subspots`` is the scheme for ``subspots="auto"``.

    """
    table = sdata.tables[selection.table]
    geo = _geometry(sdata.shapes[selection.spots[0]])
    # sizes in the coordinate system's units (µm for most readers; Visium's are fullres pixels)
    lin = affine_xy(sdata.shapes[selection.spots[0]], selection.coordinate_system_of(selection.spots[0]))[
        :2, :2
    ]
    scale = float(np.sqrt(abs(np.linalg.det(lin))))
    geo["size_cs"], geo["spacing_cs"] = geo["size"] * scale, geo["spacing"] * scale
    names = table.obs_names[: min(len(table.obs_names), 500)].astype(str)
    reader = str(getattr(sdata, "attrs", {}).get("spatialdata_io_reader", "") or "")
    ours = table.uns.get("soscope_reader", {}) or {}

    cells = _cells_element(sdata, selection)
    if cells is not None:
        why = f"segmented cells {cells!r} beside the spots"
        return Platform(
            "xenium", why + (f" (read by spatialdata-io {reader!r})" if reader else ""), cells, geo
        )

    hd = [m.group(1) for m in map(_HD_BARCODE.match, names) if m]
    if reader == "visium_hd" or len(hd) > 0.9 * len(names):
        size = f"{int(hd[0])} µm bins" if hd else "square bins"
        if hd and geo["size_cs"] > 0:
            geo["microns_per_unit"] = int(hd[0]) / geo["size_cs"]
        return Platform(
            "visium_hd", f"Visium HD {size} ({'reader visium_hd' if reader else 'bin barcodes'})", None, geo
        )
    dbit_names = np.mean([bool(_DBIT_BARCODE.match(n)) for n in names]) > 0.9 if len(names) else False
    if reader == "dbit" or {"array_A", "array_B"} <= set(table.obs.columns):
        return Platform("dbit", "DBiT pixels read by spatialdata-io's dbit reader", None, geo)
    if (
        geo["lattice"] == "square"
        and geo["kind"] != "circles"
        and (ours.get("lattice") == "square" or dbit_names)
    ):
        src = "read_dbit / read_soscope_layout" if ours else "pixel barcodes 'RxC'"
        return Platform("dbit", f"square pixels on a square grid ({src})", None, geo)
    if reader == "xenium":  # the cells themselves are the spots: nothing below them to split into
        return Platform("generic", "Xenium cells used as the spots", None, geo)
    if reader in _READERS:
        if _READERS[reader] == "visium" and geo["kind"] == "circles" and geo["size_cs"] > 0:
            geo["microns_per_unit"] = _VISIUM_DIAMETER_UM / geo["size_cs"]
        return Platform(_READERS[reader], f"read by spatialdata-io's {reader!r} reader", None, geo)

    if geo["kind"] == "circles" and geo["lattice"] == "hex":
        ratio = geo["size"] / geo["spacing"]
        if _VISIUM_DIAMETER_PER_SPACING[0] <= ratio <= _VISIUM_DIAMETER_PER_SPACING[1]:
            geo["microns_per_unit"] = _VISIUM_DIAMETER_UM / geo["size_cs"]
            return Platform(
                "visium", f"circles on a hexagonal lattice, diameter/spacing {ratio:.2f}", None, geo
            )
    if geo["kind"] == "squares" and geo["lattice"] == "square":
        side = geo["size_cs"]
        tiles = abs(side - geo["spacing_cs"]) <= 0.05 * geo["spacing_cs"]
        if tiles and any(abs(side - b) <= 0.05 * b for b in _HD_BIN_SIZES):
            geo["microns_per_unit"] = 1.0  # bins of 2 / 8 / 16 units: the coordinate system is in µm
            return Platform("visium_hd", f"square bins tiling the plane, side {side:.3g}", None, geo)
    if geo["kind"] == "circles" and geo["lattice"] == "irregular":
        return Platform("slide_seq", "circles with no lattice order (beads)", None, geo)
    return Platform("generic", f"{geo['kind']} on a {geo['lattice']} arrangement", None, geo)
