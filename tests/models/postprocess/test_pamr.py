"""PAMR against golden outputs of NACLIP's official module (tests/fixtures/pamr_tiny.pt, README
there) and a reference written from docs/specs/pamr.md."""
from pathlib import Path

import pytest
import torch
from mmseg.registry import MODELS

from references import reference_pamr

FIXTURE = Path(__file__).resolve().parents[2] / 'fixtures' / 'pamr_tiny.pt'


@pytest.fixture(scope='module')
def fx():
    data = torch.load(FIXTURE, weights_only=False)
    mean = torch.tensor(data['norm_mean'], dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(data['norm_std'], dtype=torch.float64).view(1, 3, 1, 1)
    data['image'] = (data['image_uint8'].double() - mean) / std
    return data


def build(steps=10, dilations=(8, 16)):
    return MODELS.build(dict(type='PAMR', steps=steps, dilations=dilations))


def test_reproduces_the_official_module_in_float64(fx):
    pamr = build(fx['steps'], fx['dilations'])
    refined = pamr(fx['image'], fx['masks'].double())
    assert refined.dtype == torch.float64
    assert (refined - fx['refined']).abs().max() < 1e-12
    # low-resolution masks: upsampled inside (bilinear, align_corners=True) first
    refined = pamr(fx['image'][:1], fx['lowres_masks'].double())
    assert (refined - fx['refined_lowres']).abs().max() < 1e-12


def test_float32_runs_in_float32_within_the_official_float32_noise(fx):
    """The official module runs in float32; against its float64 output that moves the refined
    masks by 4.5e-7 (the fixture's `noise`), and so does ours."""
    refined = build(fx['steps'], fx['dilations'])(fx['image'].float(), fx['masks'])
    assert refined.dtype == torch.float32
    error = (refined.double() - fx['refined']).abs().max().item()
    assert 1e-8 < error < 1e-6


def test_equals_the_spec_reference_on_other_settings():
    """Non-square image, more channels, dilations (1, 2, 5) larger than some distances to the
    border, masks at another size."""
    torch.manual_seed(0)
    image = torch.randn(2, 3, 23, 37, dtype=torch.float64)
    masks = torch.randn(2, 5, 7, 11, dtype=torch.float64)
    refined = build(3, (1, 2, 5))(image, masks)
    assert refined.shape == (2, 5, 23, 37)
    assert (refined - reference_pamr(image, masks, 3, (1, 2, 5))).abs().max() < 1e-12
    # each image uses its own affinities only
    alone = build(3, (1, 2, 5))(image[1:], masks[1:])
    assert torch.equal(alone, refined[1:])


def test_each_step_is_a_convex_combination_of_neighbours():
    """A constant mask stays constant; zero steps change nothing (at the image size)."""
    image = torch.randn(1, 3, 16, 16, dtype=torch.float64)
    constant = torch.full((1, 2, 16, 16), 0.25, dtype=torch.float64)
    assert torch.allclose(build(4, (1, 3))(image, constant), constant, atol=1e-15)
    masks = torch.randn(1, 2, 16, 16, dtype=torch.float64)
    assert torch.equal(build(0, (1,))(image, masks), masks)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match='dilations >= 1'):
        build(10, (0, 8))
    with pytest.raises(ValueError, match='steps >= 0'):
        build(-1)
