"""fsa-seg: training-free open-vocabulary semantic segmentation with CLIP and the FSA plug-in.

Importing this package registers every segmentor, plug-in, dataset and transform into mmseg's
own registries, so configs with ``default_scope='mmseg'`` and
``custom_imports=dict(imports=['fsa_seg'])`` work in any mmseg pipeline.
"""
from .compat import ensure_mmcv_ops

ensure_mmcv_ops()

from . import datasets, engine, evaluation, models  # noqa: E402,F401  (register into the registries)
from .version import __version__  # noqa: E402,F401
