"""Reading soscope's inputs from a SpatialData and writing its results back (atomically on zarr stores)."""

from soscope.io._blocks import BlockWriter, stream_block_rows
from soscope.io._combine import combine
from soscope.io._join import TableAnnotation, match_instances, table_annotation
from soscope.io._platforms import PLATFORM_DEFAULTS, Platform, PlatformDefaults, detect_platform
from soscope.io._readers import read_dbit, read_soscope_layout
from soscope.io._segmentation import SEGMENT_NUCLEI, SegmentationChoice, find_segmentation
from soscope.io._select import (
    MODALITY_COLUMNS,
    SINGLE_MODALITY,
    Selection,
    SelectionRequest,
    counts_matrix,
    select,
)
from soscope.io._validate import (
    SOSCOPE_KEY,
    check_counts,
    check_element_name,
    check_image,
    check_image_coordinate_system,
    check_min_spots,
    check_output_names,
    check_spots_on_image,
    check_values,
    choose_coordinate_system,
    is_integer_valued,
    is_soscope_output,
    layer_names,
    zero_spots_mask,
    zero_variance_mask,
)
from soscope.io._write import (
    check_writable,
    create_dense_array,
    local_store_path,
    recover_store,
    write_results,
    write_shapes_parquet,
)

__all__ = [
    "BlockWriter",
    "MODALITY_COLUMNS",
    "PLATFORM_DEFAULTS",
    "Platform",
    "PlatformDefaults",
    "SINGLE_MODALITY",
    "SEGMENT_NUCLEI",
    "SOSCOPE_KEY",
    "Selection",
    "SegmentationChoice",
    "SelectionRequest",
    "TableAnnotation",
    "check_counts",
    "check_element_name",
    "check_image",
    "check_image_coordinate_system",
    "check_min_spots",
    "check_output_names",
    "check_spots_on_image",
    "check_values",
    "check_writable",
    "choose_coordinate_system",
    "combine",
    "counts_matrix",
    "create_dense_array",
    "detect_platform",
    "find_segmentation",
    "is_integer_valued",
    "is_soscope_output",
    "layer_names",
    "local_store_path",
    "match_instances",
    "read_dbit",
    "read_soscope_layout",
    "recover_store",
    "select",
    "stream_block_rows",
    "table_annotation",
    "write_results",
    "write_shapes_parquet",
    "zero_spots_mask",
    "zero_variance_mask",
]
