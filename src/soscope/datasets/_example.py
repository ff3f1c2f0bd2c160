"""The small real sample shipped inside the package: spatial-CITE-seq of human skin (MIT, soScope repo)."""

from __future__ import annotations

from contextlib import ExitStack
from importlib import resources
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from spatialdata import SpatialData

__all__ = ["example", "EXAMPLE_PITCH_UM"]

#: Pixel pitch used for the example (µm). The spatial-CITE-seq paper gives a 20 µm pixel size for the
#: skin sample; the files record only grid indices, so the squares are laid at a 20 µm pitch and tile
#: the grid (the inter-channel spacing of the chip is not recorded in the data; see PROVENANCE.txt).
EXAMPLE_PITCH_UM = 20.0

_FOLDER = "spatial_cite_seq_human_skin"


def example() -> SpatialData:
    """Load the embedded real example: spatial-CITE-seq of human skin, 1,618 DBiT pixels (no download).

    Proteins (283 antibody-derived tags) and RNA (soScope's 10 highly variable genes) measured on the same
    pixels of a 50 x 50 DBiT grid, from the published soScope repository (MIT licence; data of Liu et al.
    2023, Nat Biotechnol). No image (the H&E of the original is not available).

    Returns
    -------
    SpatialData with shapes ``"pixels"`` (1,618 squares of side 20 µm centred at ``(col * 20, row * 20)``
    µm, coordinate system ``"global"``) and table ``"table"`` (1,618 x 293, float32 counts in ``X``;
    ``var["feature_types"]`` is ``"Antibody Capture"`` for the 283 proteins and ``"Gene Expression"`` for
    the 10 genes; obs ``barcode``, ``array_row``, ``array_col``, ``imagerow``, ``imagecol``,
    ``is_center``). ``table.uns["dataset"]`` records the source and licence.

    """
    from soscope.io import read_dbit

    base = resources.files("soscope.datasets").joinpath("data", _FOLDER)
    with ExitStack() as stack:
        path = {
            name: stack.enter_context(resources.as_file(base.joinpath(name)))
            for name in ("protein_counts.csv.gz", "rna_hvg10_counts.csv.gz", "positions.csv.gz")
        }
        sdata = read_dbit(
            {
                "Antibody Capture": path["protein_counts.csv.gz"],
                "Gene Expression": path["rna_hvg10_counts.csv.gz"],
            },
            pitch_um=EXAMPLE_PITCH_UM,
            positions=path["positions.csv.gz"],
        )
    sdata["table"].uns["dataset"] = {
        "name": "spatial-CITE-seq human skin (soScope demo data)",
        "technology": "spatial-CITE-seq (DBiT, 50x50 grid)",
        "source": "github.com/deng-ai-lab/soScope Preprocess/data/SpatialCITE/humanskin "
        "(commit fc841f985f6c759b807adde953be66646a039a9b)",
        "reference": "Liu et al. 2023, Nat Biotechnol, doi:10.1038/s41587-023-01676-0",
        "license": "MIT (Bohan Li @ 2023 BUAA and Deng ai Lab)",
    }
    return sdata
