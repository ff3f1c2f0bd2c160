"""Keys soscope reads and writes in a SpatialData, and the names of its files: one place for each literal.

Modelled on sopa's ``constants.py``: code refers to ``SoscopeKeys.UNS`` rather than to ``"soscope"`` so a
reader can find every use of a key, and renaming one is a one-line change.
"""

from __future__ import annotations


class SoscopeKeys:
    """Keys in tables (``uns``, ``obs``, ``obsm``) and element attributes."""

    #: ``adata.uns`` / ``gdf.attrs`` key of soscope's record (parameters, version, history) on its outputs;
    #: its presence marks an element as written by soscope
    UNS = "soscope"
    #: ``uns`` flag of the ground-truth sub-spot tables of synthetic and pseudo-spot data
    TRUTH = "soscope_truth"
    #: default suffix of the output elements (``f"{spots}_{key_added}"``, ``f"{table}_{key_added}"``)
    KEY_ADDED = "soscope"
    #: ``uns[UNS]`` entry holding the training history
    HISTORY = "history"
    #: sub-spot ``obs`` / shapes column: instance id of the parent spot
    SPOT_ID = "spot_id"
    #: sub-spot ``obs`` / shapes column: index of the sub-spot within its spot (0..K-1)
    SUBSPOT = "subspot"
    #: ``obs`` column of the section a spot or sub-spot belongs to
    SECTION = "section"
    #: ``obsm`` key of cell-type abundances (spot and sub-spot tables)
    CELL_TYPE_ABUNDANCE = "cell_type_abundance"
    #: ``obsm`` key of each segmented cell's type probabilities (``subspots="cells:..."`` with a reference)
    CELL_TYPE_PROBABILITY = "cell_type_probability"
    #: ``obs`` column of each segmented cell's most likely type
    CELL_TYPE = "cell_type"


class SoscopeLayers:
    """Layers of the enhanced tables (with ``n_samples > 0``)."""

    #: posterior predictive standard deviation of each sub-spot's values
    STD = "std"
    #: posterior predictive 10 % quantile
    Q10 = "q10"
    #: posterior predictive 90 % quantile
    Q90 = "q90"


class SoscopeFiles:
    """Names of files and folders soscope creates."""

    #: prefix of the temporary folder inside a zarr store where a write is staged before its atomic rename
    TMP_PREFIX = ".soscope_tmp_"
    #: the model file inside a folder given to ``SoScope.save``
    MODEL_FILE = "model.pt"
