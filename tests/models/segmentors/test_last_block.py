"""Adding a baseline as the README shows: a registered attention and a last-block description."""
import pytest
import torch
from mmseg.registry import MODELS

from fsa_seg.models.segmentors import ATTENTIONS, CLIPSegmentor, LastBlock, register_attention


@pytest.fixture
def key_attention_baseline():
    @register_attention('test-k-k')
    def key_attention(q, k, **_):
        return (k @ k.transpose(-1, -2) * k.shape[-1] ** -0.5).softmax(dim=-1)

    class KeyCLIP(CLIPSegmentor):
        default_last_block = LastBlock('test-k-k', residual=False, ffn=True)

    MODELS.register_module('TestKeyCLIP', module=KeyCLIP, force=True)
    yield key_attention
    del ATTENTIONS['test-k-k']


def test_a_new_baseline_is_one_attention_and_one_description(tiny_clip, key_attention_baseline):
    model = MODELS.build(dict(type='TestKeyCLIP', clip=tiny_clip, vocabulary=['a', 'b'],
                              templates='plain', plugin=dict(type='FSA')))
    images = torch.randn(1, 3, 32, 48, dtype=torch.float64)
    tokens, grid = model.clip.forward_to_last_block(images)
    q, k, v = model.clip.qkv(tokens[:, 1:])
    attn = key_attention_baseline(q, k)
    attended = model.plugin(attn, v, model.isolation_logits)
    x = model.clip.out_proj(attended)
    x = x + model.clip.last_block.mlp(model.clip.last_block.ln_2(x))
    expected = torch.nn.functional.normalize(model.clip.head(x), dim=-1)
    assert grid == (2, 3)
    assert torch.allclose(model.encode_crops(images), expected.transpose(1, 2).unflatten(2, grid))


def test_registering_an_attention_twice_is_refused():
    with pytest.raises(KeyError, match='already registered'):
        register_attention('q-k')(lambda q, k, **_: None)
