"""Image features per sub-spot (H&E / IF / DAPI), computed tile by tile with Dask.

Public functions
----------------
* :func:`subspot_image_features` — features of every sub-spot of a layout from an image element.
* :func:`spots_to_image_pixels` — affine from the spots' intrinsic coordinates to image pixels.
* :func:`precomputed_features` — features stored in a table's ``obsm``, aligned to sub-spots.
* :func:`morphology_feature_names` — names of the default morphology features.
* :func:`segment_nuclei` — nucleus detection (fluorescence or H&E), tile by tile; a table per nucleus.
* :func:`nuclei_per_polygon` — nucleus count, density and nuclear statistics per polygon.
* :func:`subspot_nuclei_features` — nuclei per sub-spot from a segmentation (labels, outlines or detection).
* :func:`read_nuclei` — the nuclei of a segmentation as one table (centroids in the coordinate system).
"""

from soscope.features._extract import (
    SubspotFeatures,
    choose_level,
    precomputed_features,
    subspot_image_features,
)
from soscope.features._morphology import MorphologySpec, morphology_feature_names
from soscope.features._nuclei import (
    NUCLEI_COLUMNS,
    NucleusDetector,
    match_points,
    nuclear_channel,
    nuclei_per_polygon,
    segment_nuclei,
)
from soscope.features._segmentation import (
    NUCLEI_FEATURES,
    SubspotNuclei,
    read_nuclei,
    subspot_nuclei_features,
)
from soscope.features._transform import ImageLevel, image_levels, spots_to_image_pixels

__all__ = [
    "NUCLEI_COLUMNS",
    "NUCLEI_FEATURES",
    "ImageLevel",
    "MorphologySpec",
    "NucleusDetector",
    "SubspotFeatures",
    "SubspotNuclei",
    "choose_level",
    "image_levels",
    "match_points",
    "morphology_feature_names",
    "nuclear_channel",
    "nuclei_per_polygon",
    "precomputed_features",
    "read_nuclei",
    "segment_nuclei",
    "spots_to_image_pixels",
    "subspot_image_features",
    "subspot_nuclei_features",
]
