import importlib
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fsa_seg.compat import ensure_mmcv_ops
from fsa_seg.compat.mmcv_ops import point_sample

needs_fallback = pytest.mark.skipif(
    importlib.util.find_spec('mmcv._ext') is not None, reason='compiled mmcv is installed')


@pytest.mark.parametrize('align_corners', [False, True])
def test_point_sample_matches_grid_sample_on_normalised_points(align_corners):
    torch.manual_seed(0)
    feats = torch.randn(2, 3, 7, 9)
    points = torch.rand(2, 5, 2)
    expected = F.grid_sample(feats, (points * 2 - 1).unsqueeze(2),
                             align_corners=align_corners).squeeze(3)
    assert torch.allclose(point_sample(feats, points, align_corners=align_corners), expected)
    grid = torch.rand(2, 4, 6, 2)
    expected = F.grid_sample(feats, grid * 2 - 1, align_corners=align_corners)
    out = point_sample(feats, grid, align_corners=align_corners)
    assert out.shape == (2, 3, 4, 6) and torch.allclose(out, expected)


def test_point_sample_corners_hit_pixel_centres_with_align_corners():
    feats = torch.arange(12.).view(1, 1, 3, 4)
    points = torch.tensor([[[0., 0.], [1., 1.], [1., 0.]]])  # (x, y) in [0, 1]
    out = point_sample(feats, points, align_corners=True)
    assert out.flatten().tolist() == [0., 11., 3.]


@needs_fallback
def test_fallback_lets_mmseg_import_and_keeps_guarded_imports_working():
    import mmcv.ops
    import mmseg.models  # noqa: F401
    from mmseg.models.decode_heads import cc_head, psa_head

    assert getattr(mmcv.ops, 'IS_FSA_SEG_FALLBACK', False)
    assert mmcv.ops.point_sample is point_sample
    assert cc_head.CrissCrossAttention is None and psa_head.PSAMask is None
    with pytest.raises(ModuleNotFoundError):
        from mmcv.ops import DeformConv2d  # noqa: F401


@needs_fallback
def test_unavailable_op_raises_when_called_with_a_clear_message():
    from mmcv.ops import sigmoid_focal_loss
    with pytest.raises(RuntimeError, match='compiled mmcv'):
        sigmoid_focal_loss(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long))


def test_an_importable_mmcv_ops_is_left_unchanged(monkeypatch):
    compiled = types.ModuleType('mmcv.ops')
    monkeypatch.setitem(sys.modules, 'mmcv.ops', compiled)
    assert ensure_mmcv_ops() is False
    assert sys.modules['mmcv.ops'] is compiled


def test_the_start_up_finder_answers_for_mmcv_ops_alone(monkeypatch):
    import _fsa_seg_mmcv_lite as hook
    assert hook.MMCVOpsFinder in sys.meta_path  # installed at start-up or by import fsa_seg
    assert hook.MMCVOpsFinder.find_spec('mmcv.cnn') is None
    assert hook.MMCVOpsFinder.find_spec('torch') is None
    monkeypatch.setattr(hook, 'compiled_ops_available', lambda: True)
    assert hook.MMCVOpsFinder.find_spec('mmcv.ops') is None  # the compiled mmcv is left alone
    monkeypatch.setattr(hook, 'compiled_ops_available', lambda: False)
    spec = hook.MMCVOpsFinder.find_spec('mmcv.ops')
    module = importlib.util.module_from_spec(spec)
    assert module.IS_FSA_SEG_FALLBACK and module.point_sample is point_sample


def test_our_runs_print_no_mmcv_lite_warning():
    """mmcv warns "install mmcv rather than mmcv-lite" when mmseg imports its transformer
    bricks; fsa_seg silences that one warning where it imports mmseg, and only there."""
    repo = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=str(repo))
    ours = subprocess.run([sys.executable, '-W', 'always', '-c', 'import fsa_seg.apis'],
                          capture_output=True, text=True, env=env, cwd=repo)
    assert ours.returncode == 0 and 'mmcv-lite' not in ours.stderr, ours.stderr
    theirs = subprocess.run(
        [sys.executable, '-W', 'always', '-c',
         'import _fsa_seg_mmcv_lite; _fsa_seg_mmcv_lite.install(); import mmseg.models'],
        capture_output=True, text=True, env=env, cwd=repo)
    lite = importlib.util.find_spec('mmcv._ext') is None
    assert theirs.returncode == 0 and ('mmcv-lite' in theirs.stderr) == lite  # not filtered
