from .mmcv_ops import ensure_mmcv_ops

__all__ = ['ensure_mmcv_ops']
