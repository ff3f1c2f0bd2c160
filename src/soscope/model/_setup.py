"""From a SpatialData to :class:`SpotData`: selection, validation, sub-spots, graphs and image features."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import scipy.sparse as sp

from .._errors import SoscopeInputError
from .._memory import release_free_memory
from .._transforms import affine_xy
from ..features import SectionStandardiser
from ..geometry import (
    PolygonArray,
    SubspotLayout,
    lattice_spacing,
    make_subspots,
    parse_subspot_scheme,
    spot_centres,
    spot_graph,
    subspot_size,
)
from ..io import (
    Selection,
    SelectionRequest,
    check_counts,
    check_min_spots,
    check_values,
    counts_matrix,
    detect_platform,
    recover_store,
    zero_spots_mask,
    zero_variance_mask,
)
from ..module import ModalitySpec
from ._data import SpotData
from ._likelihood_choice import resolve_likelihoods

logger = logging.getLogger("soscope")


@dataclass
class Prepared:
    """A SpatialData made ready for the model: the arrays plus what is needed to write results back."""

    data: SpotData
    selection: Selection
    layouts: dict[str, SubspotLayout]  # per spots element, intrinsic coordinates (for output polygons)
    scheme: str
    likelihoods: dict[str, str]
    modality_masks: dict[str, np.ndarray]
    image_extractor: str | None
    platform: str = "generic"  # detected by soscope.io.detect_platform (its PLATFORM_DEFAULTS key)
    # how the image features were made: the extractor's description and, per spots element, the image's
    # (for uns["soscope"]["image_features"])
    image_provenance: dict[str, Any] = field(default_factory=dict)
    # a FoundationModel whose PCA was fitted here (on these sub-spots): the model keeps it for new data
    fitted_extractor: Any = None
    # human labels (labels=): the classifier learned where labelled, which makes the label features of new
    # data; and the labelled share of the sub-spots (for uns)
    label_classifier: Any = None
    label_provenance: dict[str, Any] = field(default_factory=dict)
    # where the nuclei per sub-spot came from (uns["soscope"]["segmentation"]); see _nuclei_features
    segmentation: dict = field(default_factory=dict)


def _to_cs(layout: SubspotLayout, affine: np.ndarray, *, polygons: bool) -> SubspotLayout:
    """Return the same layout in the coordinate system; its polygons only when ``polygons`` (else dropped)."""
    lin = affine[:2, :2]
    centroid = layout.centroid @ lin.T + affine[:2, 2]
    return replace(
        layout,
        centroid=centroid,
        area=layout.area * abs(np.linalg.det(lin)),
        polygons=layout.polygons.transform(affine) if polygons else None,
    )


def concat_layouts(layouts: list[SubspotLayout]) -> SubspotLayout:
    """Stack the layouts of several spots elements into one (spot indices offset accordingly)."""
    if len(layouts) == 1:
        return layouts[0]
    offsets = [np.zeros(1, dtype=np.int64)]
    spot_index, base_spot, base_row = [], 0, 0
    for lay in layouts:
        spot_index.append(lay.spot_index + base_spot)
        offsets.append(lay.offsets[1:] + base_row)
        base_spot += lay.n_spots
        base_row += lay.n_subspots
    cat = lambda name: np.concatenate([getattr(lay, name) for lay in layouts])  # noqa: E731
    src = None if any(lay.source_index is None for lay in layouts) else cat("source_index")
    polygons = [lay.polygons for lay in layouts]
    return SubspotLayout(
        polygons=None if any(p is None for p in polygons) else PolygonArray.concatenate(polygons),
        spot_index=np.concatenate(spot_index),
        subspot=cat("subspot"),
        offsets=np.concatenate(offsets),
        area=cat("area"),
        footprint_weight=cat("footprint_weight"),
        centroid=cat("centroid"),
        scheme=layouts[0].scheme,
        source_index=src,
    )


def prepare(
    sdata,
    request: SelectionRequest | None = None,
    *,
    subspots: str = "auto",
    likelihood: str | dict = "auto",
    image_features: str | object = "morphology",
    use_image: bool = True,
    segmentation: str | None = "auto",
    progress: bool = False,
    for_training: bool = True,
    labels: str | None = None,
    label_classifier: Any = None,
) -> Prepared:
    """Select, validate and convert ``sdata`` for the model (see :func:`soscope.enhance` for the arguments).

    ``request``: which elements to use (default: choose automatically). ``for_training=False`` (data a
    trained model only enhances) leaves out the sub-spot graph, which only the training loss uses.
    ``labels``: annotated regions to learn label features from (training); ``label_classifier``: a trained
    model's classifier that makes them for new data (see :mod:`soscope.features._labels`).
    ``segmentation``: where nuclei are counted per sub-spot (:func:`soscope.io.find_segmentation`); their
    features follow the image features (``nuclei:count``, ...), the counts go to ``SpotData.nuclei_count``.
    With ``use_image=False`` no nuclei are counted (they are image evidence too).
    """
    request = SelectionRequest() if request is None else request
    # a run killed earlier may have left its staging (or a half-done commit) in the store: undo it first,
    # so this run starts from the store as the user had it
    recover_store(sdata)
    if request.image is not False and not use_image:
        request = replace(request, image=False)
    sel = request.select(sdata)
    batch_key = request.batch_key
    check_min_spots(sel.n_spots)
    adata = sdata.tables[sel.table]
    x_all = counts_matrix(sdata, sel)
    var_names = list(map(str, sel.var_names))
    modality_names = list(sel.modalities)
    # a modality holding every column is the matrix itself (no copy of a whole slide's counts)
    columns = [np.flatnonzero(sel.modalities[m]) for m in modality_names]
    matrices = [x_all if len(c) == x_all.shape[1] else x_all[:, c] for c in columns]
    matrices = [m.tocsr() if sp.issparse(m) else np.asarray(m) for m in matrices]
    likelihoods = resolve_likelihoods(matrices, modality_names, likelihood)
    for name, x in zip(modality_names, matrices, strict=True):
        names = [var_names[i] for i in np.flatnonzero(sel.modalities[name])]
        check_values(
            x,
            var_names=names,
            allow_negative=likelihoods[name] == "gaussian",
            what=f"The values of modality {name!r}",
        )
        check_counts(x, likelihoods[name], var_names=names)
        zero_variance_mask(x, var_names=names)
    zero_spots_mask(x_all, spot_names=[str(i) for i in sel.instance_ids])

    # sub-spots per spots element, in intrinsic coordinates; the model works in the coordinate system
    cells_elements = [k for k in sdata.shapes if k not in sel.spots]
    # subspots="auto": the detected platform's default scheme (e.g. Xenium cells, Visium HD grid:2)
    platform = detect_platform(sdata, sel)
    if isinstance(subspots, str) and subspots.strip().lower() == "auto" and platform.subspots != "auto":
        subspots = platform.subspots
    layouts, cs_layouts, centres, edge_parts = {}, [], [], []
    schemes = set()
    n_before = 0
    for name in sel.spots:
        gdf = sdata.shapes[name].iloc[sel.shape_rows_of(name)]
        scheme = parse_subspot_scheme(subspots, gdf, elements=cells_elements)
        schemes.add(scheme)
        cells = None
        if scheme.startswith("cells"):
            cells_name = scheme.split(":", 1)[1] if ":" in scheme else None
            if cells_name is None or cells_name not in sdata.shapes:
                raise SoscopeInputError(
                    f"subspots={subspots!r}: name the shapes element of cells, one of {cells_elements}"
                )
            cells = sdata.shapes[cells_name]
            _check_same_transform(sdata, name, cells_name, sel.coordinate_system_of(name))
        layout = make_subspots(gdf, scheme, cells=cells)
        layouts[name] = layout
        affine = affine_xy(sdata.shapes[name], sel.coordinate_system_of(name))
        cs_layouts.append(_to_cs(layout, affine, polygons=for_training))  # training: for the sub-spot graph
        c = spot_centres(gdf) @ affine[:2, :2].T + affine[:2, 2]
        centres.append(c)
        secs = sel.sections[sel.spots_of(name)]
        edge_parts.append(spot_graph(c, sections=secs) + n_before)
        n_before += len(gdf)
    if len(schemes) > 1:
        raise SoscopeInputError(
            f"the spots elements need different sub-spot schemes {sorted(schemes)}; pass subspots= explicitly"
        )
    layout = concat_layouts(cs_layouts)
    centres_all = np.vstack(centres)
    spacing = lattice_spacing(centres_all) if len(centres_all) > 1 else 1.0

    img_values, img_names, extractor = None, [], None
    provenance: dict[str, Any] = {}
    fitted = refitted = None
    if sel.has_image and use_image:
        from ..features import FoundationModel, subspot_image_features

        # a foundation model's PCA is fitted on the raw embeddings of every section together, then each
        # section is projected on it (a model whose PCA is fitted already projects each tile as it goes)
        fit_pca = isinstance(image_features, FoundationModel) and image_features.needs_fit
        run_with = image_features.embeddings_only() if fit_pca else image_features

        without = [name for name in sel.spots if sel.image_of(name) is None]
        if without:
            # a section without an image among imaged ones: its sub-spots get no image evidence (missing
            # features stand at the mean, so the image says nothing about how its spots split)
            logger.warning(
                "spots %s have no image while the others do: their sub-spots are split without image "
                "evidence. Pass `image=` a dict spots → image to give them one.",
                without,
            )
        parts = []
        for name in sel.spots:
            if sel.image_of(name) is None:
                parts.append(None)
                continue
            feats = subspot_image_features(
                sdata,
                sel.image_of(name),
                layouts[name],
                name,
                coordinate_system=sel.coordinate_system_of(name),
                extractor=run_with,
                progress=progress,
            )
            parts.append(np.asarray(feats.values, dtype=np.float32))
            img_names = list(feats.names)
            provenance.setdefault("sections", {})[name] = dict(feats.provenance)
            provenance["extractor"] = feats.extractor
            if feats.fitted is not None:
                fitted = feats.fitted
        if fit_pca:
            found = [p for p in parts if p is not None]
            fitted = refitted = image_features.fitted(np.vstack(found))
            parts = [None if p is None else fitted.reduce(p) for p in parts]
            img_names = fitted.feature_names
        if fitted is not None:
            provenance.update(fitted.provenance())
        parts = [
            np.full((layouts[name].n_subspots, len(img_names)), np.nan, np.float32) if part is None else part
            for name, part in zip(sel.spots, parts, strict=True)
        ]
        img_values = np.vstack(parts)
        extractor = image_features if isinstance(image_features, str) else repr(image_features)

    section_of_subspot = np.asarray(sel.sections, dtype=str)[layout.spot_index]
    nuclei_values, nuclei_names, nuclei_count, seg_record = _nuclei_features(
        sdata, sel, layouts, segmentation if use_image else None, platform.microns_per_unit
    )
    if not use_image and segmentation is not None:
        seg_record["why"] = "use_image=False"
    if nuclei_values is not None:
        img_values = nuclei_values if img_values is None else np.hstack([img_values, nuclei_values])
        img_names = [*img_names, *nuclei_names]
    label_provenance: dict[str, Any] = {}
    if labels is not None or label_classifier is not None:
        img_values, img_names, label_classifier, label_provenance = _label_features(
            sdata, sel, layouts, labels, label_classifier, img_values, img_names, section_of_subspot
        )

    if batch_key is not None:
        if batch_key not in adata.obs:
            raise SoscopeInputError(
                f"batch_key={batch_key!r} is not a column of table {sel.table!r}.obs; "
                f"columns: {list(adata.obs.columns)}"
            )
        batches = adata.obs[batch_key].astype(str).to_numpy()[sel.spot_rows]
    else:
        batches = np.asarray(sel.sections, dtype=str)

    modalities = [
        ModalitySpec(m, x.shape[1], likelihoods[m]) for m, x in zip(modality_names, matrices, strict=True)
    ]
    data = SpotData(
        counts=matrices,
        modalities=modalities,
        feature_names=[[var_names[i] for i in np.flatnonzero(sel.modalities[m])] for m in modality_names],
        centres=centres_all,
        sections=np.asarray(sel.sections, dtype=str),
        batches=batches,
        layout=layout,
        edge_index=np.hstack(edge_parts),
        spacing=float(spacing),
        image_features=img_values,
        image_feature_names=img_names,
        image_standardiser=None
        if img_values is None
        else SectionStandardiser.fit(img_values, section_of_subspot),
        nuclei_count=nuclei_count,
        # the sub-spot graph serves only the image regulariser of the training loss; each minibatch finds
        # its own edges (bounded memory), with tolerances fixed by the whole layout
        subspot_size=subspot_size(layout) if for_training else None,
    )
    scheme = schemes.pop()
    release_free_memory()  # the temporaries of sub-spots and image features: GBs on a whole slide
    logger.info(
        "platform: %s (%s); sub-spots: %s; likelihood: %s",
        platform.name,
        platform.evidence,
        scheme,
        likelihoods,
    )
    return Prepared(
        data, sel, layouts, scheme, likelihoods, dict(sel.modalities), extractor, platform.name,
        image_provenance=provenance, fitted_extractor=refitted, label_classifier=label_classifier,
        label_provenance=label_provenance, segmentation=seg_record,
    )  # fmt: skip


def _label_features(sdata, sel, layouts, labels, classifier, img_values, img_names, sections):
    """Append the label features (``label:<category>``) to the sub-spot features.

    Training (``labels`` given): each sub-spot's coverage by the labelled regions; with image features, a
    classifier learned on the labelled sub-spots predicts the others (coverage where labelled, prediction
    elsewhere). A trained model's ``classifier`` predicts every sub-spot of new data from its image.
    """
    from ..features import LabelClassifier, SectionStandardiser, label_coverage

    standardised = None
    if img_values is not None:
        standardised = SectionStandardiser.fit(img_values, sections).standardise(img_values, sections)
    provenance: dict[str, Any] = {}
    n_subspots = sum(layout.n_subspots for layout in layouts.values())
    if labels is None:  # new data: the saved classifier, from the image alone (none: uniform)
        extra = classifier.features(np.zeros((n_subspots, 0)) if standardised is None else standardised)
        names = classifier.names()
    else:
        parts, categories = [], None
        for name in sel.spots:
            cs = sel.coordinate_system_of(name)
            polygons = _to_cs(layouts[name], affine_xy(sdata.shapes[name], cs), polygons=True).polygons
            cover, cats = label_coverage(sdata, labels, polygons.to_shapely(), cs)
            if categories is not None and cats != categories:  # align the categories across elements
                full = sorted(set(categories) | set(cats))
                parts = [_recategorise(p, categories, full) for p in parts]
                cover, categories = _recategorise(cover, cats, full), full
            categories = cats if categories is None else categories
            parts.append(cover)
        coverage = np.vstack(parts)
        labelled = coverage.sum(1) >= 0.5
        provenance = {
            "labels": labels,
            "categories": list(categories),
            "labelled_subspots": int(labelled.sum()),
            "labelled_fraction": float(labelled.mean()),
        }
        if standardised is None:
            # nothing to learn the categories from: new data will get uniform label features
            classifier = LabelClassifier(
                list(categories),
                np.zeros((len(categories), 0)),
                np.zeros(len(categories)),
                int(labelled.sum()),
            )
            extra = (coverage / np.maximum(coverage.sum(1, keepdims=True), 1.0)).astype(np.float32)
            provenance["classifier"] = "none (no image): the label features are the coverage alone"
        else:
            classifier = LabelClassifier.fit(standardised, coverage, list(categories))
            extra = classifier.features(standardised, coverage)
            provenance["classifier"] = (
                f"multinomial logistic regression on the image features, {classifier.n_labelled} labelled "
                "sub-spots"
            )
        names = [f"label:{c}" for c in categories]
        logger.info("labels %r: %s", labels, provenance)
    values = extra if img_values is None else np.hstack([img_values, extra])
    return values, [*img_names, *names], classifier, provenance


def _recategorise(cover: np.ndarray, cats: list[str], full: list[str]) -> np.ndarray:
    out = np.zeros((len(cover), len(full)), dtype=cover.dtype)
    out[:, [full.index(c) for c in cats]] = cover
    return out


def _nuclei_features(
    sdata, sel, layouts: dict[str, SubspotLayout], segmentation: str | None, microns_per_unit: float
) -> tuple[np.ndarray | None, list[str], np.ndarray | None, dict]:
    """Nucleus features and counts of every sub-spot, and the record of where the nuclei came from.

    Returns ``(values (M, D) float32 or None, names, counts (M,) float32 or None, record)``: rows follow
    ``sel.spots`` then each layout; sub-spots of spots without a segmentation, or off the raster it was read
    from, get NaN (features stand at the mean, the count is unknown). ``record`` is ``uns``-ready (no None).
    """
    from ..features import NUCLEI_FEATURES, drop_unresolved_detections, subspot_nuclei_features
    from ..io import find_segmentation

    record: dict = {"setting": "None" if segmentation is None else str(segmentation)}
    choices = find_segmentation(sdata, sel, segmentation)
    coarse = drop_unresolved_detections(sdata, choices, microns_per_unit, segmentation)
    if coarse:
        record["not_detected"] = coarse
    if not any(choices.values()):
        return None, [], None, _uns_ready({**record, "source": "none", "n_nuclei": 0})
    without = [name for name in sel.spots if choices[name] is None]
    if without:
        logger.warning(
            "spots %s have no segmentation while the others do: their sub-spots get no nuclei features "
            "(they stand at the mean). Pass `segmentation=` an element that covers them.",
            without,
        )
    parts, per_spots = {}, {}
    for name in sel.spots:
        choice = choices[name]
        if choice is None:
            per_spots[name] = {"source": "none"}
            continue
        part = subspot_nuclei_features(sdata, choice, layouts[name], name, microns_per_unit=microns_per_unit)
        parts[name] = part
        per_spots[name] = part.provenance
    # every feature any part has, in the one order of NUCLEI_FEATURES
    names = [n for n in NUCLEI_FEATURES.values() if any(n in part.names for part in parts.values())]
    values, counts = [], []
    for name in sel.spots:
        m = layouts[name].n_subspots
        block = np.full((m, len(names)), np.nan, np.float32)
        count = np.full(m, np.nan, np.float32)
        if name in parts:
            part = parts[name]
            block[:, [names.index(n) for n in part.names]] = part.values
            count = part.counts
        values.append(block)
        counts.append(count)
    sources = {(r["source"], r.get("element", "")) for r in per_spots.values() if r["source"] != "none"}
    record |= {
        "source": sources.pop()[0] if len(sources) == 1 else "several",
        "n_nuclei": int(sum(r.get("n_nuclei", 0) for r in per_spots.values())),
        "features": names,
        "spots": per_spots,
    }
    if len(per_spots) == 1:
        record["element"] = next(iter(per_spots.values())).get("element", "")
    return np.vstack(values), names, np.concatenate(counts), _uns_ready(record)


def _uns_ready(value):
    """``value`` with None as ``"None"`` and tuples as lists, so that AnnData can write it to ``uns``."""
    if isinstance(value, dict):
        return {str(k): _uns_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_uns_ready(v) for v in value]
    return "None" if value is None else value


def _check_same_transform(sdata, a: str, b: str, cs: str) -> None:
    if not np.allclose(affine_xy(sdata.shapes[a], cs), affine_xy(sdata.shapes[b], cs)):
        raise SoscopeInputError(
            f"the cells element {b!r} and the spots {a!r} use different intrinsic coordinates; "
            f"give them the same transformation to {cs!r} (e.g. transform the cells with sd.transform)"
        )
