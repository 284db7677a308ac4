"""Each baseline's last block against a reference computation written out here from the
papers' formulas, with the block's raw weights."""
import math

import pytest
import torch
from mmseg.registry import MODELS

from fsa_seg.models.segmentors.last_block import official_neighbourhood

from references import reference_features, reference_fsa

CASES = [  # type, last-block overrides, reference attention, residual, ffn
    ('VanillaCLIP', {}, 'q-k', True, True),
    ('MaskCLIP', {}, 'identity', True, True),
    ('MaskCLIP', dict(residual=False, ffn=False), 'identity', False, False),
    ('SCLIP', {}, 'q-q+k-k', True, True),
    ('ClearCLIP', {}, 'q-q', False, False),
    ('NACLIP', {}, 'naclip', False, False),
]


def build(tiny_clip, type_, plugin=None, **last_block):
    return MODELS.build(dict(type=type_, clip=tiny_clip, vocabulary=['a', 'b; c', 'd'],
                             templates='plain', last_block=last_block or None, plugin=plugin))


@pytest.mark.parametrize('type_,overrides,attention,residual,ffn', CASES)
def test_last_block_matches_reference(tiny_clip, type_, overrides, attention, residual, ffn):
    model = build(tiny_clip, type_, **overrides)
    images = torch.randn(2, 3, 48, 64, dtype=torch.float64)
    expected = reference_features(model.clip, images, attention, residual, ffn)
    assert torch.allclose(model.encode_crops(images), expected, atol=1e-12)


@pytest.mark.parametrize('type_,overrides,attention,residual,ffn', CASES)
def test_fsa_replaces_the_attention_output_on_patch_tokens(tiny_clip, type_, overrides,
                                                           attention, residual, ffn):
    plugin = dict(type='FSA', lamda=2.0, top_p=0.5)
    model = build(tiny_clip, type_, plugin=plugin, **overrides)
    images = torch.randn(2, 3, 48, 64, dtype=torch.float64)
    expected = reference_features(model.clip, images, attention, residual, ffn, drop_cls=True,
                                  plugin=reference_fsa(lamda=2.0, top_p=0.5),
                                  text=model.query_embeddings.double())
    assert torch.allclose(model.encode_crops(images), expected, atol=1e-12)


def test_fsa_changes_the_output_and_plugin_none_is_the_plain_baseline(tiny_clip):
    images = torch.randn(1, 3, 48, 48, dtype=torch.float64)
    plain = build(tiny_clip, 'ClearCLIP')
    with_fsa = build(tiny_clip, 'ClearCLIP', plugin=dict(type='FSA'))
    with_fsa.load_state_dict(plain.state_dict())
    assert (plain.encode_crops(images) - with_fsa.encode_crops(images)).abs().max() > 1e-3
    with_fsa.plugin = None
    assert torch.equal(plain.encode_crops(images), with_fsa.encode_crops(images))


def test_gaussian_window_by_hand():
    """NACLIP's Ω, float32 as NACLIP makes it: exp(−|p − q|² / (2σ²)) to float32 rounding."""
    window = official_neighbourhood((2, 2), std=1.0)
    assert window.dtype == torch.float32
    a, b = math.exp(-0.5), math.exp(-1.0)
    expected = torch.tensor([[1, a, a, b], [a, 1, b, a], [a, b, 1, a], [b, a, a, 1]])
    assert torch.allclose(window, expected, rtol=0, atol=2e-7)


def test_unknown_attention_is_a_clear_error(tiny_clip):
    with pytest.raises(KeyError, match='unknown attention'):
        build(tiny_clip, 'ClearCLIP', attention='q-v')
