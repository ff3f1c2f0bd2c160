"""Training curves and accuracy distributions."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from soscope._constants import SoscopeKeys
from soscope._errors import SoscopeInputError
from soscope.pl._utils import axes_list, new_figure, save_figure

__all__ = ["training", "accuracy"]

_SOSCOPE_KEY = SoscopeKeys.UNS


# --------------------------------------------------------------------------------------------- history
def _history_from_uns(uns: Mapping[str, Any]) -> Any:
    info = uns.get(_SOSCOPE_KEY)
    if not isinstance(info, Mapping):
        return None
    for key in ("history", "training_history", "train_history"):
        if key in info:
            return info[key]
    train = info.get("training")
    if isinstance(train, Mapping) and "history" in train:
        return train["history"]
    return None


def _history_dict(obj: Any, key_added: str) -> dict[str, Any]:
    """Turn what the user passed into ``{name: list or scalar}``."""
    import pandas as pd

    if obj is None:
        raise SoscopeInputError("No training history given: pass a SoScope model, its `.history`, or a dict.")
    if hasattr(obj, "tables") and hasattr(obj, "shapes"):  # SpatialData: the enhanced table's uns
        cands = [n for n, t in obj.tables.items() if _SOSCOPE_KEY in t.uns]
        named = [n for n in cands if n.endswith(f"_{key_added}")] or cands
        for name in named:
            h = _history_from_uns(obj.tables[name].uns)
            if h is not None:
                return _history_dict(h, key_added)
        raise SoscopeInputError(
            f"No soscope table with a training history in the SpatialData (soscope tables: {cands}); enhance "
            "it with `soscope.enhance` (which trains a model) or pass the model."
        )
    if hasattr(obj, "uns") and hasattr(obj, "obs"):  # AnnData
        h = _history_from_uns(obj.uns)
        if h is None:
            raise SoscopeInputError("The table has no uns['soscope']['history']: pass the model instead.")
        return _history_dict(h, key_added)
    if hasattr(obj, "history") and not isinstance(obj, Mapping):  # SoScope model
        return _history_dict(obj.history, key_added)
    if hasattr(obj, "as_dict"):
        return dict(obj.as_dict())
    if isinstance(obj, pd.DataFrame):
        return {str(c): obj[c].to_list() for c in obj.columns}
    if isinstance(obj, Mapping):
        return {str(k): (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in obj.items()}
    if isinstance(obj, Sequence) and obj and isinstance(obj[0], Mapping):  # list of per-epoch records
        return _history_dict(pd.DataFrame(list(obj)), key_added)
    if hasattr(obj, "__dict__"):
        return dict(vars(obj))
    raise SoscopeInputError(
        f"Cannot read a training history from {type(obj).__name__}: pass a SoScope model, its `.history`, a "
        "dict of per-epoch lists, or a DataFrame."
    )


def _curves(hist: Mapping[str, Any]) -> dict[str, np.ndarray]:
    out = {}
    for k, v in hist.items():
        if k in ("epoch", "epochs", "lr", "learning_rate") or isinstance(v, (str, bytes, Mapping)):
            continue
        if np.ndim(v) != 1 or len(v) == 0:
            continue
        try:
            arr = np.asarray([np.nan if x is None else x for x in v], dtype=float)
        except (TypeError, ValueError):
            continue
        if np.isfinite(arr).any():
            out[k] = arr
    return out


def training(
    history_or_model: Any,
    *,
    key_added: str = "soscope",
    logy: bool | str = "auto",
    show_lr: bool = False,
    ax: Any = None,
    save: str | os.PathLike | None = None,
    figsize: tuple[float, float] = (6.0, 4.0),
    dpi: float = 100,
):
    """Plot the training (and validation) loss per epoch.

    Parameters
    ----------
    history_or_model
        A trained :class:`soscope.SoScope` (its ``.history``), a history object or dict of per-epoch lists
        (``epoch``, ``train_loss``, ``validation_loss``, ..., ``best_epoch``), a DataFrame, an enhanced table,
        or a SpatialData holding one (``uns["soscope"]["history"]``).
    key_added
        With a SpatialData: the enhanced table ``*_{key_added}`` to read the history from.
    logy
        Logarithmic loss axis: ``"auto"`` when every loss is positive and they span a factor > 30.
    show_lr
        Also draw the learning rate (right axis) when the history records it.
    ax
        An Axes to draw into; default a new figure.
    save
        Write the figure to this path.
    figsize, dpi
        Size of a new figure.

    Returns
    -------
    The matplotlib Figure.

    """
    hist = _history_dict(history_or_model, key_added)
    curves = _curves(hist)
    if not curves:
        raise SoscopeInputError(
            f"The training history holds no loss curve (keys: {sorted(hist)}): train the model first."
        )
    n = max(len(v) for v in curves.values())
    epoch = hist.get("epoch") or hist.get("epochs")
    x_all = (
        np.asarray(epoch, dtype=float) if epoch is not None and len(epoch) == n else np.arange(n, dtype=float)
    )

    if ax is None:
        fig = new_figure(figsize, dpi=dpi)
        a = fig.subplots()
    else:
        a = axes_list(ax, 1, "one loss panel")[0]
        fig = a.figure
    for name, y in curves.items():
        x = x_all[: len(y)]
        label = name.replace("_", " ")
        a.plot(x, y, lw=1.5, label=label, marker="o" if len(y) < 15 else None, ms=3)
    values = np.concatenate([v[np.isfinite(v)] for v in curves.values()])
    if logy == "auto":
        logy = bool((values > 0).all() and values.max() / values.min() > 30)
    if logy:
        a.set_yscale("log")
    best = hist.get("best_epoch")
    if isinstance(best, (int, float, np.integer, np.floating)) and best >= 0:
        a.axvline(float(best), color="0.5", ls="--", lw=1, label=f"best epoch ({int(best)})")
    if show_lr and hist.get("lr") is not None and len(hist["lr"]):
        lr = np.asarray(hist["lr"], dtype=float)
        a2 = a.twinx()
        a2.plot(x_all[: len(lr)], lr, color="0.6", lw=1, ls=":", label="learning rate")
        a2.set_ylabel("learning rate")
    from matplotlib.ticker import MaxNLocator

    a.xaxis.set_major_locator(MaxNLocator(integer=True))
    a.set_xlabel("epoch")
    a.set_ylabel("loss")
    a.set_title("soscope training")
    a.legend(frameon=False, fontsize=9)
    a.grid(alpha=0.3)
    save_figure(fig, save)
    return fig


# --------------------------------------------------------------------------------------------- accuracy
def _scores_by_method(per_feature: Any, metric: str) -> dict[str, np.ndarray]:
    """Return ``{method: scores}`` from a wide ``<metric>_<method>`` table, a long table or a dict."""
    import pandas as pd

    if isinstance(per_feature, Mapping):
        return {str(k): np.asarray(v, dtype=float) for k, v in per_feature.items()}
    if not isinstance(per_feature, pd.DataFrame):
        raise SoscopeInputError(
            f"Expected a per-feature DataFrame (as `soscope.evaluate.score` returns), got "
            f"{type(per_feature).__name__}."
        )
    df = per_feature
    if "method" in df.columns and metric in df.columns:  # long format
        return {str(m): g[metric].to_numpy(float) for m, g in df.groupby("method", sort=False)}
    out: dict[str, np.ndarray] = {}
    for col in df.columns:
        m, _, method = str(col).partition("_")
        if m == metric:
            out[method or "value"] = pd.to_numeric(df[col], errors="coerce").to_numpy(float)
    if not out:
        metrics = sorted({str(c).partition("_")[0] for c in df.columns})
        raise SoscopeInputError(
            f"No '{metric}_<method>' column in the per-feature table (metrics present: {metrics}); pass "
            "`metric=` one of those."
        )
    return out


def accuracy(
    per_feature: Any,
    *,
    metric: str = "pearson",
    reference: str = "soscope",
    ax: Any = None,
    save: str | os.PathLike | None = None,
    figsize: tuple[float, float] | None = None,
    dpi: float = 100,
):
    """Plot the distribution of a per-feature score (default Pearson) for soscope and the baselines.

    Parameters
    ----------
    per_feature
        The per-feature table from :func:`soscope.evaluate.score`: columns ``"<metric>_<method>"``
        (e.g. ``pearson_soscope``, ``pearson_even_split``), one row per feature. A long table with columns
        ``method`` and ``<metric>``, or a dict ``method → scores``, also works.
    metric
        Which score to draw (``"pearson"``, ``"spearman"``, ``"rmse"``, ``"ssim"``).
    reference
        The method drawn first and highlighted.
    ax
        An Axes to draw into; default a new figure.
    save
        Write the figure to this path.
    figsize, dpi
        Size of a new figure.

    Returns
    -------
    The matplotlib Figure: one box (with the features as points) per method, medians written above.

    """
    scores = _scores_by_method(per_feature, metric)
    methods = sorted(
        scores,
        key=lambda m: (m != reference, -np.nanmedian(scores[m]) if np.isfinite(scores[m]).any() else np.inf),
    )
    data = [scores[m][np.isfinite(scores[m])] for m in methods]
    if not any(len(d) for d in data):
        raise SoscopeInputError(f"Every '{metric}' score is NaN: nothing to plot (constant features?).")
    if ax is None:
        fig = new_figure(figsize or (1.4 * len(methods) + 2.0, 4.0), dpi=dpi)
        a = fig.subplots()
    else:
        a = axes_list(ax, 1, "one accuracy panel")[0]
        fig = a.figure
    pos = np.arange(1, len(methods) + 1)
    bp = a.boxplot(data, positions=pos, widths=0.55, showfliers=False, patch_artist=True)
    for patch, m in zip(bp["boxes"], methods, strict=True):
        patch.set_facecolor("#4c72b0" if m == reference else "#c8c8c8")
        patch.set_alpha(0.6)
    for median in bp["medians"]:
        median.set_color("black")
    rng = np.random.default_rng(0)
    for p, d in zip(pos, data, strict=True):
        a.scatter(
            p + rng.uniform(-0.18, 0.18, len(d)), d, s=6, color="0.2", alpha=0.5, zorder=3, linewidths=0
        )
        if len(d):
            a.annotate(
                f"{np.median(d):.3f}",
                (p, np.max(d)),
                xytext=(0, 4),
                textcoords="offset points",
                ha="center",
                fontsize=8,
            )
    a.set_xticks(pos)
    a.set_xticklabels([m.replace("_", " ") for m in methods], rotation=20, ha="right")
    a.set_ylabel(f"per-feature {metric}")
    n = max(len(d) for d in data)
    a.set_title(f"{metric} of sub-spot maps vs truth ({n} features)")
    a.grid(axis="y", alpha=0.3)
    save_figure(fig, save)
    return fig
