"""Pure-PyTorch stand-ins for the few ``mmcv.ops`` names mmseg imports at module level.

mmseg 1.2.x needs mmcv < 2.2, and the compiled mmcv 2.1 does not build against recent torch.
With ``mmcv-lite`` the package ``mmcv.ops`` exists but fails on its compiled extension, which
breaks ``import mmseg.models``. :func:`ensure_mmcv_ops` installs a small fallback module only in
that case; with the compiled mmcv present it changes nothing.
"""
import importlib
import sys
import types

import torch
import torch.nn.functional as F

_NEEDS_COMPILED = ('mmcv.ops.{name} needs the compiled mmcv (mmcv-full); this environment has '
                   'mmcv-lite, where only the pure-PyTorch fallbacks of fsa_seg.compat exist.')


def point_sample(input: torch.Tensor, points: torch.Tensor, align_corners: bool = False,
                 **kwargs) -> torch.Tensor:
    """Same semantics as ``mmcv.ops.point_sample``: points in [0, 1] x [0, 1], (N, P, 2) or
    (N, Hg, Wg, 2), features returned as (N, C, P) or (N, C, Hg, Wg)."""
    add_dim = points.dim() == 3
    if add_dim:
        points = points.unsqueeze(2)
    output = F.grid_sample(input, 2.0 * points - 1.0, align_corners=align_corners, **kwargs)
    return output.squeeze(3) if add_dim else output


def _needs_compiled(name: str):
    def unavailable(*args, **kwargs):
        raise RuntimeError(_NEEDS_COMPILED.format(name=name))

    unavailable.__name__ = name
    return unavailable


class _FallbackOps(types.ModuleType):
    """``mmcv.ops`` replacement: the names mmseg imports unguarded exist (``point_sample`` works,
    the others raise when called); any other name raises ``ModuleNotFoundError`` on import, so
    mmseg's ``try: from mmcv.ops import X except ModuleNotFoundError`` keeps working."""

    def __getattr__(self, name: str):
        if name.startswith('__'):
            raise AttributeError(name)
        raise ModuleNotFoundError(_NEEDS_COMPILED.format(name=name), name='mmcv._ext')


def _fallback_module() -> types.ModuleType:
    module = _FallbackOps('mmcv.ops', __doc__)
    module.point_sample = point_sample
    module.sigmoid_focal_loss = _needs_compiled('sigmoid_focal_loss')
    module.IS_FSA_SEG_FALLBACK = True
    return module


def ensure_mmcv_ops() -> bool:
    """Make ``import mmcv.ops`` succeed. Returns True if the fallback had to be installed."""
    try:
        importlib.import_module('mmcv.ops')
        return False
    except ModuleNotFoundError as error:
        if not (error.name or '').startswith('mmcv'):
            raise
    # Drop the half-imported compiled package before putting the fallback in its place.
    for name in [n for n in sys.modules if n == 'mmcv.ops' or n.startswith('mmcv.ops.')]:
        del sys.modules[name]
    import mmcv
    module = _fallback_module()
    sys.modules['mmcv.ops'] = module
    mmcv.ops = module
    return True
