"""``soscope.enhance``: the one-call path from a SpatialData to sub-spot shapes and enhanced tables."""

from __future__ import annotations

from numbers import Integral
from pathlib import Path
from typing import Any

from ._errors import SoscopeInputError

#: arguments of :func:`enhance` that only shape training, with their defaults: given with a trained
#: ``model=`` they would have no effect, so they are refused rather than silently dropped
_TRAINING_ONLY = {
    "subspots": "auto", "likelihood": "auto", "epochs": None, "batch_size": None, "seed": 0,
    "reference": None, "cell_type_key": "cell_type", "labels": None,
}  # fmt: skip


def enhance(
    sdata,
    *,
    table: str | None = None,
    spots: str | list[str] | None = None,
    image: str | None | bool = None,
    layer: str | None = None,
    subspots: str = "auto",
    likelihood: str | dict = "auto",
    sections: list[str] | None = None,
    section_key: str | None = None,
    batch_key: str | None = None,
    segmentation: str | None = "auto",
    model: Any = None,
    key_added: str = "soscope",
    coordinate_system: str | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    device: str = "auto",
    seed: int = 0,
    progress: bool = True,
    inplace: bool = True,
    overwrite: bool = False,
    n_samples: int = 0,
    features: str | list[str] | None = "all",
    dtype: str = "float32",
    reference: Any = None,
    cell_type_key: str = "cell_type",
    labels: str | None = None,
    client=None,
    **model_kwargs,
):
    """Enhance every spot into sub-spots and write the results into ``sdata``.

    Adds shapes ``f"{spots}_{key_added}"`` (one polygon per sub-spot, columns ``spot_id`` and
    ``subspot``, the spots' transformations) and a table ``f"{table}_{key_added}"`` annotating them
    (one per modality, suffixed with the modality, for multi-omics tables), with ``X`` the expected
    counts in each sub-spot polygon and ``uns["soscope"]`` every parameter, the version and the training
    history. When ``sdata`` is backed by a zarr store the results are written to it atomically.

    Parameters
    ----------
    sdata
        The SpatialData.
    table, spots, image, layer, coordinate_system
        Elements to use; optional when unambiguous (the error lists the candidates otherwise).
        ``image=False`` ignores images.
    subspots
        ``"auto"`` (the detected platform's default, see :doc:`/platforms`: hex7 for Visium, the cells
        beside Xenium-like spots, ``grid:2`` for Visium HD, else from the geometry), ``"hex7"``,
        ``"grid:K"``, ``"rings:N"``, or the name of a shapes element of cells.
    likelihood
        ``"auto"``, ``"nb"``, ``"zinb"``, ``"poisson"``, ``"bernoulli"``, ``"gaussian"``, or a dict
        modality → name.
    sections, section_key, batch_key
        Sections to use (regions, or values of ``obs[section_key]``); per-spot batch labels.
    segmentation
        Where nuclei are counted per sub-spot, as image evidence (count, density, nuclear area, eccentricity,
        intensity): ``"auto"`` (a labels element or nucleus/cell outlines such as Xenium's
        ``nucleus_boundaries`` in the spots' coordinate system when one is unambiguous, nuclei before cells;
        else nuclei detected on the image by :func:`soscope.features.segment_nuclei`; else none),
        ``"segment_nuclei"``, the name of a labels or shapes element, or ``None`` (no nuclei). With a trained
        ``model=``, ``"auto"`` means the model's own setting. Recorded in ``uns["soscope"]["segmentation"]``.
    model
        None (train on this data), a trained :class:`~soscope.SoScope`, or a path saved by
        :meth:`~soscope.SoScope.save`. A trained model brings its own sub-spot scheme, likelihoods and
        settings: ``subspots``, ``likelihood``, ``epochs``, ``batch_size``, ``seed`` and ``**model_kwargs``
        are refused with it (the error names them).
    key_added
        Suffix of the written elements.
    epochs
        Training epochs (default: automatic from the number of spots).
    batch_size
        Spots per training step (default ``soscope.settings.train_chunk_spots``, 256): each optimizer step
        sees a chunk of this many neighbouring spots plus their halo, so an epoch takes about
        ``spots / batch_size`` steps. See :meth:`~soscope.SoScope.train`.
    device
        ``"auto"``, ``"cpu"`` or ``"cuda"``.
    seed
        Random seed (results are deterministic on CPU).
    progress
        Show progress bars.
    inplace
        Write into ``sdata``; otherwise return a new in-memory SpatialData with the results.
    overwrite
        Replace existing elements with the output names that soscope did not write.
    n_samples
        When > 0, add ``layers["std"]``, ``layers["q10"]`` and ``layers["q90"]``: the posterior
        predictive spread and 10 % / 90 % quantiles of each sub-spot's counts, from this many draws.
    features
        The features to enhance: ``"all"`` (default), a list of feature names, or the name of a boolean
        ``var`` column such as ``"highly_variable"``. The model trains on every feature of the table
        either way (its image programs are shared by them); only the requested ones are computed and written.
    dtype
        ``"float32"`` (default) or ``"float16"``: the enhanced values written, half the size on disk and
        in memory with about three significant digits (values up to 65,504). See :doc:`/scale`.
    reference, cell_type_key
        A paired single-cell reference (AnnData of single cells or per-type profiles, the name of a table
        of ``sdata``, or an ``.h5ad`` path) and its ``obs`` column of cell types; see
        :class:`~soscope.SoScope`. Adds ``obsm["cell_type_abundance"]`` to the enhanced table and writes a
        spot table ``f"{table}_{key_added}_spots"`` with each spot's abundances (type names in
        ``uns["soscope"]["reference"]["cell_types"]``). A trained ``model=`` brings its own reference.
    labels
        Human labels (a few annotated regions): a shapes element of polygons with a categorical column, or
        a labels raster with a category table (``"element:column"`` to name the column); see
        :class:`~soscope.SoScope`. A trained ``model=`` brings its own label classifier.
    client
        A ``dask.distributed`` client to run inference on (default: the active one, if any, else local
        threads; see :doc:`/scale`).
    **model_kwargs
        Passed to :class:`~soscope.SoScope` (e.g. ``use_image``, ``n_latent``, ``image_features``).

    Returns
    -------
    The SpatialData with the results (``sdata`` itself when ``inplace``).

    """
    from .model import SoScope, plan_output

    if model is not None:
        given = dict(
            subspots=subspots, likelihood=likelihood, epochs=epochs, batch_size=batch_size, seed=seed,
            reference=reference, cell_type_key=cell_type_key, labels=labels,
        )  # fmt: skip
        # `is not` / `!=` on plain values; an AnnData reference is "given" whenever it is not None
        ignored = [
            k
            for k, v in given.items()
            if (v is not None if k in ("reference", "labels") else v != _TRAINING_ONLY[k])
        ] + list(model_kwargs)
        if ignored:
            raise SoscopeInputError(
                f"{', '.join(f'`{k}=`' for k in ignored)} only apply when training, but model= is a trained "
                "model that brings its own settings: leave them out, or pass model=None to train a new model "
                "with them"
            )
    elif batch_size is not None and (
        isinstance(batch_size, bool) or not isinstance(batch_size, Integral) or batch_size < 1
    ):
        # checked here too, as SoScope.train does, so that a typo fails before the set-up rather than after
        raise SoscopeInputError(
            f"batch_size must be a positive whole number of spots per training step, got {batch_size!r}"
        )
    selection = dict(
        table=table,
        spots=spots,
        image=image,
        layer=layer,
        sections=sections,
        section_key=section_key,
        coordinate_system=coordinate_system,
    )
    if model is None:
        m = SoScope(
            sdata, subspots=subspots, likelihood=likelihood, batch_key=batch_key, seed=seed, device=device,
            progress=progress, reference=reference, cell_type_key=cell_type_key, labels=labels,
            segmentation=segmentation, **selection, **model_kwargs,
        )  # fmt: skip
        _check_output_names_early(sdata, m.prepared, key_added, overwrite, m.normaliser.reference is not None)
        # bad features= / dtype=, or outputs that cannot fit in memory, fail before training
        plan_output(
            sdata, m.prepared, features=features, dtype=dtype, n_samples=n_samples, inplace=inplace, log=False
        )
        m.train(epochs=epochs, **({} if batch_size is None else {"batch_size": int(batch_size)}))
        return m.enhance(
            key_added=key_added, n_samples=n_samples, overwrite=overwrite, inplace=inplace, client=client,
            features=features, dtype=dtype,
        )  # fmt: skip
    if isinstance(model, (str, Path)):
        model = SoScope.load(model, device=device, progress=progress)
    if not isinstance(model, SoScope):
        raise SoscopeInputError(
            f"model must be None, a SoScope or a path saved by SoScope.save, not {type(model).__name__}"
        )
    return model.enhance(
        sdata,
        key_added=key_added,
        n_samples=n_samples,
        overwrite=overwrite,
        inplace=inplace,
        client=client,
        features=features,
        dtype=dtype,
        # the element choices for this data; batch_key names new batches, calibrated on this data
        **{k: v for k, v in {**selection, "batch_key": batch_key}.items() if v is not None},
        # "auto" (the default) leaves the model's own setting; anything else is this data's segmentation
        **(
            {} if isinstance(segmentation, str) and segmentation == "auto" else {"segmentation": segmentation}
        ),
    )


def _check_output_names_early(
    sdata, prepared, key_added: str, overwrite: bool, with_spot_table: bool = False
) -> None:
    """Refuse colliding output names before training rather than after (the write checks them again)."""
    from .io import check_writable
    from .model import output_names, spot_table_name

    shapes, tables = output_names(prepared, key_added)
    spot_tables = [spot_table_name(prepared, key_added)] if with_spot_table else []
    check_writable(
        sdata,
        {
            **dict.fromkeys(shapes.values(), "shapes"),
            **dict.fromkeys([*tables.values(), *spot_tables], "tables"),
        },
        overwrite,
    )
