"""Image features standardised per section, so a model trained on one section applies to another.

Two sections stained, scanned or imaged on different days differ in brightness, contrast and colour far
more than their tissue does. Standardising each section's image features with the section's *own* mean and
standard deviation (rather than the training section's) removes those per-section shifts and scales before
the model sees them; the model's image weights, fitted on standardised features, then carry over.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from soscope._errors import SoscopeInputError

__all__ = ["MIN_SECTION_ROWS", "SectionStandardiser", "standardise_per_section"]

#: sections with fewer finite rows than this use the fallback statistics (their own would be noise)
MIN_SECTION_ROWS = 50
#: standardised values are clipped to ±this (as the model's own standardisation)
CLIP = 8.0


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
        """Compute each section's statistics over its rows (NaN values ignored).

        Computed as the model's own (``numpy.nanmean`` / ``nanstd`` over the section's rows), so data of
        one section gets exactly the values of the model's whole-data standardisation.

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
        mean = np.zeros((s, d), dtype=np.float32)
        std = np.ones((s, d), dtype=np.float32)
        finite_rows = np.isfinite(f).all(axis=1)
        small = np.bincount(codes[finite_rows], minlength=s) < int(min_rows)
        with warnings.catch_warnings():  # an all-NaN column (a section without image) is handled below
            warnings.simplefilter("ignore", RuntimeWarning)
            # the model's own statistics (Normaliser.fit), computed alike: one section gives its exact values
            if fallback_mean is None:
                fallback_mean = np.nanmean(f, 0)
            if fallback_std is None:
                fallback_std = np.nanstd(f, 0)
            for k in range(s):
                if small[k]:
                    mean[k], std[k] = fallback_mean, fallback_std
                    continue
                part = f if s == 1 else f[codes == k]
                mean[k], std[k] = np.nanmean(part, 0), np.nanstd(part, 0)
        return cls(
            labels=labels,
            mean=np.nan_to_num(mean),
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
