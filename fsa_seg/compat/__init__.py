from .mmcv_ops import ensure_mmcv_ops
from .mmengine_packages import use_importlib_metadata_for_mmengine

__all__ = ['ensure_mmcv_ops', 'use_importlib_metadata_for_mmengine']
