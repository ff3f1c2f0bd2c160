"""Scoring an enhancement (and the naive baselines) against sub-spot truth."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .._errors import SoscopeInputError
from ..io import layer_names, table_annotation
from ._baselines import (
    count_oracle,
    even_split,
    expected_counts_oracle,
    gaussian_interpolation,
    image_regression,
    image_ridge_split,
    interpolation_split,
)
from ._metrics import pearson_per_feature, rmse_normalised, spearman_per_feature, ssim_maps, summary

if TYPE_CHECKING:  # pragma: no cover
    from spatialdata import SpatialData

__all__ = ["score", "score_arrays", "BASELINES", "ORACLES"]

logger = logging.getLogger(__name__)

#: names of the baselines :func:`score` can compute
BASELINES = (
    "even_split",
    "gaussian_interpolation",
    "interpolation_split",
    "image_regression",
    "image_ridge_split",
)
#: reference methods that use the truth (not baselines: nothing one could run on real data); :func:`score`
#: computes them with ``baselines=True`` when the truth has what they need
ORACLES = ("count_oracle", "expected_counts_oracle")


def score_arrays(
    pred,
    truth,
    centroids=None,
    *,
    features: Sequence[str] | None = None,
    grid_size: float | None = None,
    rmse_method: str = "log1p",
) -> pd.DataFrame:
    """Per-feature scores of matched ``(M, F)`` arrays.

    Parameters
    ----------
    pred, truth
        Predicted and true sub-spot values (dense or sparse), rows and columns matched.
    centroids
        ``(M, 2)`` sub-spot centres; when given, SSIM of the rasterised maps is added.
    features
        Names for the rows of the result (default ``0..F-1``).
    grid_size
        Pixel size for SSIM (see :func:`soscope.evaluate.ssim_maps`).
    rmse_method
        ``"log1p"`` or ``"zscore"`` (see :func:`soscope.evaluate.rmse_normalised`).

    Returns
    -------
    DataFrame with columns ``pearson``, ``spearman``, ``rmse`` (and ``ssim``), one row per feature.

    """
    out = {
        "pearson": pearson_per_feature(pred, truth),
        "spearman": spearman_per_feature(pred, truth),
        "rmse": rmse_normalised(pred, truth, method=rmse_method),
    }
    if centroids is not None:
        out["ssim"] = ssim_maps(pred, truth, centroids, grid_size)
    index = pd.Index(features if features is not None else np.arange(len(out["pearson"])), name="feature")
    if len(index) != len(out["pearson"]):
        raise SoscopeInputError(f"`features` has {len(index)} names for {len(out['pearson'])} columns.")
    return pd.DataFrame(out, index=index)


# --------------------------------------------------------------------------------------------- helpers
def _table(sdata: SpatialData, name: str, what: str):
    if name not in sdata.tables:
        raise SoscopeInputError(
            f"No table named {name!r} ({what}); tables: {sorted(sdata.tables)}. Set the matching argument."
        )
    return sdata.tables[name]


def _keys(obs: pd.DataFrame, name: str) -> pd.MultiIndex:
    missing = [c for c in ("spot_id", "subspot") if c not in obs.columns]
    if missing:
        raise SoscopeInputError(
            f"Table {name!r} lacks obs column(s) {missing}: sub-spot rows are matched by (spot_id, subspot)."
        )
    return pd.MultiIndex.from_arrays(
        [
            pd.Index(obs["spot_id"].to_numpy()).astype(str),
            pd.Index(obs["subspot"].to_numpy()).astype(np.int64),
        ],
        names=["spot_id", "subspot"],
    )


def _matrix(adata, layer: str | None, cols: np.ndarray) -> np.ndarray:
    x = adata.layers[layer] if layer is not None else adata.X
    x = x[:, cols]
    if sp.issparse(x):
        x = x.toarray()
    return np.asarray(x, dtype=np.float64)


def _resolve_features(features, tabs: list, names: list[str]) -> list[str]:
    common = pd.Index(tabs[0].var_names)
    for t in tabs[1:]:
        common = common[common.isin(t.var_names)]
    if len(common) == 0:
        raise SoscopeInputError(f"Tables {names} share no feature (var) names.")
    if features is None:
        return list(common)
    if isinstance(features, str):
        for t in tabs:
            if features in t.var.columns:
                mask = t.var[features].reindex(common).fillna(False).astype(bool).to_numpy()
                out = list(common[mask])
                if not out:
                    raise SoscopeInputError(f"var column {features!r} selects no shared feature.")
                return out
        raise SoscopeInputError(
            f"`features={features!r}` is neither a list of names nor a boolean var column of {names}."
        )
    feats = [str(f) for f in features]
    missing = [f for f in feats if f not in common]
    if missing:
        raise SoscopeInputError(f"Features not in every table ({names}): {missing[:10]}.")
    return feats


def _image_for(sdata: SpatialData, image: Any, region: str, n_regions: int) -> str | None:
    images = list(sdata.images)
    if image is False or not images:
        return None
    if isinstance(image, dict):
        return image.get(region)
    if isinstance(image, str):
        if image not in sdata.images:
            raise SoscopeInputError(f"No image named {image!r}; images: {images}.")
        return image
    guess = region.replace("spots", "image", 1) if region.startswith("spots") else None
    if guess in sdata.images:
        return guess
    if len(images) == 1 and n_regions == 1:
        return images[0]
    return None


def _shared_cs(sdata: SpatialData, names: list[str], cs: str | None) -> str | None:
    from spatialdata.transformations import get_transformation

    common = set.intersection(*[set(get_transformation(sdata[n], get_all=True)) for n in names])
    if cs is not None:
        return cs if cs in common else None
    if "global" in common:
        return "global"
    return sorted(common)[0] if common else None


# ------------------------------------------------------------------------------------------------ score
def score(
    sdata: SpatialData,
    *,
    key_added: str | None = "soscope",
    truth: str = "truth",
    table: str = "table",
    spots: str | Sequence[str] | None = None,
    features: Sequence[str] | str | None = None,
    baselines: bool | Sequence[str] = True,
    layer: str | None = None,
    image: str | dict | bool | None = None,
    coordinate_system: str | None = None,
    ssim: bool = True,
    rmse_method: str = "log1p",
    cell_counts: str = "n_cells",
) -> tuple[pd.DataFrame, dict]:
    """Score an enhancement and naive baselines against the sub-spot truth.

    Parameters
    ----------
    sdata
        Holds the spot table, its spots element(s), the truth table (e.g. from
        :func:`soscope.datasets.synthetic` or :func:`soscope.evaluate.pseudo_spots`) and the enhanced table
        ``f"{table}_{key_added}"`` written by :func:`soscope.enhance`.
    key_added
        Suffix of the enhanced table; ``None`` scores the baselines only.
    truth
        Truth table: one row per sub-spot with obs ``spot_id`` and ``subspot``; its ``uns["subspots"]``
        (``scheme``, ``spacing``) tells how the baselines' sub-spots are made (default ``"auto"``).
    table
        The spot table (counts in ``X`` or ``layer``) the baselines start from.
    spots
        Spots element(s) of ``table``; default: every region the table annotates.
    features
        Features to score: ``None`` (all shared by the tables), a list of names, or the name of a boolean
        ``var`` column (e.g. ``"informative"``).
    baselines
        ``True`` (all of :data:`BASELINES` and :data:`ORACLES` that apply; ``image_regression`` and
        ``image_ridge_split`` need an image, ``count_oracle`` the truth's cell counts,
        ``expected_counts_oracle`` the truth's expected counts), ``False``, or a list of names.
    layer
        Layer of ``table`` with the spot counts (default ``X``). The enhanced and truth tables use ``X``.
    image
        Image for ``image_regression``: a name, ``{region: name}``, ``False`` for none, or ``None``: the
        image named like the region (``spots_A`` → ``image_A``), else the only image.
    coordinate_system
        System shared by spots and image (default ``"global"`` when shared, else the first shared one).
    ssim
        Compute SSIM of rasterised sub-spot maps (the slowest metric).
    rmse_method
        See :func:`soscope.evaluate.rmse_normalised`.
    cell_counts
        obs column of the truth table with the true number of cells per sub-spot, for the ORACLE
        ``count_oracle`` (:func:`soscope.evaluate.count_oracle`: the observed counts split by the true
        cells; it uses the truth, so it is a ceiling to read beside the baselines, not one of them). When
        the column is missing the oracle is skipped. The ORACLE ``expected_counts_oracle``
        (:func:`soscope.evaluate.expected_counts_oracle`: each sub-spot's expected counts given its spot's
        counts and the true means — the observed counts split by the true footprint means, the outside
        part at its mean) needs the truth's ``layers["mean"]`` (simulated data,
        :func:`soscope.datasets.synthetic`; ``layers["mean_footprint"]`` too when there is one); skipped
        without it.

    Returns
    -------
    per_feature
        One row per feature; columns ``"<metric>_<method>"`` for metrics ``pearson``, ``spearman``,
        ``rmse`` (lower is better), ``ssim`` and methods ``soscope`` (the enhanced table, whatever its
        ``key_added``), each baseline and the oracles ``count_oracle`` and ``expected_counts_oracle`` (they
        use the truth); plus ``truth_mean``.
    summary
        :func:`soscope.evaluate.summary` of ``per_feature`` (means, medians, and under ``"beats"`` the share
        of features where soscope beats each baseline), plus ``n_subspots`` (matched rows), ``features``
        count, ``methods``, ``oracles`` (the methods among them that use the truth) and ``skipped``
        (baselines that could not run, with the reason).

    Notes
    -----
    Rows are matched by ``(spot_id, subspot)`` (compared as strings / integers), which must be unique in
    the truth table (spot ids unique across sections, as ``synthetic`` makes them). Only rows present in
    the truth, the enhanced table and the baselines' layout are scored.

    """
    from ..geometry import make_subspots, spot_centres

    t_truth = _table(sdata, truth, "truth")
    t_spots = _table(sdata, table, "spot table")
    t_enh = None
    if key_added:
        t_enh = _table(
            sdata,
            f"{table}_{key_added}",
            f"enhanced table for key_added={key_added!r}; set key_added=None to score the baselines only",
        )
    if layer is not None and layer not in t_spots.layers:
        raise SoscopeInputError(f"Table {table!r} has no layer {layer!r}; layers: {layer_names(t_spots)}.")
    if baselines is True:
        wanted = list(BASELINES) + list(ORACLES)
    elif baselines is False or baselines is None:
        wanted = []
    else:
        wanted = list(baselines)
        bad = [b for b in wanted if b not in BASELINES + ORACLES]
        if bad:
            raise SoscopeInputError(f"Unknown baseline(s) {bad}; choose from {list(BASELINES + ORACLES)}.")
    if t_enh is None and not wanted:
        raise SoscopeInputError("Nothing to score: no enhanced table (key_added=None) and no baselines.")

    tabs = [t_truth, t_spots] + ([t_enh] if t_enh is not None else [])
    feats = _resolve_features(
        features, tabs, [truth, table] + ([f"{table}_{key_added}"] if t_enh is not None else [])
    )

    truth_keys = _keys(t_truth.obs, truth)
    if truth_keys.has_duplicates:
        raise SoscopeInputError(
            f"Truth table {truth!r} has repeated (spot_id, subspot) pairs: spot ids must be unique across "
            "sections to match sub-spots."
        )

    annotation = table_annotation(sdata, table)
    if spots is None:
        regions = annotation.regions
    else:
        regions = [spots] if isinstance(spots, str) else list(spots)
    missing = [r for r in regions if r not in sdata.shapes]
    if missing:
        raise SoscopeInputError(
            f"Spots element(s) {missing} not in the SpatialData; shapes: {sorted(sdata.shapes)}."
        )
    if annotation.instance_key not in t_spots.obs:
        raise SoscopeInputError(f"Table {table!r} has no instance key column; parse it with TableModel.")

    sub_uns = t_truth.uns.get("subspots", {})
    scheme = str(sub_uns.get("scheme", "auto"))
    spacing = sub_uns.get("spacing")
    spacing = float(spacing) if spacing is not None else None
    col_spots = t_spots.var_names.get_indexer(feats)

    keys_parts, cent_parts, preds = [], [], {b: [] for b in wanted}
    skipped: dict[str, str] = {}
    true_cells = None
    if "count_oracle" in wanted:
        if cell_counts in t_truth.obs.columns:
            true_cells = pd.to_numeric(t_truth.obs[cell_counts], errors="coerce").to_numpy(dtype=np.float64)
            true_cells = np.where(np.isfinite(true_cells) & (true_cells >= 0), true_cells, 0.0)
        else:
            skipped["count_oracle"] = f"the truth table {truth!r} has no obs column {cell_counts!r} (cells)"
    true_means = true_foot = None
    if "expected_counts_oracle" in wanted:
        if "mean" in t_truth.layers:
            cols = t_truth.var_names.get_indexer(feats)
            true_means = t_truth.layers["mean"][:, cols]
            true_means = true_means.toarray() if sp.issparse(true_means) else np.asarray(true_means)
            if "mean_footprint" in t_truth.layers:  # the part inside the footprint (simulated)
                foot = t_truth.layers["mean_footprint"][:, cols]
                true_foot = foot.toarray() if sp.issparse(foot) else np.asarray(foot)
        else:
            skipped["expected_counts_oracle"] = (
                f"the truth table {truth!r} has no layer 'mean' (expected counts: simulated data only)"
            )
    x_offset = 0.0
    for r in regions:
        rows = annotation.rows_of(t_spots, r)
        gdf = sdata.shapes[r]
        ids = annotation.instance_ids(t_spots, rows)
        present = ids.isin(gdf.index)
        rows, ids = rows[present], ids[present]
        if len(rows) == 0:
            continue
        gsub = gdf.loc[ids]
        layout = make_subspots(gsub, scheme, spacing=spacing)
        ids_str = ids.astype(str).to_numpy()
        keys_parts.append(
            pd.MultiIndex.from_arrays(
                [pd.Index(ids_str[layout.spot_index]), pd.Index(layout.subspot.astype(np.int64))],
                names=["spot_id", "subspot"],
            )
        )
        cent = layout.centroid.copy()
        cent[:, 0] += x_offset - cent[:, 0].min()
        x_offset = cent[:, 0].max() + 4 * (spacing or np.sqrt(np.median(layout.area)))
        cent_parts.append(cent)
        if not wanted:
            continue
        counts = t_spots.layers[layer] if layer is not None else t_spots.X
        counts = counts[rows][:, col_spots]
        counts = counts.toarray() if sp.issparse(counts) else np.asarray(counts)
        counts = counts.astype(np.float64)
        if "even_split" in wanted:
            preds["even_split"].append(even_split(counts, layout))
        if "gaussian_interpolation" in wanted:
            preds["gaussian_interpolation"].append(gaussian_interpolation(counts, spot_centres(gsub), layout))
        if "interpolation_split" in wanted:
            preds["interpolation_split"].append(interpolation_split(counts, spot_centres(gsub), layout))
        if "count_oracle" in wanted:
            if true_cells is None:
                preds["count_oracle"].append(None)
            else:  # sub-spots missing from the truth hold no (known) cell
                pos = truth_keys.get_indexer(keys_parts[-1])
                n = np.where(pos >= 0, true_cells[np.maximum(pos, 0)], 0.0)
                preds["count_oracle"].append(count_oracle(counts, n, layout))
        if "expected_counts_oracle" in wanted:
            if true_means is None:
                preds["expected_counts_oracle"].append(None)
            else:  # sub-spots missing from the truth expect nothing
                pos = truth_keys.get_indexer(keys_parts[-1])
                m = np.where((pos >= 0)[:, None], true_means[np.maximum(pos, 0)], 0.0)
                f = (
                    None
                    if true_foot is None
                    else np.where((pos >= 0)[:, None], true_foot[np.maximum(pos, 0)], 0.0)
                )
                preds["expected_counts_oracle"].append(expected_counts_oracle(counts, m, layout, f))
        image_baselines = [b for b in ("image_regression", "image_ridge_split") if b in wanted]
        if image_baselines:
            img = _image_for(sdata, image, r, len(regions))
            cs = _shared_cs(sdata, [r, img], coordinate_system) if img is not None else None
            if img is None or cs is None:
                for b in image_baselines:
                    skipped[b] = f"no image (with a shared coordinate system) for {r!r}"
                    preds[b].append(None)
            else:
                from ..features import subspot_image_features

                z = np.asarray(subspot_image_features(sdata, img, layout, r, coordinate_system=cs))
                for b, fn in (
                    ("image_regression", image_regression),
                    ("image_ridge_split", image_ridge_split),
                ):
                    if b in wanted:
                        preds[b].append(fn(counts, z, layout))
    if not keys_parts:
        raise SoscopeInputError(f"No spot of table {table!r} is found in {regions}.")
    base_keys = keys_parts[0].append(keys_parts[1:]) if len(keys_parts) > 1 else keys_parts[0]
    centroids = np.vstack(cent_parts)
    methods: dict[str, np.ndarray] = {}
    for b in wanted:
        if any(p is None for p in preds[b]):
            continue
        methods[b] = np.vstack(preds[b]) if len(preds[b]) > 1 else preds[b][0]

    # rows present everywhere
    pos_base = base_keys.get_indexer(truth_keys)
    ok = pos_base >= 0
    pos_enh = None
    if t_enh is not None:
        enh_keys = _keys(t_enh.obs, f"{table}_{key_added}")
        if enh_keys.has_duplicates:
            raise SoscopeInputError("The enhanced table has repeated (spot_id, subspot) pairs.")
        pos_enh = enh_keys.get_indexer(truth_keys)
        ok &= pos_enh >= 0
    truth_rows = np.flatnonzero(ok)
    if len(truth_rows) < 2:
        raise SoscopeInputError(
            "Fewer than two sub-spots match between the truth, the enhanced table and the spots' sub-spots "
            f"(by spot_id, subspot); check that they come from the same spots and scheme ({scheme!r})."
        )
    y = _matrix(t_truth, None, t_truth.var_names.get_indexer(feats))[truth_rows]
    cen = centroids[pos_base[truth_rows]] if ssim else None
    frames = {}
    if t_enh is not None:
        pred = _matrix(t_enh, None, t_enh.var_names.get_indexer(feats))[pos_enh[truth_rows]]
        frames["soscope"] = score_arrays(pred, y, cen, features=feats, rmse_method=rmse_method)
    for name, arr in methods.items():
        frames[name] = score_arrays(
            arr[pos_base[truth_rows]], y, cen, features=feats, rmse_method=rmse_method
        )
    per_feature = pd.DataFrame(index=pd.Index(feats, name="feature"))
    for name, df in frames.items():
        for col in df.columns:
            per_feature[f"{col}_{name}"] = df[col].to_numpy()
    per_feature["truth_mean"] = y.mean(axis=0)
    summ = summary(per_feature, reference="soscope")
    summ.update(
        {
            "n_subspots": int(len(truth_rows)),
            "n_truth_subspots": int(t_truth.n_obs),
            "methods": list(frames),
            "oracles": [m for m in frames if m in ORACLES],
            "skipped": skipped,
        }
    )
    if skipped:
        for k, v in skipped.items():
            if k in ORACLES and baselines is True:  # not asked for by name: nothing to warn about
                logger.info("oracle %s skipped: %s", k, v)
            else:
                logger.warning("baseline %s skipped: %s", k, v)
    return per_feature, summ
