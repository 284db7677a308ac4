"""The plug-in contract (fsa_seg/models/plugins/base.py), proved with trivial plug-ins."""
import pytest
import torch
from mmseg.registry import MODELS

from fsa_seg.models.plugins import AttentionPlugin
from fsa_seg.models.plugins.base import attend

from references import reference_features

BASELINES = [  # type, reference attention, residual, ffn
    ('VanillaCLIP', 'q-k', True, True),
    ('MaskCLIP', 'identity', True, True),
    ('SCLIP', 'q-q+k-k', True, True),
    ('ClearCLIP', 'q-q', False, False),
    ('NACLIP', 'naclip', False, False),
]


def build(tiny_clip, type_, plugin=None):
    return MODELS.build(dict(type=type_, clip=tiny_clip, vocabulary=['a', 'b; c', 'd'],
                             templates='plain', plugin=plugin))


@pytest.mark.parametrize('type_,attention,residual,ffn', BASELINES)
def test_pass_through_on_all_tokens_is_the_baseline_exactly(tiny_clip, pass_through_plugins,
                                                            type_, attention, residual, ffn):
    plain = build(tiny_clip, type_)
    with_plugin = build(tiny_clip, type_, plugin=dict(type='TestPassThroughAll'))
    with_plugin.load_state_dict(plain.state_dict())
    images = torch.randn(2, 3, 48, 64, dtype=torch.float64)
    out = with_plugin.encode_crops(images)
    assert with_plugin.plugin.seen == dict(grid=(3, 4), num_prefix=1, tokens=1 + 12)
    assert torch.equal(out, plain.encode_crops(images))
    expected = reference_features(plain.clip, images, attention, residual, ffn)
    assert torch.allclose(out, expected, atol=1e-12)


@pytest.mark.parametrize('type_,attention,residual,ffn', BASELINES)
def test_pass_through_on_patches_drops_the_class_token(tiny_clip, pass_through_plugins, type_,
                                                       attention, residual, ffn):
    model = build(tiny_clip, type_, plugin=dict(type='TestPassThrough'))
    images = torch.randn(1, 3, 48, 64, dtype=torch.float64)
    out = model.encode_crops(images)
    assert model.plugin.seen == dict(grid=(3, 4), num_prefix=0, tokens=12)
    expected = reference_features(model.clip, images, attention, residual, ffn, drop_cls=True)
    assert torch.allclose(out, expected, atol=1e-12)


def test_a_module_that_is_not_a_plugin_is_refused(tiny_clip):
    with pytest.raises(TypeError, match='not an attention plug-in'):
        build(tiny_clip, 'ClearCLIP', plugin=dict(type='mmseg.PSPHead', in_channels=4,
                                                  channels=4, num_classes=2))


def test_a_plugin_must_declare_known_tokens():
    with pytest.raises(TypeError, match='tokens must be one of'):
        type('Bad', (AttentionPlugin,), dict(tokens='cls'))


@pytest.mark.parametrize('layout', ['contiguous', 'channels_first'])
def test_attend_applies_a_shared_attention_to_every_head(layout):
    """A (B, 1, N, N) attention applied to the merged heads in one product equals the per-head
    product; ``channels_first`` is ProxyCLIP's values, a view of (B, H·d, N) maps."""
    batch, heads, n, d = 2, 3, 7, 5
    attn = torch.rand(batch, 1, n, n, dtype=torch.float64).softmax(dim=-1)
    if layout == 'contiguous':
        values = torch.randn(batch, heads, n, d, dtype=torch.float64)
    else:
        values = torch.randn(batch, heads * d, n, dtype=torch.float64)
        values = values.reshape(batch, heads, d, n).transpose(2, 3)
    expected = torch.einsum('bnm,bhmd->bhnd', attn[:, 0], values)
    assert torch.allclose(attend(attn, values), expected, rtol=0, atol=1e-14)
    per_head = torch.rand(batch, heads, n, n, dtype=torch.float64)
    assert torch.allclose(attend(per_head, values),
                          torch.einsum('bhnm,bhmd->bhnd', per_head, values), rtol=0, atol=1e-14)
