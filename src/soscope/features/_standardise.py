"""Image features standardised per section, so a model trained on one section applies to another.

Two sections stained, scanned or imaged on different days differ in brightness, contrast and colour far
more than their tissue does. Standardising each section's image features with the section's *own* mean and
standard deviation (rather than the training section's) removes those per-section shifts and scales before
the model sees them; the model's image weights, fitted on standardised features, then carry over.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from soscope._errors import SoscopeInputError

__all__ = ["MIN_SECTION_ROWS", "SectionStandardiser", "standardise_per_section"]

#: sections with fewer finite rows than this use the fallback statistics (their own would be noise)
MIN_SECTION_ROWS = 50
#: standardised values are clipped to ±this (as the model's own standardisation)
CLIP = 8.0
_BLOCK = 1 << 16


@dataclass(frozen=True)
class SectionStandardiser:
    """Per-section mean and standard deviation of image features; standardises rows by their section.

    Fit once on every row of each section (:meth:`fit`), then standardise any subset of rows (a chunk)
    with :meth:`standardise`: the result of a row does not depend on which other rows are in the call.

    Attributes
    ----------
    labels
        ``(S,)`` section labels, sorted.
    mean, std
        ``(S, D)`` float32 statistics per section (std floored at 1e-6).
    fallback
        Whether each section uses the fallback statistics (fewer than ``min_rows`` finite rows).

    """

    labels: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    fallback: np.ndarray

    @classmethod
    def fit(
        cls,
        features: np.ndarray,
        sections: np.ndarray,
        *,
        fallback_mean: np.ndarray | None = None,
        fallback_std: np.ndarray | None = None,
        min_rows: int = MIN_SECTION_ROWS,
    ) -> SectionStandardiser:
        """Compute each section's statistics over its rows (NaN rows ignored).

        Parameters
        ----------
        features
            ``(M, D)`` raw image features (NaN rows: sub-spots without image).
        sections
            ``(M,)`` section label of each row (e.g. ``data.sections[layout.spot_index]``).
        fallback_mean, fallback_std
            ``(D,)`` statistics for sections with fewer than ``min_rows`` finite rows (e.g. the training
            data's, ``Normaliser.image_mean`` / ``image_std``). Default: those of all rows together.
        min_rows
            Least finite rows for a section to use its own statistics.

        Returns
        -------
        The fitted standardiser.

        """
        f = np.asarray(features)
        sec = np.asarray(sections)
        if f.ndim != 2 or sec.shape != (f.shape[0],):
            raise SoscopeInputError(
                f"features must be (M, D) and sections (M,); got {f.shape} and {sec.shape}."
            )
        labels, codes = np.unique(sec, return_inverse=True)
        s, d = len(labels), f.shape[1]
        total = np.zeros((s, d))
        sq = np.zeros((s, d))
        count = np.zeros((s, d))
        for a in range(0, len(f), _BLOCK):  # float64 sums a block of rows at a time (no float64 copy)
            blk = f[a : a + _BLOCK].astype(np.float64)
            ok = np.isfinite(blk)
            blk = np.where(ok, blk, 0.0)
            c = codes[a : a + _BLOCK]
            for k in np.unique(c):  # sections are few: one masked sum each
                rows = c == k
                total[k] += blk[rows].sum(0)
                sq[k] += (blk[rows] ** 2).sum(0)
                count[k] += ok[rows].sum(0)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = total / count
            std = np.sqrt(np.maximum(sq / count - mean * mean, 0.0))
        if fallback_mean is None or fallback_std is None:
            n = count.sum(0)
            with np.errstate(invalid="ignore", divide="ignore"):
                all_mean = total.sum(0) / n
                all_std = np.sqrt(np.maximum(sq.sum(0) / n - all_mean**2, 0.0))
            fallback_mean = all_mean if fallback_mean is None else fallback_mean
            fallback_std = all_std if fallback_std is None else fallback_std
        rows = np.isfinite(f).all(axis=1)
        n_rows = np.bincount(codes[rows], minlength=s)
        small = n_rows < int(min_rows)
        mean[small] = np.asarray(fallback_mean, dtype=np.float64)
        std[small] = np.asarray(fallback_std, dtype=np.float64)
        return cls(
            labels=labels,
            mean=np.nan_to_num(mean).astype(np.float32),
            std=np.maximum(np.nan_to_num(std, nan=1.0), 1e-6).astype(np.float32),
            fallback=small,
        )

    def standardise(self, features: np.ndarray, sections: np.ndarray) -> np.ndarray:
        """Standardise rows with their section's statistics: missing values at 0, clipped to ±8, float32.

        Parameters
        ----------
        features
            ``(m, D)`` raw features of any rows.
        sections
            ``(m,)`` their section labels (each one of :attr:`labels`).

        Returns
        -------
        ``(m, D)`` float32.

        """
        sec = np.asarray(sections)
        idx = np.searchsorted(self.labels, sec)
        idx = np.clip(idx, 0, len(self.labels) - 1)
        unknown = self.labels[idx] != sec
        if unknown.any():
            raise SoscopeInputError(
                f"section {sec[unknown][0]!r} was not seen when the standardiser was fitted (sections: "
                f"{self.labels.tolist()}); fit it on every section's rows."
            )
        z = (np.asarray(features, dtype=np.float32) - self.mean[idx]) / self.std[idx]
        return np.nan_to_num(z, nan=0.0).clip(-CLIP, CLIP).astype(np.float32)


def standardise_per_section(
    features: np.ndarray,
    sections: np.ndarray,
    *,
    fallback_mean: np.ndarray | None = None,
    fallback_std: np.ndarray | None = None,
    min_rows: int = MIN_SECTION_ROWS,
) -> np.ndarray:
    """Standardise image features with each section's own statistics (fit and apply in one call).

    See :class:`SectionStandardiser` for the arguments; use the class to standardise chunks of rows with
    statistics fitted once on whole sections.

    Returns
    -------
    ``(M, D)`` float32: ``(x - mean_s) / std_s`` per section ``s``, NaN at 0, clipped to ±8.

    """
    st = SectionStandardiser.fit(
        features, sections, fallback_mean=fallback_mean, fallback_std=fallback_std, min_rows=min_rows
    )
    return st.standardise(features, sections)
