"""Human labels as sub-spot features: annotated regions, learned from where labelled, used where not.

A pathologist (or napari-spatialdata) draws a few regions — tumour, stroma, immune — as a shapes element of
polygons with a categorical column, or paints a labels raster whose values index a category table. Each
sub-spot's *coverage* is the share of its polygon inside each category's regions. A multinomial logistic
regression from the sub-spot's image features learns the categories on the labelled sub-spots (coverage of
at least :data:`MIN_COVERAGE`); every sub-spot then gets the category probabilities — its coverage where
labelled, the classifier's prediction where not — as extra sub-spot features (``label:<category>``), which
the model weighs like any image feature (cross-validated evidence, image head). The classifier is saved with
the model, so a new section without labels gets the same features from its image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .._errors import SoscopeInputError

__all__ = ["LabelClassifier", "label_coverage", "resolve_label_element"]

#: a sub-spot is labelled when this share of its polygon lies in labelled regions
MIN_COVERAGE = 0.5
#: fewest labelled sub-spots of at least two categories needed to learn from the labels
MIN_LABELLED = 10


def resolve_label_element(sdata: Any, labels: str) -> tuple[str, str, str]:
    """Return ``(element, kind, column)`` for ``labels="element"`` or ``"element:column"``.

    ``kind`` is ``"shapes"`` or ``"labels"``; ``column`` the categorical column of the shapes (or of the
    category table of a labels raster: a table annotating it with one row per label value).

    Raises
    ------
    SoscopeInputError
        The element is missing or neither shapes nor labels, or the category column is missing or ambiguous.

    """
    if not isinstance(labels, str) or not labels:
        raise SoscopeInputError(
            f"labels= names a shapes element of annotated polygons or a labels raster, not {labels!r}"
        )
    name, _, column = labels.partition(":")
    if name in sdata.shapes:
        frame = sdata.shapes[name]
        kind = "shapes"
    elif name in sdata.labels:
        frame = _category_table(sdata, name).obs
        kind = "labels"
    else:
        other = next((k for k in ("images", "tables", "points") if name in getattr(sdata, k, {})), None)
        where = f"it is one of the {other}" if other else "no element has that name"
        raise SoscopeInputError(
            f"labels={labels!r}: {where}; labels= must name a shapes element of annotated polygons "
            f"(shapes: {sorted(sdata.shapes)}) or a labels raster (labels: {sorted(sdata.labels)})"
        )
    candidates = [
        c
        for c in frame.columns
        if c != "geometry"
        and (isinstance(frame[c].dtype, pd.CategoricalDtype) or frame[c].dtype == object)
        and frame[c].nunique() >= 1
    ]
    if column:
        if column not in frame.columns:
            raise SoscopeInputError(
                f"labels={labels!r}: {kind} element {name!r} has no column {column!r}; columns: "
                f"{[c for c in frame.columns if c != 'geometry']}"
            )
    elif len(candidates) == 1:
        column = candidates[0]
    else:
        raise SoscopeInputError(
            f"labels={labels!r}: {kind} element {name!r} has "
            f"{'no' if not candidates else 'several'} categorical column(s) {candidates}; name the one "
            f"with the categories as labels='{name}:<column>'"
        )
    return name, kind, column


def _category_table(sdata: Any, name: str):
    """Return the table annotating labels raster ``name`` (a row per label value, with categories)."""
    from spatialdata import get_element_annotators

    tables = sorted(get_element_annotators(sdata, name))
    if len(tables) != 1:
        raise SoscopeInputError(
            f"labels raster {name!r} needs exactly one table annotating it (one row per label value, with "
            f"a categorical column); found {tables}"
        )
    return sdata.tables[tables[0]]


def label_coverage(sdata: Any, labels: str, polygons, coordinate_system: str) -> tuple[np.ndarray, list[str]]:
    """``(M, C)`` share of each sub-spot polygon inside each category's regions, and the categories.

    Parameters
    ----------
    sdata
        The SpatialData.
    labels
        ``"element"`` or ``"element:column"`` (see :func:`resolve_label_element`).
    polygons
        ``(M,)`` shapely polygons of the sub-spots, in ``coordinate_system``.
    coordinate_system
        Where the sub-spots are; the labels element must be in it too.

    """
    import shapely
    from spatialdata.transformations import get_transformation

    from .._transforms import affine_xy

    name, kind, column = resolve_label_element(sdata, labels)
    element = sdata.shapes[name] if kind == "shapes" else sdata.labels[name]
    systems = get_transformation(element, get_all=True)
    if coordinate_system not in systems:
        raise SoscopeInputError(
            f"labels={labels!r}: the element is not in coordinate system {coordinate_system!r} of the spots "
            f"(it is in {sorted(systems)}); give it a transformation there"
        )
    if kind == "shapes":
        frame = element
        cats = frame[column].astype(str)
        regions = shapely.transform(
            np.asarray(frame.geometry.values), lambda xy: _apply(affine_xy(element, coordinate_system), xy)
        )
    else:
        regions, cats = _raster_regions(sdata, name, column, coordinate_system)
    categories = sorted(pd.unique(cats))
    polys = np.asarray(polygons)
    area = np.maximum(shapely.area(polys), 1e-300)
    cover = np.zeros((len(polys), len(categories)))
    tree = shapely.STRtree(polys)
    for j, cat in enumerate(categories):
        union = shapely.union_all(np.asarray(regions)[np.asarray(cats) == cat])
        hits = tree.query(union, predicate="intersects")
        if len(hits):
            cover[hits, j] = shapely.area(shapely.intersection(polys[hits], union)) / area[hits]
    return np.clip(cover, 0.0, 1.0), categories


def _apply(affine: np.ndarray, xy: np.ndarray) -> np.ndarray:
    return xy @ affine[:2, :2].T + affine[:2, 2]


def _raster_regions(sdata: Any, name: str, column: str, coordinate_system: str):
    """Return the outlines (scikit-image contours) of each labelled value of a raster, and categories."""
    import shapely
    from skimage.measure import find_contours
    from spatialdata import get_pyramid_levels
    from spatialdata.transformations import get_transformation

    element = sdata.labels[name]
    table = _category_table(sdata, name)
    instance_key = table.uns["spatialdata_attrs"]["instance_key"]
    lookup = dict(zip(table.obs[instance_key].to_numpy(), table.obs[column].astype(str), strict=True))
    level = get_pyramid_levels(element, n=0) if hasattr(element, "children") else element
    arr = np.asarray(level)
    transform = get_transformation(level if not hasattr(element, "children") else element, coordinate_system)
    affine = transform.to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y"))
    regions, cats = [], []
    for value in np.unique(arr):
        if value == 0 or value not in lookup:
            continue
        mask = np.pad(arr == value, 1)
        for contour in find_contours(mask.astype(float), 0.5):
            if len(contour) < 4:
                continue
            xy = contour[:, ::-1] - 1.0 + 0.5  # (row, col) -> pixel-centre x, y
            poly = shapely.Polygon(_apply(affine, xy))
            if poly.is_valid and poly.area > 0:
                regions.append(poly)
                cats.append(lookup[value])
    return regions, cats


@dataclass
class LabelClassifier:
    """Multinomial logistic regression from standardised sub-spot features to the label categories."""

    categories: list[str]
    coef: np.ndarray  # (C, D)
    intercept: np.ndarray  # (C,)
    n_labelled: int = 0

    @classmethod
    def fit(cls, features: np.ndarray, coverage: np.ndarray, categories: list[str], seed: int = 0):
        """Learn the categories of the labelled sub-spots (coverage ≥ :data:`MIN_COVERAGE`) from features.

        Raises a clear error when fewer than :data:`MIN_LABELLED` sub-spots of at least two categories
        are labelled.
        """
        from sklearn.linear_model import LogisticRegression

        cover = np.asarray(coverage)
        labelled = cover.sum(1) >= MIN_COVERAGE
        y = cover[labelled].argmax(1)
        present = np.unique(y)
        if labelled.sum() < MIN_LABELLED or len(present) < 2:
            raise SoscopeInputError(
                f"labels: {int(labelled.sum())} sub-spots are labelled (at least {MIN_COVERAGE:.0%} of their "
                f"polygon inside labelled regions), of {len(present)} categories; at least {MIN_LABELLED} "
                "sub-spots of 2 or more categories are needed to learn from the labels. Draw larger regions "
                "or label more categories."
            )
        x = np.nan_to_num(np.asarray(features, dtype=np.float64))
        model = LogisticRegression(C=1.0, max_iter=500, random_state=seed)
        model.fit(x[labelled], y)
        coef = np.zeros((len(categories), x.shape[1]))
        intercept = np.full(len(categories), -30.0)  # a category never labelled is never predicted
        if len(present) == 2:  # scikit-learn's binary form: one row for the second class
            coef[present[1]], intercept[present[1]] = model.coef_[0], model.intercept_[0]
            intercept[present[0]] = 0.0
        else:
            coef[present], intercept[present] = model.coef_, model.intercept_
        return cls(list(categories), coef, intercept, int(labelled.sum()))

    def predict(self, features: np.ndarray) -> np.ndarray:
        """``(M, C)`` category probabilities of each sub-spot."""
        logits = np.nan_to_num(np.asarray(features, dtype=np.float64)) @ self.coef.T + self.intercept
        logits -= logits.max(1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(1, keepdims=True)

    def features(self, features: np.ndarray, coverage: np.ndarray | None = None) -> np.ndarray:
        """``(M, C)`` label features: the coverage where labelled, the prediction elsewhere."""
        pred = self.predict(features)
        if coverage is None:
            return pred.astype(np.float32)
        cover = np.asarray(coverage)
        labelled = cover.sum(1) >= MIN_COVERAGE
        share = cover / np.maximum(cover.sum(1, keepdims=True), 1e-12)
        return np.where(labelled[:, None], share, pred).astype(np.float32)

    def names(self) -> list[str]:
        """Feature names, ``label:<category>``."""
        return [f"label:{c}" for c in self.categories]
