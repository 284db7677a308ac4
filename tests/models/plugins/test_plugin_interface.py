"""The plug-in contract (fsa_seg/models/plugins/base.py), proved with trivial plug-ins."""
import pytest
import torch
from mmseg.registry import MODELS

from fsa_seg.models.plugins import AttentionPlugin

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
