"""fsa-seg: training-free open-vocabulary semantic segmentation with CLIP and the FSA plug-in.

Importing this package registers every segmentor, plug-in, dataset and transform into mmseg's
own registries, so configs with ``default_scope='mmseg'`` and
``custom_imports=dict(imports=['fsa_seg'])`` work in any mmseg pipeline.
"""
import warnings

from .compat import ensure_mmcv_ops, use_importlib_metadata_for_mmengine

ensure_mmcv_ops()
use_importlib_metadata_for_mmengine()

with warnings.catch_warnings():
    # mmcv-lite lacks MultiScaleDeformableAttention, which no segmentor here uses; mmcv warns
    # "install mmcv rather than mmcv-lite" when mmseg imports it. Silenced for this import only.
    warnings.filterwarnings('ignore', message='Fail to import ``MultiScaleDeformableAttention``',
                            category=UserWarning)
    from . import datasets, engine, evaluation, models  # noqa: F401  (register into the registries)
from .version import __version__  # noqa: E402,F401
