"""``mmcv.ops`` with mmcv-lite: the start-up hook of ``_fsa_seg_mmcv_lite`` (see there).

fsa-seg's ``fsa_seg_mmcv_lite.pth`` installs the hook when Python starts, so mmseg imports in any
order; :func:`ensure_mmcv_ops` installs it too, for a checkout used without installing.
"""
import importlib
import sys

from _fsa_seg_mmcv_lite import install, point_sample

__all__ = ['ensure_mmcv_ops', 'point_sample']


def ensure_mmcv_ops() -> bool:
    """Make ``import mmcv.ops`` succeed. Returns True if the pure-PyTorch stand-in is in use."""
    install()
    if 'mmcv.ops' not in sys.modules:
        # A failed import of the compiled package (before the hook) may have left submodules.
        for name in [n for n in sys.modules if n.startswith('mmcv.ops.')]:
            del sys.modules[name]
    module = importlib.import_module('mmcv.ops')
    return bool(getattr(module, 'IS_FSA_SEG_FALLBACK', False))
