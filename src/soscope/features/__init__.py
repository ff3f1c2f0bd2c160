"""Image features per sub-spot (H&E / IF / DAPI), computed tile by tile with Dask.

Public functions
----------------
* :func:`subspot_image_features` — features of every sub-spot of a layout from an image element.
* :func:`spots_to_image_pixels` — affine from the spots' intrinsic coordinates to image pixels.
* :func:`precomputed_features` — features stored in a table's ``obsm``, aligned to sub-spots.
* :func:`morphology_feature_names` — names of the default morphology features.
* :class:`FoundationModel` — a pretrained image network (torch / timm) as the extractor: patches of a
  fixed size in µm, embedded, reduced by a PCA fitted on the training sub-spots.
* :class:`StainNormaliser`, :func:`normalise_stain`, :class:`PercentileScaling` — H&E stain (Macenko,
  Reinhard) and fluorescence intensity normalisation, fitted per image.
* :func:`image_microns_per_pixel` — the µm per pixel of an image, from its coordinate system.
* :class:`SectionStandardiser`, :func:`standardise_per_section` — image features standardised with each
  section's own statistics.
* :class:`LabelClassifier`, :func:`label_coverage` — human labels (annotated regions) as sub-spot features.
* :func:`segment_nuclei` — nucleus detection (fluorescence or H&E), tile by tile; a table per nucleus.
* :func:`nuclei_per_polygon` — nucleus count, density and nuclear statistics per polygon.
* :func:`subspot_nuclei_features` — nuclei per sub-spot from a segmentation (labels, outlines or detection).
* :func:`read_nuclei` — the nuclei of a segmentation as one table (centroids in the coordinate system).
* :func:`detection_microns_per_pixel` — the µm per pixel nuclei are detected at on an image.
* :func:`drop_unresolved_detections` — no detection on images too coarse to show nuclei.
"""

from soscope.features._extract import (
    MORPHOLOGY_NORMALISATIONS,
    SubspotFeatures,
    choose_level,
    precomputed_features,
    subspot_image_features,
)
from soscope.features._foundation import IMAGENET_MEAN, IMAGENET_STD, FoundationModel
from soscope.features._labels import LabelClassifier, label_coverage, resolve_label_element
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
    detection_microns_per_pixel,
    drop_unresolved_detections,
    read_nuclei,
    subspot_nuclei_features,
)
from soscope.features._stain import (
    MACENKO_REFERENCE,
    REINHARD_REFERENCE,
    PercentileScaling,
    StainNormaliser,
    macenko_stains,
    normalise_stain,
    reinhard_statistics,
)
from soscope.features._standardise import SectionStandardiser, standardise_per_section
from soscope.features._transform import (
    ImageLevel,
    image_levels,
    image_microns_per_pixel,
    spots_to_image_pixels,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MACENKO_REFERENCE",
    "MORPHOLOGY_NORMALISATIONS",
    "NUCLEI_COLUMNS",
    "REINHARD_REFERENCE",
    "FoundationModel",
    "NUCLEI_FEATURES",
    "ImageLevel",
    "LabelClassifier",
    "MorphologySpec",
    "NucleusDetector",
    "PercentileScaling",
    "SectionStandardiser",
    "StainNormaliser",
    "SubspotFeatures",
    "SubspotNuclei",
    "choose_level",
    "detection_microns_per_pixel",
    "drop_unresolved_detections",
    "image_levels",
    "image_microns_per_pixel",
    "label_coverage",
    "macenko_stains",
    "match_points",
    "morphology_feature_names",
    "normalise_stain",
    "nuclear_channel",
    "nuclei_per_polygon",
    "precomputed_features",
    "reinhard_statistics",
    "resolve_label_element",
    "read_nuclei",
    "segment_nuclei",
    "spots_to_image_pixels",
    "standardise_per_section",
    "subspot_image_features",
    "subspot_nuclei_features",
]
