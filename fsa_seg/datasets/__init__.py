"""Evaluation datasets.

Importing this package registers the two benchmarks mmseg lacks into mmseg's own ``DATASETS``
registry: :class:`PascalVOC20Dataset` (VOC20) and :class:`COCOObjectDataset` (COCO-Object). The
other six benchmarks use mmseg's classes unchanged (``PascalVOCDataset``, ``PascalContextDataset``,
``PascalContextDataset59``, ``COCOStuffDataset``, ``CityscapesDataset``, ``ADE20KDataset``).
"""
from .checks import (
    DatasetError,
    ExplainedPipeline,
    SplitCount,
    build_lazily,
    check_files,
    check_layout,
    check_split_lines,
    selected_positions,
)
from .coco_object import COCOObjectDataset
from .converters import convert_coco_object
from .split_size import check_split_size
from .voc import PascalVOC20Dataset

__all__ = [
    'COCOObjectDataset', 'PascalVOC20Dataset', 'check_split_size', 'convert_coco_object',
    'DatasetError', 'ExplainedPipeline', 'SplitCount', 'build_lazily', 'check_files',
    'check_layout', 'check_split_lines', 'selected_positions'
]
