"""Each baseline's last block against a reference computation written out here from the
papers' formulas, with the block's raw weights."""
import math

import pytest
import torch
import torch.nn.functional as F
from mmseg.registry import MODELS

from fsa_seg.models.plugins import FSA
from fsa_seg.models.segmentors.last_block import gaussian_window


def reference_features(clip, images, attention, residual, ffn, drop_cls=False, plugin=None,
                       text=None):
    """Dense features (B, D, h, w), L2-normalised, computed step by step."""
    tokens, grid = clip.forward_to_last_block(images)
    if drop_cls:
        tokens = tokens[:, 1:]
    block = clip.last_block
    heads = block.attn.num_heads
    batch, length, width = tokens.shape
    head_dim = width // heads
    x = F.layer_norm(tokens, (width, ), block.ln_1.weight, block.ln_1.bias, block.ln_1.eps)
    qkv = x @ block.attn.in_proj_weight.t() + block.attn.in_proj_bias
    q, k, v = (qkv[..., i * width:(i + 1) * width].reshape(batch, length, heads, head_dim)
               .permute(0, 2, 1, 3) for i in range(3))
    scale = 1 / math.sqrt(head_dim)
    if attention == 'q-k':
        attn = torch.softmax(q @ k.transpose(2, 3) * scale, -1)
    elif attention == 'q-q':
        attn = torch.softmax(q @ q.transpose(2, 3) * scale, -1)
    elif attention == 'q-q+k-k':
        attn = torch.softmax(q @ q.transpose(2, 3) * scale, -1) + \
            torch.softmax(k @ k.transpose(2, 3) * scale, -1)
    elif attention == 'identity':
        attn = None
    elif attention == 'naclip':
        logits = k @ k.transpose(2, 3) * scale
        prefix = 0 if drop_cls else 1
        window = torch.zeros(length, length, dtype=logits.dtype)
        for i in range(grid[0] * grid[1]):
            for j in range(grid[0] * grid[1]):
                (yi, xi), (yj, xj) = divmod(i, grid[1]), divmod(j, grid[1])
                window[prefix + i, prefix + j] = math.exp(-((yi - yj)**2 + (xi - xj)**2) / 50.0)
        attn = torch.softmax(logits + window, -1)
    out = v if attn is None else attn @ v
    if plugin is not None:
        def logits_fn(o):
            merged = o.permute(0, 2, 1, 3).reshape(o.shape[0], o.shape[2], width)
            f = F.normalize(clip.head(block.attn.out_proj(merged)), dim=-1)
            return f @ text.t()
        out = plugin(attn, v, logits_fn)
    out = block.attn.out_proj(out.permute(0, 2, 1, 3).reshape(batch, length, width))
    if residual:
        out = tokens + out
    if ffn:
        y = F.layer_norm(out, (width, ), block.ln_2.weight, block.ln_2.bias, block.ln_2.eps)
        hidden = F.gelu(y @ block.mlp.c_fc.weight.t() + block.mlp.c_fc.bias)
        out = out + hidden @ block.mlp.c_proj.weight.t() + block.mlp.c_proj.bias
    patches = out if drop_cls else out[:, 1:]
    feats = F.normalize(clip.head(patches), dim=-1)
    return feats.transpose(1, 2).reshape(batch, -1, *grid)


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
                                  plugin=FSA(lamda=2.0, top_p=0.5),
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
    window = gaussian_window((2, 2), sigma=1.0, dtype=torch.float64)
    a, b = math.exp(-0.5), math.exp(-1.0)
    assert torch.allclose(window, torch.tensor([[1, a, a, b], [a, 1, b, a], [a, b, 1, a],
                                                [b, a, a, 1]], dtype=torch.float64))


def test_unknown_attention_is_a_clear_error(tiny_clip):
    with pytest.raises(KeyError, match='unknown attention'):
        build(tiny_clip, 'ClearCLIP', attention='q-v')
