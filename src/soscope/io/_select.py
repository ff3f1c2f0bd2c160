"""Find soscope's inputs in a SpatialData: the table, its spots, the image and the coordinate system."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp

from soscope._constants import SoscopeKeys
from soscope._errors import SoscopeInputError
from soscope.io._validate import (
    _fmt_list,
    check_has_table,
    check_image,
    check_image_coordinate_system,
    check_instance_ids,
    check_min_spots,
    check_not_empty,
    check_spots_on_image,
    check_table_annotates_shapes,
    check_unique_var_names,
    coordinate_systems_of,
    is_soscope_output,
    layer_names,
)

logger = logging.getLogger(__name__)

#: ``uns`` flag of tables holding reference truth (synthetic data, pseudo-spots): skipped when auto-picking.
TRUTH_KEY = SoscopeKeys.TRUTH

#: var columns looked at (in this order) to split a table into modalities when ``modality_key`` is not given.
MODALITY_COLUMNS = ("feature_types", "modality", "feature_type")
#: Name of the single modality of a table without a modality column.
SINGLE_MODALITY = "all"


def _readonly(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    a.setflags(write=False)
    return a


@dataclass(frozen=True)
class SelectionRequest:
    """Which elements of a SpatialData to use: the selection arguments of every entry point, held once.

    :func:`soscope.enhance`, :class:`soscope.SoScope` and :meth:`soscope.SoScope.enhance` take these as
    keyword arguments (the public signature); inside they travel as one object, resolved against the data
    by :func:`select`. ``None`` means "choose automatically when unambiguous".

    Attributes
    ----------
    table, spots, image, layer, coordinate_system
        Elements to use (``image=False`` ignores images; a dict spots → image gives each section its own).
    sections, section_key
        Sections to use: spots-element names, coordinate-system names, or values of ``obs[section_key]``.
    batch_key
        ``obs`` column with a batch label per spot (default: the section).
    modality_key
        ``var`` column naming each feature's modality.

    """

    table: str | None = None
    spots: str | Sequence[str] | None = None
    image: str | Mapping[str, str | None] | None | Literal[False] = None
    layer: str | None = None
    coordinate_system: str | None = None
    sections: str | Sequence[str] | None = None
    section_key: str | None = None
    batch_key: str | None = None
    modality_key: str | None = None

    def updated(self, **given: Any) -> SelectionRequest:
        """Return a copy with the arguments given here (``None`` values ignored) replacing these."""
        unknown = sorted(set(given) - set(self.__dataclass_fields__))
        if unknown:
            raise SoscopeInputError(
                f"unknown selection argument(s) {unknown}; the selection arguments are "
                f"{list(self.__dataclass_fields__)}"
            )
        return replace(self, **{k: v for k, v in given.items() if v is not None})

    def select(self, sdata: Any) -> Selection:
        """Resolve this request against ``sdata`` (:func:`select`)."""
        return select(
            sdata,
            table=self.table,
            spots=self.spots,
            image=self.image,
            layer=self.layer,
            coordinate_system=self.coordinate_system,
            sections=self.sections,
            section_key=self.section_key,
            modality_key=self.modality_key,
        )


@dataclass(frozen=True, eq=False)
class Selection:
    """What soscope reads from a SpatialData, resolved once by :func:`select`.

    Spots are ordered as in the shapes: all selected spots of ``spots[0]`` in its row order, then those of
    ``spots[1]``, and so on. Every per-spot array below has that order and length ``n_spots``.

    Attributes
    ----------
    table
        Name of the table of spot profiles.
    spots
        Names of the shapes elements holding the spots (one per region the table annotates and that is used).
    region_key, instance_key
        The table's ``obs`` columns naming each row's region and spot id (``uns["spatialdata_attrs"]``).
    image
        Name of the image element when every spots element uses the same one, else None.
    images
        Spots element → its image element (None: no image). Sections imaged separately (``image_A`` under
        ``spots_A``, ``image_B`` under ``spots_B``) each get their own.
    coordinate_system
        The coordinate system in which spots and image are related; when the sections have coordinate
        systems of their own (``coordinate_systems``), the first section's.
    coordinate_systems
        Spots element → the coordinate system it is used in. Sections read separately and joined with
        ``sd.concatenate`` each keep the coordinate system their reader named after the sample: each is then
        placed, graphed and imaged in its own (see :meth:`coordinate_system_of`).
    layer
        The table layer holding the counts, or None for ``X``.
    spot_rows
        ``(N,)`` int64: row of the table for each spot.
    spot_element
        ``(N,)`` int64: index into ``spots`` of each spot's shapes element.
    shape_rows
        ``(N,)`` int64: position (``iloc``) of each spot in its shapes element.
    instance_ids
        ``(N,)``: each spot's instance id (the shapes' index value).
    sections
        ``(N,)`` object array of str: each spot's section (its region name, or ``obs[section_key]``).
    section_names
        The distinct sections, in order of first appearance.
    section_key
        The ``obs`` column defining sections, or None (sections are regions).
    modality_key
        The ``var`` column naming each feature's modality, or None.
    modalities
        Modality name → ``(n_features,)`` boolean mask; ``{"all": all-True}`` with a single modality.
    var_names
        The table's feature names.

    """

    table: str
    spots: tuple[str, ...]
    region_key: str
    instance_key: str
    image: str | None
    coordinate_system: str
    layer: str | None
    spot_rows: np.ndarray
    spot_element: np.ndarray
    shape_rows: np.ndarray
    instance_ids: np.ndarray
    sections: np.ndarray
    section_names: tuple[str, ...]
    section_key: str | None
    modality_key: str | None
    modalities: dict[str, np.ndarray] = field(default_factory=dict)
    var_names: tuple[str, ...] = ()
    images: dict[str, str | None] = field(default_factory=dict)
    coordinate_systems: dict[str, str] = field(default_factory=dict)

    def coordinate_system_of(self, name: str) -> str:
        """Return the coordinate system in which spots element ``name`` (and its image) are used."""
        return self.coordinate_systems.get(name, self.coordinate_system)

    @property
    def has_image(self) -> bool:
        """Whether the spots have an image (every spots element then has one)."""
        return any(v is not None for v in self.images.values()) or self.image is not None

    def image_of(self, name: str) -> str | None:
        """Return the image element under spots element ``name`` (None without an image)."""
        return self.images.get(name, self.image)

    @property
    def n_spots(self) -> int:
        """Number of selected spots N."""
        return len(self.spot_rows)

    @property
    def n_features(self) -> int:
        """Number of features of the table."""
        return len(self.var_names)

    def spots_of(self, name: str) -> np.ndarray:
        """Positions (0..N-1) of the selected spots that belong to shapes element ``name``."""
        return np.flatnonzero(self.spot_element == self.spots.index(name))

    def shape_rows_of(self, name: str) -> np.ndarray:
        """``iloc`` rows of shapes element ``name`` that are selected, in selection order."""
        return self.shape_rows[self.spots_of(name)]


def _ambiguous(what: str, candidates: Sequence[str], arg: str, extra: str = "") -> SoscopeInputError:
    return SoscopeInputError(
        f"Several {what} fit: {_fmt_list(candidates)}; pass `{arg}=` to choose one{extra}."
    )


def _pick_table(sdata: Any, table: str | None, spots: Sequence[str] | None) -> str:
    check_has_table(sdata)
    if table is not None:
        if table not in sdata.tables:
            raise SoscopeInputError(
                f"No table '{table}' in the SpatialData; tables present: {_fmt_list(sdata.tables)}. "
                "Pass one of them as `table=`."
            )
        return table
    # soscope's outputs and reference truth tables (synthetic data, pseudo-spots) are never the input
    candidates = [
        t
        for t in sdata.tables
        if not is_soscope_output(sdata, t) and not sdata.tables[t].uns.get(TRUTH_KEY, False)
    ]
    if not candidates:
        raise SoscopeInputError(
            f"The only tables are soscope outputs ({_fmt_list(sdata.tables)}); pass `table=` to use one "
            "anyway."
        )
    usable: list[str] = []
    errors: list[SoscopeInputError] = []
    for name in candidates:
        try:
            regions = check_table_annotates_shapes(sdata, name)
        except SoscopeInputError as e:
            errors.append(e)
            continue
        if spots is None or any(s in regions for s in spots):
            usable.append(name)
    if len(usable) == 1:
        return usable[0]
    if len(usable) > 1:
        raise _ambiguous("tables annotating shapes", usable, "table")
    if spots is not None:
        raise SoscopeInputError(
            f"No table annotates shapes {_fmt_list(spots)}; tables present: {_fmt_list(candidates)}. Pass "
            "`table=` and link it with `sdata.set_table_annotates_spatialelement(table_name, region=...)`."
        )
    if len(errors) == 1:
        raise errors[0]
    raise SoscopeInputError(
        f"No table annotates a shapes element ({_fmt_list(candidates)}): "
        + " | ".join(str(e) for e in errors)
    )


def _pick_coordinate_system(
    sdata: Any,
    spots: Sequence[str],
    image: str | None | Literal[False],
    coordinate_system: str | None,
    allow_per_spots: bool = False,
) -> tuple[str, str | None]:
    """Resolve the coordinate system and the image together.

    With ``allow_per_spots`` and several candidate images, returns ``_PER_SPOTS`` as the image when each
    spots element may have an image of its own (resolved by :func:`_pick_images_per_spots`).
    """
    spot_cs = {s: coordinate_systems_of(sdata.shapes[s]) for s in spots}
    shared = [c for c in spot_cs[spots[0]] if all(c in v for v in spot_cs.values())]
    desc = "; ".join(f"'{s}': {_fmt_list(v)}" for s, v in spot_cs.items())
    if not shared:
        raise SoscopeInputError(
            f"The spots elements share no coordinate system ({desc}): pass `spots=` to use one of them, or "
            "add a common one with `sd.transformations.set_transformation(sdata[name], transformation, "
            "to_coordinate_system=...)`."
        )
    if coordinate_system is not None:
        if coordinate_system not in shared:
            raise SoscopeInputError(
                f"coordinate_system='{coordinate_system}' is not a coordinate system of the spots ({desc}): "
                f"pass one of {_fmt_list(shared)}."
            )
        shared = [coordinate_system]

    img: str | None
    if image is False:
        img = None
    elif image is not None:
        if image not in sdata.images:
            raise SoscopeInputError(
                f"No image '{image}' in the SpatialData; images present: {_fmt_list(sdata.images)}. Pass one "
                "of them as `image=`, or `image=False` to run without an image."
            )
        common = check_image_coordinate_system(sdata, image, spots)
        in_shared = [c for c in shared if c in common]
        if not in_shared:
            raise SoscopeInputError(
                f"Image '{image}' is in coordinate systems "
                f"{_fmt_list(coordinate_systems_of(sdata.images[image]))}, not in "
                f"coordinate_system='{shared[0]}' of the spots: pass `coordinate_system=` one of "
                f"{_fmt_list(common)}, or register the image with `sd.transformations.set_transformation`."
            )
        shared, img = in_shared, image
    else:
        cands = [n for n, el in sdata.images.items() if any(c in shared for c in coordinate_systems_of(el))]
        if len(cands) > 1 and allow_per_spots and _images_by_cover(sdata, spots, cands, shared) is not None:
            return shared[0], _PER_SPOTS
        if len(cands) > 1:
            raise _ambiguous(
                f"images in the spots' coordinate system{'s' if len(shared) > 1 else ''} {_fmt_list(shared)}",
                cands,
                "image",
                ", or `image=False` to run without an image",
            )
        img = cands[0] if cands else None
        if img is not None:
            shared = [c for c in shared if c in coordinate_systems_of(sdata.images[img])]
        elif len(sdata.images):
            elsewhere = {n: coordinate_systems_of(el) for n, el in sdata.images.items()}
            logger.warning(
                "No image shares a coordinate system with the spots (%s; images: %s): running without an "
                "image. To use one, register it with `sd.transformations.set_transformation(sdata[image], "
                "transformation, to_coordinate_system='%s')` and pass `image=`.",
                desc,
                "; ".join(f"'{n}': {_fmt_list(v)}" for n, v in elsewhere.items()),
                shared[0],
            )

    if len(shared) == 1:
        return shared[0], img
    if img is None:
        # Without an image the coordinate system only labels the frame: choose one deterministically.
        cs = "global" if "global" in shared else sorted(shared)[0]
        logger.info("Spots are in coordinate systems %s; using '%s' (no image).", shared, cs)
        return cs, None
    raise _ambiguous(f"coordinate systems shared by the spots and image '{img}'", shared, "coordinate_system")


_PER_SPOTS = "\0per-spots"


def _extent_box(element: Any, cs: str) -> tuple[float, float, float, float]:
    from spatialdata import get_extent

    ext = get_extent(element, coordinate_system=cs)
    return float(ext["x"][0]), float(ext["y"][0]), float(ext["x"][1]), float(ext["y"][1])


def _cover(spots_box: tuple, image_box: tuple) -> float:
    """Share of the spots' bounding box that lies inside the image's bounding box."""
    x0, y0, x1, y1 = spots_box
    ix = max(0.0, min(x1, image_box[2]) - max(x0, image_box[0]))
    iy = max(0.0, min(y1, image_box[3]) - max(y0, image_box[1]))
    area = max(x1 - x0, 1e-12) * max(y1 - y0, 1e-12)
    return ix * iy / area


def _images_by_cover(
    sdata: Any, spots: Sequence[str], images: Sequence[str], shared: Sequence[str]
) -> dict | None:
    """Each spots element's image: the one candidate covering ≥ 90 % of its extent (None if not unique)."""
    for cs in shared:
        imgs = [n for n in images if cs in coordinate_systems_of(sdata.images[n])]
        if not imgs:
            continue
        boxes = {n: _extent_box(sdata.images[n], cs) for n in imgs}
        out = {}
        for s in spots:
            box = _extent_box(sdata.shapes[s], cs)
            fits = [n for n in imgs if _cover(box, boxes[n]) >= 0.9]
            if len(fits) > 1:  # overlapping images (e.g. stores combined): the one named like the spots
                fits = _named_alike(s, fits)
            if len(fits) != 1:
                break
            out[s] = fits[0]
        else:
            return {"coordinate_system": cs, "images": out}
    return None


def _named_alike(spots: str, images: Sequence[str]) -> list[str]:
    """Return the images sharing the longest name suffix with ``spots`` (``spots_A`` → ``image_A``)."""

    def suffix(a: str, b: str) -> int:
        n = 0
        while n < min(len(a), len(b)) and a[-1 - n] == b[-1 - n]:
            n += 1
        return n

    scores = {n: suffix(spots, n) for n in images}
    best = max(scores.values())
    return [n for n, v in scores.items() if v == best] if best > 0 else list(images)


def _pick_images_per_spots(
    sdata: Any, spots: Sequence[str], image: Mapping[str, str] | None, coordinate_system: str | None
) -> tuple[str, str | None, dict[str, str | None]]:
    """Resolve one image per spots element (sections imaged separately) and the coordinate system."""
    if image is not None:
        unknown = [s for s in image if s not in spots]
        if unknown:
            raise SoscopeInputError(
                f"`image=` names spots {_fmt_list(unknown)} that are not selected; the spots are "
                f"{_fmt_list(spots)}."
            )
        missing = [s for s in spots if s not in image]
        if missing:
            raise SoscopeInputError(
                f"`image=` gives no image for spots {_fmt_list(missing)}: give every spots element its "
                "image (None for a section without one), or `image=False` to run without images."
            )
        absent = [v for v in image.values() if v is not None and v not in sdata.images]
        if absent:
            raise SoscopeInputError(
                f"No image {_fmt_list(absent)} in the SpatialData; images present: {_fmt_list(sdata.images)}."
            )
        css = None
        for s in spots:
            common = (
                coordinate_systems_of(sdata.shapes[s])
                if image[s] is None
                else check_image_coordinate_system(sdata, image[s], [s])
            )
            css = [c for c in (common if css is None else css) if c in common]
        if coordinate_system is not None:
            if coordinate_system not in (css or []):
                raise SoscopeInputError(
                    f"coordinate_system='{coordinate_system}' is not shared by the spots and their images: "
                    f"pass one of {_fmt_list(css or [])}."
                )
            css = [coordinate_system]
        if not css:
            raise SoscopeInputError(
                "The spots and their images share no coordinate system: register them with "
                "`sd.transformations.set_transformation`, or pass `image=False`."
            )
        images = {s: None if image[s] is None else str(image[s]) for s in spots}
        cs = "global" if "global" in css else css[0]
    else:
        spot_cs = {s: coordinate_systems_of(sdata.shapes[s]) for s in spots}
        shared = [c for c in spot_cs[spots[0]] if all(c in v for v in spot_cs.values())]
        if coordinate_system is not None:
            shared = [coordinate_system]
        match = _images_by_cover(sdata, spots, list(sdata.images), shared)
        if match is None:  # pragma: no cover - _pick_coordinate_system checked that it exists
            raise SoscopeInputError("Could not match images to spots: pass `image=` a dict spots → image.")
        cs, images = match["coordinate_system"], match["images"]
        logger.info("One image per spots element: %s", images)
    distinct = set(images.values())
    return cs, (distinct.pop() if len(distinct) == 1 else None), images


def _shared_coordinate_systems(sdata: Any, spots: Sequence[str]) -> list[str]:
    """Return the coordinate systems that every one of the spots elements is in."""
    spot_cs = [coordinate_systems_of(sdata.shapes[s]) for s in spots]
    return [c for c in spot_cs[0] if all(c in v for v in spot_cs[1:])]


def _pick_section(
    sdata: Any, name: str, image: str | Mapping[str, str] | None | Literal[False]
) -> tuple[str, str | None]:
    """Coordinate system and image of one spots element resolved alone (a section with its own frame)."""
    if isinstance(image, str):
        raise SoscopeInputError(
            f"`image={image!r}` names one image, but the spots elements are in coordinate systems of their "
            "own (separate sections): pass `image=` a dict spots → image, or `image=False`."
        )
    if isinstance(image, Mapping):
        if name not in image:
            raise SoscopeInputError(
                f"`image=` gives no image for spots '{name}': give every spots element its image (a dict "
                "spots → image), or `image=False` to run without images."
            )
        image = False if image[name] is None else image[name]  # None in the dict: this section has none
    cs, img = _pick_coordinate_system(sdata, [name], image, None, allow_per_spots=True)
    if img == _PER_SPOTS:
        cs, img, _ = _pick_images_per_spots(sdata, [name], None, None)
    return cs, img


def _sections_by_coordinate_system(
    sdata: Any, wanted: list[str], labels: np.ndarray, used: Sequence[str], spot_element: np.ndarray
) -> list[str]:
    """Let ``sections=`` name coordinate systems too: one names the sections of the spots elements in it.

    A value that is already a section label (a region or an ``obs[section_key]`` value) keeps its meaning.
    """
    present = set(labels.tolist())
    out: list[str] = []
    for w in wanted:
        if w in present:
            out.append(w)
            continue
        in_cs = [i for i, s in enumerate(used) if w in coordinate_systems_of(sdata.shapes[s])]
        if not in_cs:
            out.append(w)  # unknown: reported by the caller with the list of sections
            continue
        out.extend(dict.fromkeys(labels[np.isin(spot_element, in_cs)].tolist()))
    return list(dict.fromkeys(out))


def _pick_modalities(adata: Any, modality_key: str | None) -> tuple[str | None, dict[str, np.ndarray]]:
    if modality_key is not None:
        if modality_key not in adata.var.columns:
            raise SoscopeInputError(
                f"modality_key='{modality_key}' is not a column of the table's var; columns: "
                f"{_fmt_list(adata.var.columns)}. Pass one of them, or leave it unset."
            )
        key = modality_key
    else:
        key = None
        for col in MODALITY_COLUMNS:
            if col in adata.var.columns and adata.var[col].nunique(dropna=False) >= 2:
                key = col
                logger.info("Modalities taken from var['%s'].", col)
                break
    if key is None:
        return None, {SINGLE_MODALITY: _readonly(np.ones(adata.n_vars, bool))}
    values = np.array([str(v) for v in adata.var[key].to_numpy(dtype=object)], dtype=object)
    names = list(dict.fromkeys(values.tolist()))
    return key, {m: _readonly(values == m) for m in names}


def select(
    sdata: Any,
    *,
    table: str | None = None,
    spots: str | Sequence[str] | None = None,
    image: str | Mapping[str, str] | None | Literal[False] = None,
    layer: str | None = None,
    coordinate_system: str | None = None,
    sections: str | Sequence[str] | None = None,
    section_key: str | None = None,
    modality_key: str | None = None,
) -> Selection:
    """Find the table, spots, image and coordinate system soscope works on.

    Every argument naming an element may be left out when the choice is unambiguous; when it is ambiguous
    the error lists the candidates and names the argument to set. Tables and shapes written by soscope
    (``uns["soscope"]``) are skipped when choosing automatically.

    Parameters
    ----------
    sdata
        The SpatialData.
    table
        The table of spot profiles (an AnnData annotating a shapes element).
    spots
        The shapes element(s) with the spots, among those the table annotates; default all of them (each is
        a section unless ``section_key`` is given).
    image
        The image element; None picks the only image in the spots' coordinate system (if any) or, with several
        spots elements and several images, the image that covers each spots element (sections imaged
        separately); a dict gives the image of each spots element (None: a section without an image among
        imaged ones); False uses no image.
    layer
        The table layer holding the counts; None for ``X``.
    coordinate_system
        The coordinate system relating spots and image; default the one they share. Without an image,
        when the spots have several, ``"global"`` (else the first in sorted order) is used: it then only
        labels the frame. When the spots elements share none (sections read separately and joined with
        ``sd.concatenate``), each section is used in its own coordinate system, with its own image.
    sections
        Restrict to these sections: region names (spots elements), values of ``obs[section_key]``, or
        coordinate systems (each naming the sections of the spots elements in it).
    section_key
        An ``obs`` column whose values define sections; default: one section per shapes element.
    modality_key
        A ``var`` column naming each feature's modality; default ``feature_types`` / ``modality`` /
        ``feature_type`` when present with at least two values.

    Returns
    -------
    The resolved :class:`Selection`.

    Raises
    ------
    SoscopeInputError
        Missing or ambiguous inputs, tables that do not annotate shapes, mismatched instance ids, images
        that do not fit, fewer than two spots.

    """
    spots_req = [spots] if isinstance(spots, str) else (list(spots) if spots is not None else None)
    if spots_req is not None:
        missing = [s for s in spots_req if s not in sdata.shapes]
        if missing:
            raise SoscopeInputError(
                f"No shapes {_fmt_list(missing)} in the SpatialData; shapes present: "
                f"{_fmt_list(sdata.shapes)}. Pass them as `spots=`."
            )

    tname = _pick_table(sdata, table, spots_req)
    adata = sdata.tables[tname]
    regions = check_table_annotates_shapes(sdata, tname)
    attrs = adata.uns["spatialdata_attrs"]
    region_key, instance_key = str(attrs["region_key"]), str(attrs["instance_key"])
    for col in (region_key, instance_key):
        if col not in adata.obs.columns:
            raise SoscopeInputError(
                f"Table '{tname}' declares obs['{col}'] in uns['spatialdata_attrs'] but has no such column: "
                "re-parse it with `TableModel.parse(adata, region=..., region_key=..., instance_key=...)`."
            )

    if spots_req is not None:
        not_annot = [s for s in spots_req if s not in regions]
        if not_annot:
            raise SoscopeInputError(
                f"Table '{tname}' does not annotate shapes {_fmt_list(not_annot)}; it annotates "
                f"{_fmt_list(regions)}. Pass `spots=` one of those, or another `table=`."
            )
        chosen = spots_req
    else:
        # soscope's own sub-spot shapes are never spots, unless named explicitly
        chosen = [r for r in regions if not is_soscope_output(sdata, r)] or regions

    check_not_empty(adata, tname, layer)
    check_unique_var_names(adata, tname)
    if layer is not None and layer not in adata.layers:
        raise SoscopeInputError(
            f"Table '{tname}' has no layer '{layer}'; layers: {_fmt_list(layer_names(adata))}. Pass one of "
            "them as `layer=`, or `layer=None` for X."
        )

    # Match table rows to shapes rows, element by element, in shapes order.
    region_col = adata.obs[region_key].astype(str).to_numpy(dtype=object)
    inst_col = adata.obs[instance_key].to_numpy()
    used: list[str] = []
    rows_l, elem_l, shape_l, ids_l = [], [], [], []
    for s in chosen:
        rows = np.flatnonzero(region_col == s)
        if rows.size == 0:
            if spots_req is not None:
                raise SoscopeInputError(
                    f"Table '{tname}' has no rows for shapes '{s}' (obs['{region_key}'])."
                )
            logger.info("Table '%s' has no rows for region '%s'; skipped.", tname, s)
            continue
        gdf = sdata.shapes[s]
        pos = check_instance_ids(gdf.index, inst_col[rows], spots=s, table=tname, instance_key=instance_key)
        order = np.argsort(pos, kind="stable")
        n_dropped = len(gdf) - rows.size
        if n_dropped:
            logger.info("%d spots of '%s' have no row in table '%s'; they are left out.", n_dropped, s, tname)
        rows_l.append(rows[order])
        shape_l.append(pos[order])
        elem_l.append(np.full(rows.size, len(used), np.int64))
        ids_l.append(np.asarray(gdf.index)[pos[order]])
        used.append(s)
    if not used:
        raise SoscopeInputError(
            f"Table '{tname}' has no rows for any of {_fmt_list(chosen)} (obs['{region_key}']): check the "
            "table's region column."
        )
    spot_rows = np.concatenate(rows_l).astype(np.int64)
    spot_element = np.concatenate(elem_l)
    shape_rows = np.concatenate(shape_l).astype(np.int64)
    instance_ids = (
        np.concatenate([np.asarray(i, dtype=object) for i in ids_l]) if len(ids_l) > 1 else ids_l[0]
    )

    # Sections: regions, or the values of an obs column.
    if section_key is not None:
        if section_key not in adata.obs.columns:
            raise SoscopeInputError(
                f"section_key='{section_key}' is not a column of table '{tname}'.obs; columns: "
                f"{_fmt_list(adata.obs.columns)}."
            )
        col = adata.obs[section_key].iloc[spot_rows]
        if col.isna().any():
            raise SoscopeInputError(
                f"obs['{section_key}'] of table '{tname}' is missing for {int(col.isna().sum())} spots: fill "
                "it, or leave `section_key` unset to use one section per shapes element."
            )
        labels = np.array([str(v) for v in col.to_numpy(dtype=object)], dtype=object)
    else:
        labels = np.array(used, dtype=object)[spot_element]
    if sections is not None:
        wanted = [sections] if isinstance(sections, str) else [str(x) for x in sections]
        wanted = _sections_by_coordinate_system(sdata, wanted, labels, used, spot_element)
        available = list(dict.fromkeys(labels.tolist()))
        unknown = [w for w in wanted if w not in available]
        if unknown:
            by = f"values of obs['{section_key}']" if section_key else "regions (shapes elements)"
            raise SoscopeInputError(
                f"Unknown sections {_fmt_list(unknown)}; sections are {by}: {_fmt_list(available)}. "
                + ("Pass `section_key=` to define sections by an obs column." if section_key is None else "")
            )
        keep = np.isin(labels, wanted)
        spot_rows, spot_element, shape_rows = spot_rows[keep], spot_element[keep], shape_rows[keep]
        instance_ids, labels = instance_ids[keep], labels[keep]
        # Drop shapes elements left without spots and renumber.
        present = [i for i in range(len(used)) if np.any(spot_element == i)]
        remap = np.full(len(used), -1, np.int64)
        remap[present] = np.arange(len(present))
        spot_element = remap[spot_element]
        used = [used[i] for i in present]
    check_min_spots(len(spot_rows))

    if coordinate_system is None and len(used) > 1 and not _shared_coordinate_systems(sdata, used):
        # sections in coordinate systems of their own (sd.concatenate of per-sample reads): each spots
        # element is resolved alone, with its own coordinate system and image
        css, images = {}, {}
        for name in used:
            css[name], images[name] = _pick_section(sdata, name, image)
        cs = css[used[0]]
        distinct = set(images.values())
        img = distinct.pop() if len(distinct) == 1 else None
        logger.info("Sections in coordinate systems of their own: %s; images: %s", css, images)
    elif isinstance(image, Mapping):
        cs, img, images = _pick_images_per_spots(sdata, used, image, coordinate_system)
    else:
        cs, img = _pick_coordinate_system(sdata, used, image, coordinate_system, allow_per_spots=True)
        images = {s: img for s in used}
        if img == _PER_SPOTS:
            cs, img, images = _pick_images_per_spots(sdata, used, None, coordinate_system)
    if coordinate_system is not None or len(used) == 1 or _shared_coordinate_systems(sdata, used):
        css = dict.fromkeys(used, cs)
    for name in dict.fromkeys(v for v in images.values() if v is not None):
        check_image(sdata.images[name], name)
    for pos, name in enumerate(used):  # spots placed off their image: mismatched transformations
        if images.get(name) is not None:
            check_spots_on_image(sdata, images[name], name, css[name], rows=shape_rows[spot_element == pos])
    mkey, modalities = _pick_modalities(adata, modality_key)

    return Selection(
        table=tname,
        spots=tuple(used),
        region_key=region_key,
        instance_key=instance_key,
        image=img,
        images=images,
        coordinate_system=cs,
        coordinate_systems=css,
        layer=layer,
        spot_rows=_readonly(spot_rows),
        spot_element=_readonly(spot_element),
        shape_rows=_readonly(shape_rows),
        instance_ids=_readonly(np.asarray(instance_ids)),
        sections=_readonly(labels),
        section_names=tuple(dict.fromkeys(labels.tolist())),
        section_key=section_key,
        modality_key=mkey,
        modalities=modalities,
        var_names=tuple(str(v) for v in adata.var_names),
    )


def counts_matrix(sdata: Any, selection: Selection) -> sp.csr_matrix | np.ndarray:
    """Return the selected spots' profiles, one row per spot in the selection's (shapes) order.

    Parameters
    ----------
    sdata
        The SpatialData the selection was made on.
    selection
        From :func:`select`.

    Returns
    -------
    A ``scipy.sparse.csr_matrix`` when the table stores a sparse matrix (never densified), else a numpy array.

    """
    adata = sdata.tables[selection.table]
    x = adata.layers[selection.layer] if selection.layer is not None else adata.X
    rows = np.asarray(selection.spot_rows)
    if sp.issparse(x):
        csr = x if x.format == "csr" else x.tocsr()
        return sp.csr_matrix(csr[rows])
    if isinstance(x, np.ndarray):
        x = np.asarray(x)  # np.matrix → ndarray
        if len(rows) == x.shape[0] and np.array_equal(rows, np.arange(len(rows))):
            return x  # rows already in order: the table's own array, not a copy of a whole slide's counts
        return x[rows]
    if hasattr(x, "compute") and not hasattr(x, "to_memory"):  # dask array
        out = x[rows]
        out = out.compute()
        return sp.csr_matrix(out) if sp.issparse(out) else np.asarray(out)
    # Backed / lazy arrays (anndata sparse datasets, zarr, h5py): read sorted rows once, then reorder.
    uniq, inverse = np.unique(rows, return_inverse=True)
    part = x[uniq]
    if hasattr(part, "to_memory"):
        part = part.to_memory()
    if sp.issparse(part):
        return sp.csr_matrix(part)[inverse]
    return np.asarray(part)[inverse]
