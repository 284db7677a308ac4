import math

import pytest
import torch
from cuda_checks import host_syncs_raise, needs_cuda
from mmseg.registry import MODELS
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

from fsa_seg.models.segmentors import base, proxy_attention, proxyclip
from fsa_seg.models.segmentors.proxyclip import attend_over_padding

from doubles import TINY_SAM, TINY_VFM, RecordedProducts, record_logs


class FixedVFM(nn.Module):
    """Stand-in VFM returning given features (one map per image of the batch)."""

    def __init__(self, features, input_size=None):
        super().__init__()
        self.features = features
        self.input_size = input_size  # the slide crop, which ProxyCLIP gives every VFM

    def forward(self, images):
        return self.features[:images.shape[0]]


@pytest.fixture(autouse=True)
def golden_vfm_registered():
    """A test-only registry entry, removed after each test."""
    MODELS.register_module('TestGoldenVFM', module=FixedVFM)
    yield
    MODELS.module_dict.pop('TestGoldenVFM')


def build_golden(golden, plugin=None, precision='fp64'):
    cfg = golden['model_cfg']
    arch = dict(embed_dim=cfg['output_dim'],
                vision_cfg=dict(image_size=cfg['image_size'], patch_size=cfg['patch_size'],
                                width=cfg['width'], layers=cfg['layers'],
                                head_width=cfg['width'] // cfg['heads'],
                                mlp_ratio=cfg['mlp_ratio']),
                text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=1))
    model = MODELS.build(dict(
        type='ProxyCLIP', clip=dict(arch=arch, random_init=True, precision=precision),
        vfm=dict(type='TestGoldenVFM', features=golden['vfm_features']),
        vocabulary=[str(i) for i in range(len(golden['text_features']))], templates='plain',
        beta=golden['beta'], gamma=golden['gamma'], plugin=plugin, text_cache_dir=False))
    dtype = model.clip.dtype
    model.clip.visual.load_state_dict({k: v.to(dtype) for k, v in golden['state_dict'].items()},
                                      strict=True)
    model.vfm.features = golden['vfm_features'].to(dtype)
    model.set_query_embeddings(golden['text_features'].to(dtype))
    return model


def test_proxy_attention_and_values_match_the_official_code(golden):
    model = build_golden(golden)
    attn = proxy_attention(golden['vfm_features'], golden['beta'], golden['gamma'])
    assert (attn - golden['attn']).abs().max() < 1e-15
    merged = model.merged_values_on_grid(golden['image'], (28, 28))
    values = golden['values']
    assert merged.shape == (1, 28 * 28, values.shape[1] * values.shape[3])
    assert (merged - values.transpose(1, 2).flatten(2)).abs().max() < 1e-12
    padded = model.merged_values_on_grid(golden['image'], (28, 28), rows=28 * 28 + 3)
    assert torch.equal(padded[:, :28 * 28], merged) and not padded[:, 28 * 28:].any()


def test_proxyclip_tokens_reproduce_the_official_outputs(golden):
    tokens, grid = build_golden(golden).output_tokens(golden['image'])
    assert grid == (28, 28)
    assert (tokens - golden['proxyclip_tokens']).abs().max() < 1e-10


def test_proxyclip_with_fsa_reproduces_the_official_outputs(golden):
    plugin = dict(type='FSA', lamda=golden['lamda'], top_p=golden['top_p'],
                  logit_scales=golden['logit_scales'])
    tokens, _ = build_golden(golden, plugin).output_tokens(golden['image'])
    assert (tokens - golden['fsa_tokens']).abs().max() < 1e-10


def test_mean_similarity_is_taken_per_image():
    features = torch.randn(2, 8, 3, 3, dtype=torch.float64)
    both = proxy_attention(features, 1.2, 3.0)
    for i in range(2):
        assert torch.allclose(both[i:i + 1], proxy_attention(features[i:i + 1], 1.2, 3.0))


@pytest.mark.parametrize('grid', [(3, 3), (42, 42), (5, 7)])
def test_aligned_rows_give_the_same_attention(grid):
    """Rows padded to 16 bytes (the default on CUDA; 9 → 10, 1764 → 1764, 35 → 36 fp64
    entries): the same attention, only the row stride differs; fp16 rows of 1764 → 1768."""
    features = torch.randn(2, 8, *grid, dtype=torch.float64)
    plain = proxy_attention(features, 1.2, 3.0)
    aligned = proxy_attention(features, 1.2, 3.0, aligned_rows=True)
    n = grid[0] * grid[1]
    assert plain.is_contiguous() and aligned.shape == plain.shape == (2, 1, n, n)
    assert aligned.stride(-2) == n + n % 2
    torch.testing.assert_close(aligned, plain, rtol=0, atol=1e-15)
    assert torch.equal(aligned > 0, plain > 0)
    half = proxy_attention(features.float(), 1.2, 3.0, aligned_rows=True)
    assert half.stride(-2) == -(-n // 4) * 4                             # fp32: 4 a row
    with FakeTensorMode():
        on_cuda = proxy_attention(torch.empty(1, 64, 42, 42, dtype=torch.float16,
                                              device='cuda'), 1.2, 3.0)
    assert on_cuda.shape == (1, 1, 1764, 1764) and on_cuda.stride(-2) == 1768


@pytest.mark.parametrize('grid, dtype, width', [((3, 3), torch.float64, 10),
                                                ((5, 7), torch.float32, 36),
                                                ((6, 7), torch.float64, 42)])
def test_attention_over_the_padding_equals_attention_over_the_tokens(grid, dtype, width):
    """A·V with A's padded rows (zeros) contracted over the padded length, the values' merged
    heads given as many rows with zeros last: the straightforward product, per head; unpadded
    rows (42 fp64 entries are 336 bytes) take the plain product."""
    n = grid[0] * grid[1]
    features = torch.randn(2, 8, *grid, dtype=dtype)
    values = torch.randn(2, 3, n, 4, dtype=dtype)
    merged = torch.cat([values.transpose(1, 2).flatten(2), torch.zeros(2, width - n, 12,
                                                                       dtype=dtype)], dim=1)
    attn = proxy_attention(features, 1.2, 3.0, aligned_rows=True)
    assert attn.stride(-2) == width
    with RecordedProducts() as products:
        out = attend_over_padding(attn, merged, 3)
    assert products.shapes == [((2, n, width), (2, width, 12))]
    expected = torch.einsum('bnm,bhmd->bhnd', attn[:, 0].double(), values.double())
    tolerance = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=tolerance)


@pytest.mark.parametrize('plugin', [None, 'FSA'])
def test_proxyclip_on_padded_attention_rows_gives_the_tokens_of_unpadded_ones(
        golden, monkeypatch, plugin):
    """The attention laid out as on CUDA (padded rows) on a 5 × 7 VFM grid (35 fp64 entries →
    36), hence the products over the padding, ProxyCLIP's A·V and FSA's ensemble product
    A·(A_new·V): the tokens of the unpadded attention (the path checked against the official
    outputs above)."""
    plugin = plugin and dict(type='FSA', lamda=golden['lamda'], top_p=golden['top_p'],
                             logit_scales=golden['logit_scales'])
    model = build_golden(golden, plugin)
    model.vfm.features = torch.randn(1, golden['vfm_features'].shape[1], 5, 7,
                                     dtype=torch.float64)
    expected, grid = model.output_tokens(golden['image'])
    monkeypatch.setattr(proxyclip, 'proxy_attention',
                        lambda *args: proxy_attention(*args, aligned_rows=True))
    with RecordedProducts() as products:
        tokens, _ = model.output_tokens(golden['image'])
    width = golden['model_cfg']['width']
    over_padding = [shapes for shapes in products.shapes if shapes == ((1, 35, 36), (1, 36, width))]
    assert grid == (5, 7) and len(over_padding) == (2 if plugin else 1)
    assert (tokens - expected).abs().max() < 1e-12


@pytest.mark.parametrize('aligned', [True, False])
def test_only_a_plugin_that_reads_padding_gets_the_padded_attention(
        golden, monkeypatch, pass_through_plugins, aligned):
    """ProxyCLIP's proxy attention on a 5 × 7 grid with rows padded to 36 (its padding zeros):
    a plug-in declaring ``reads_padding`` gets (1, 1, 35, 36), any other (1, 1, 35, 35); the
    rows sum to 1 either way. Unpadded (CPU's default) both get 35 columns."""
    monkeypatch.setattr(proxyclip, 'proxy_attention',
                        lambda *args: proxy_attention(*args, aligned_rows=aligned))
    widths = {}
    for plugin in ('TestPassThrough', 'TestPassThroughPadded'):
        model = build_golden(golden, dict(type=plugin))
        model.vfm.features = torch.randn(1, golden['vfm_features'].shape[1], 5, 7,
                                         dtype=torch.float64)
        model.output_tokens(golden['image'])
        widths[plugin] = model.plugin.attn_width
        torch.testing.assert_close(model.plugin.row_sums, torch.ones(1, 1, 35, dtype=torch.float64))
    assert widths == {'TestPassThrough': 35, 'TestPassThroughPadded': 36 if aligned else 35}


def test_the_plugin_gets_values_laid_out_token_by_token(golden, pass_through_plugins):
    """The values (B, H, N, d) a plug-in gets are the heads of merged rows (B, N, H·d): a
    token's channels side by side, so that a plug-in's copies and means of them read whole rows
    (FSA's operand, its uniform branch's mean as one product)."""
    model = build_golden(golden, dict(type='TestPassThrough'))
    model.output_tokens(golden['image'])
    heads, width = model.clip.num_heads, golden['model_cfg']['width']
    assert model.plugin.values_strides[1:] == (width // heads, width, 1)


def equally_similar_features(cosine: float) -> torch.Tensor:
    """(1, 5, 2, 2): four unit vectors √c·e0 + √(1−c)·e_i, every pair at cosine ``c``."""
    vectors = torch.eye(5, dtype=torch.float64)[1:] * math.sqrt(1 - cosine)
    vectors[:, 0] = math.sqrt(cosine)
    return vectors.t().reshape(1, 5, 2, 2)


@pytest.mark.parametrize('cosine,undefined', [(0.75, False), (0.8, True)])
def test_proxy_attention_is_undefined_exactly_when_mean_similarity_exceeds_one_over_beta(
        cosine, undefined):
    """mean(S) = (4 + 12c) / 16: 0.8125 for c = 0.75, 0.85 for c = 0.8; 1/β = 0.833. Above it
    even the diagonal (S_ii = 1) is masked, in every row; below it no row is empty."""
    attn = proxy_attention(equally_similar_features(cosine), beta=1.2, gamma=3.0)
    aligned = proxy_attention(equally_similar_features(cosine), 1.2, 3.0, aligned_rows=True)
    assert torch.equal(aligned.isnan(), attn.isnan())      # the −inf padding changes no row
    if undefined:
        assert attn.isnan().all()
    else:
        assert attn.isfinite().all() and torch.allclose(attn.sum(-1), torch.ones(1, 1, 4).double())


def test_a_nearly_uniform_crop_is_reported_with_proxyclips_cause(golden, monkeypatch):
    messages = record_logs(monkeypatch, base)
    model = build_golden(golden)
    model.vfm.features = torch.ones_like(golden['vfm_features'])   # S = 1 everywhere
    samples = model.predict(golden['image'])
    height, width = golden['image'].shape[-2:]
    assert samples[0].metainfo['undefined_pixels'] == height * width
    undefined = [message for message in messages if 'not finite' in message]
    assert len(undefined) == 1 and '1/beta = 0.833' in undefined[0]


@pytest.mark.parametrize('plugin', [None, dict(type='FSA')])
def test_batch_of_two_crops_equals_two_batches_of_one(golden, plugin):
    model = build_golden(golden, plugin)
    model.vfm.features = torch.cat([golden['vfm_features'], golden['vfm_features'].flip(-1)])
    images = torch.cat([golden['image'], golden['image'].flip(-2)])
    both = model.encode_crops(images)
    first = model.encode_crops(images[:1])
    model.vfm.features = model.vfm.features[1:]
    second = model.encode_crops(images[1:])
    assert torch.allclose(both, torch.cat([first, second]), atol=1e-12)


DEVICES = ['cpu', pytest.param('cuda', marks=needs_cuda)]


def golden_on(device, golden, plugin, precision):
    model = build_golden(golden, plugin, precision).to(device)
    model.vfm.features = model.vfm.features.to(device)
    return model


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('plugin', [None, 'FSA'])
@pytest.mark.parametrize('precision,tolerance', [('fp16', 5e-3), ('bf16', 3e-2)])
def test_half_precision_agrees_with_fp64_on_the_golden_inputs(golden, plugin, precision,
                                                              tolerance, device):
    """Stated tolerances on the golden crop (cosine logits in [-1, 1]; measured on this CPU:
    fp16 1.4e-3, bf16 1.0e-2, with or without FSA): every patch keeps its label."""
    if plugin:
        plugin = dict(type='FSA', lamda=golden['lamda'], top_p=golden['top_p'],
                      logit_scales=golden['logit_scales'])
    reference = build_golden(golden, plugin).crop_logits(golden['image'])
    half = golden_on(device, golden, plugin, precision)
    out = half.crop_logits(golden['image'].to(device, torch.float32))
    assert out.dtype == half.clip.dtype and out.device.type == device
    assert (out.double().cpu() - reference).abs().max() < tolerance
    assert torch.equal(out.argmax(1).cpu(), reference.argmax(1))


@needs_cuda
@pytest.mark.parametrize('plugin', [None, 'FSA'])
def test_a_crop_on_cuda_never_synchronises_with_the_host(golden, plugin):
    """CUDA's own check (sync debug mode 'error') over a whole crop, plug-in included."""
    model = golden_on('cuda', golden, plugin and dict(type='FSA'), 'fp16')
    image = golden['image'].to('cuda', torch.float32)
    model.crop_logits(image)   # first call: lazily made constants may be copied once
    with host_syncs_raise():
        out = model.crop_logits(image)
    assert out.device.type == 'cuda' and out.dtype == torch.float16


def test_the_vfm_is_given_the_slide_crop_size_unless_it_sets_one(golden, tiny_clip):
    assert build_golden(golden).vfm.input_size == (336, 336)   # the default window, 336 / 112

    def build(**vfm):
        return MODELS.build(dict(
            type='ProxyCLIP', clip=tiny_clip, vocabulary=['a', 'b'], templates='plain',
            vfm=dict(type='TestGoldenVFM', features=golden['vfm_features'], **vfm),
            test_cfg=dict(mode='slide', crop_size=(224, 160), stride=(112, 80))))

    assert build().vfm.input_size == (224, 160)
    assert build(input_size=(64, 64)).vfm.input_size == (64, 64)


@needs_cuda
@pytest.mark.parametrize('vfm', ['dino_vitb8', 'dino_vitb16', 'dinov2_vitb14_reg', 'mae_vitb16',
                                 pytest.param('sam_vitb', marks=pytest.mark.xfail(
                                     strict=True, raises=RuntimeError,
                                     reason="timm's SAM get_rel_pos indexes with a CPU tensor: a "
                                            'host-to-device copy in every block (upstream)'))])
def test_a_crop_with_a_timm_vfm_on_cuda_never_synchronises_with_the_host(tiny_clip, vfm):
    """The VFM part of the crop too (position embeddings resampled to a 112 crop), fp16."""
    tiny = TINY_SAM if vfm == 'sam_vitb' else TINY_VFM
    model = MODELS.build(dict(
        type='ProxyCLIP', clip=dict(tiny_clip, precision='fp16'), vocabulary=['a', 'b', 'c'],
        templates='plain', text_cache_dir=False, plugin=dict(type='FSA'),
        vfm=dict(type='TimmVFM', name=vfm, random_init=True, model_kwargs=tiny),
        test_cfg=dict(mode='slide', crop_size=(112, 112), stride=(56, 56)))).cuda()
    crops = torch.randn(2, 3, 112, 112, device='cuda')
    model.crop_logits(crops)
    with host_syncs_raise():
        out = model.crop_logits(crops)
    assert out.shape == (2, 3, 112, 112) and out.dtype == torch.float16
