"""``mmcv.ops`` for an mmcv-lite install, in any import order (installed with fsa-seg).

mmseg 1.2.x needs mmcv < 2.2, and the compiled mmcv 2.1 does not build against recent torch.
With ``mmcv-lite`` the package ``mmcv.ops`` exists but fails on its compiled extension
(``No module named 'mmcv._ext'``), which breaks ``import mmseg.models`` (and ``mmseg.apis``,
``mmseg.datasets``) whoever imports it first: a user script, another package, mmseg's own tools.

:func:`install` puts a finder on ``sys.meta_path`` that answers one question only: when
``mmcv.ops`` is imported and the compiled extension is missing, it supplies a small pure-PyTorch
stand-in instead (``point_sample`` works, every other op says it needs the compiled mmcv). With
the compiled mmcv installed it does nothing. fsa-seg installs ``fsa_seg_mmcv_lite.pth``, which
calls :func:`install` at interpreter start-up; ``import fsa_seg`` calls it too. Start-up cost:
one class definition, no import of torch or mmcv.

This module is top-level (not inside ``fsa_seg``) because the stand-in may be needed while mmseg
is half-imported, when ``fsa_seg`` itself, which imports mmseg, cannot be imported yet.
"""
import importlib.util
import sys
import types

NEEDS_COMPILED = ('mmcv.ops.{name} needs the compiled mmcv (mmcv-full); this environment has '
                  'mmcv-lite, where only the pure-PyTorch fallbacks of fsa-seg exist.')


def point_sample(input, points, align_corners: bool = False, **kwargs):
    """Same semantics as ``mmcv.ops.point_sample``: points in [0, 1] x [0, 1], (N, P, 2) or
    (N, Hg, Wg, 2), features returned as (N, C, P) or (N, C, Hg, Wg)."""
    from torch.nn import functional as F
    add_dim = points.dim() == 3
    if add_dim:
        points = points.unsqueeze(2)
    output = F.grid_sample(input, 2.0 * points - 1.0, align_corners=align_corners, **kwargs)
    return output.squeeze(3) if add_dim else output


def _needs_compiled(name: str):
    def unavailable(*args, **kwargs):
        raise RuntimeError(NEEDS_COMPILED.format(name=name))

    unavailable.__name__ = name
    return unavailable


class FallbackOps(types.ModuleType):
    """``mmcv.ops`` replacement: the names mmseg imports unguarded exist (``point_sample`` works,
    the others raise when called); any other name raises ``ModuleNotFoundError`` on import, so
    mmseg's ``try: from mmcv.ops import X except ModuleNotFoundError`` keeps working."""

    def __getattr__(self, name: str):
        if name.startswith('__'):
            raise AttributeError(name)
        raise ModuleNotFoundError(NEEDS_COMPILED.format(name=name), name='mmcv._ext')


def fallback_module() -> types.ModuleType:
    module = FallbackOps('mmcv.ops', __doc__)
    module.point_sample = point_sample
    module.sigmoid_focal_loss = _needs_compiled('sigmoid_focal_loss')
    module.IS_FSA_SEG_FALLBACK = True
    return module


def compiled_ops_available() -> bool:
    """Whether mmcv's compiled extension exists (import ``mmcv`` first)."""
    return importlib.util.find_spec('mmcv._ext') is not None


class MMCVOpsFinder:
    """Meta-path finder for ``mmcv.ops`` alone: the stand-in where the extension is missing,
    nothing (the normal import) otherwise."""

    @classmethod
    def find_spec(cls, fullname, path=None, target=None):
        if fullname != 'mmcv.ops' or compiled_ops_available():
            return None
        return importlib.util.spec_from_loader(fullname, cls)

    @staticmethod
    def create_module(spec):
        return fallback_module()

    @staticmethod
    def exec_module(module):
        pass


def install() -> None:
    """Put :class:`MMCVOpsFinder` first on ``sys.meta_path`` (once)."""
    if MMCVOpsFinder not in sys.meta_path:
        sys.meta_path.insert(0, MMCVOpsFinder)
