"""Adding a baseline as the README shows: a registered attention and a last-block description."""
import pytest
import torch
from mmseg.registry import MODELS

from fsa_seg.models.segmentors import ATTENTIONS, CLIPSegmentor, LastBlock, register_attention

from references import reference_features, reference_fsa


@pytest.fixture
def key_attention_baseline():
    @register_attention('test-k-k')
    def key_attention(q, k, **_):
        return (k @ k.transpose(-1, -2) * k.shape[-1] ** -0.5).softmax(dim=-1)

    class KeyCLIP(CLIPSegmentor):
        default_last_block = LastBlock('test-k-k', residual=False, ffn=True)

    MODELS.register_module('TestKeyCLIP', module=KeyCLIP)
    yield
    del ATTENTIONS['test-k-k']
    MODELS.module_dict.pop('TestKeyCLIP')


@pytest.mark.parametrize('plugin', [None, dict(type='FSA', lamda=2.5)])
def test_a_new_baseline_is_one_attention_and_one_description(tiny_clip, key_attention_baseline,
                                                             plugin):
    model = MODELS.build(dict(type='TestKeyCLIP', clip=tiny_clip, vocabulary=['a', 'b'],
                              templates='plain', plugin=plugin))
    images = torch.randn(1, 3, 32, 48, dtype=torch.float64)
    expected = reference_features(model.clip, images, 'k-k', residual=False, ffn=True,
                                  drop_cls=plugin is not None,
                                  plugin=plugin and reference_fsa(lamda=2.5),
                                  text=model.query_embeddings.double())
    assert expected.shape[-2:] == (2, 3)
    assert torch.allclose(model.encode_crops(images), expected, atol=1e-12)


def test_registering_an_attention_twice_is_refused():
    with pytest.raises(KeyError, match='already registered'):
        register_attention('q-k')(lambda q, k, **_: None)


@pytest.mark.parametrize('attention', ['q-k', 'identity', 'q-q', 'q-q+k-k', 'k-k+neighbourhood'])
@pytest.mark.parametrize('num_prefix', [0, 1])
def test_fused_attention_equals_the_weights_applied_to_the_values(attention, num_prefix):
    """The fused (scaled_dot_product_attention) form used without a plug-in is A·V."""
    from fsa_seg.models.segmentors.last_block import FUSED_ATTENTIONS
    assert attention in FUSED_ATTENTIONS
    block = LastBlock(attention, attention_kwargs=(('sigma', 2.0),)
                      if attention == 'k-k+neighbourhood' else ())
    q, k, v = torch.randn(3, 2, 4, num_prefix + 6, 8, dtype=torch.float64)
    weights = block.attention_weights(q, k, (2, 3), num_prefix)
    expected = v if weights is None else weights @ v
    assert torch.allclose(block.attend(q, k, v, (2, 3), num_prefix), expected, atol=1e-13)


def test_a_fused_form_needs_its_attention():
    from fsa_seg.models.segmentors import register_fused_attention  # where the README says
    with pytest.raises(KeyError, match='before its fused form'):
        register_fused_attention('test-unknown')(lambda q, k, v, **_: v)
