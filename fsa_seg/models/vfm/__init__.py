from .timm_vfm import VFM_PRESETS, TimmVFM, VFMPreset, load_local_weights

__all__ = ['TimmVFM', 'VFMPreset', 'VFM_PRESETS', 'load_local_weights']
