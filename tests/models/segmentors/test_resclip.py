"""ResCLIP against golden outputs of the official code (tests/fixtures/resclip_tiny.pt, README
there): slide (Context60 settings) and whole-image (VOC20 settings, interpolated 9×12 grid)
inference end to end, every per-crop intermediate the fixture stores, and FSA's binding, checked
against a plain reference of ResCLIP's last block written from docs/specs/resclip.md."""
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample

from fsa_seg.models.segmentors.semantic_feedback import (
    feedback_matrix,
    patch_mode,
    same_entity_paths,
)

from golden_fixtures import build_with_fixture_weights, model_input, tiny_clip_cfg
from references import reference_fsa, reference_pamr

FIXTURE = Path(__file__).resolve().parents[2] / 'fixtures' / 'resclip_tiny.pt'
FSA = dict(lamda=2.5, top_p=0.5, logit_scales=(20.0, 35.0))


@pytest.fixture(scope='module')
def fx():
    return torch.load(FIXTURE, weights_only=False)


def build(fx, benchmark='context60', **overrides):
    """ResCLIP with the fixture's weights, text and a benchmark's official settings."""
    bench = fx['benchmarks'][benchmark]
    crop, stride = bench['slide_crop'], bench.get('slide_stride')
    test_cfg = (dict(mode='whole') if crop == 0 else
                dict(mode='slide', crop_size=(crop, crop), stride=(stride, stride)))
    cfg = dict(
        type='ResCLIP', clip=tiny_clip_cfg(fx), vocabulary=fx['class_names'], templates='plain',
        logit_scale=fx['hparams']['logit_scale'], prob_thd=bench.get('prob_thd', 0.0),
        test_cfg=test_cfg, attn_rcs_weights=bench['attn_rcs_weights'],
        attn_sfr_weights=bench['attn_sfr_weights'], temp_thd=bench['temp_thd'],
        gaussian_std=fx['hparams']['gaussian_std'], text_cache_dir=False)
    cfg.update(overrides)
    return build_with_fixture_weights(cfg, fx)


def crop_of(fx, index=0):
    y1, y2, x1, x2 = fx['crop_boxes'][index].tolist()
    return model_input(fx)[:, :, y1:y2, x1:x2]


def expected_probabilities(logits, fx):
    """Softmax of logit_scale × logits over the names, max over each class's names."""
    probs = (logits * fx['hparams']['logit_scale']).softmax(0)
    index = fx['query_idx']
    return torch.stack([probs[index == c].max(0).values for c in range(int(index.max()) + 1)])


def predict(model, fx):
    meta = dict(img_shape=tuple(fx['image_uint8'].shape[-2:]), ori_shape=fx['ori_shape'])
    return model.predict(model_input(fx), [SegDataSample(metainfo=meta)])[0]


# ------------------------------------------------------------------ end to end
@pytest.mark.parametrize('settings,prefix', [('context60', 'slide'), ('voc20', 'whole')])
def test_inference_reproduces_the_official_runs(fx, settings, prefix):
    model = build(fx, settings)
    s = fx['subsample']
    with torch.no_grad():
        logits = model.inference_logits(model_input(fx)[0])
    # the whole image's run moves with the CPU's roundings: logits 3.1e-12 and probabilities
    # 1.9e-11 from the official run's on an AMD EPYC with AVX-512, 1.2e-10 and 5.3e-10 with
    # ATen's scalar kernels (ATEN_CPU_CAPABILITY=default), within 1e-12 on the AVX2 machine
    # that made the fixture; the slide run stays within 1e-14
    logits_tolerance, probs_tolerance = (1e-12, 1e-12) if prefix == 'slide' else (1e-9, 5e-9)
    if prefix == 'slide':
        assert (logits[:, ::s, ::s] - fx['slide_logits_sub']).abs().max() < logits_tolerance
    else:   # the whole 72×100 image: a 9×12 grid (4 pixels past the last patch), upsampled
        expected = F.interpolate(fx['whole']['logits'][None], size=logits.shape[-2:],
                                 mode='bilinear', align_corners=False)[0]
        assert (logits - expected).abs().max() < logits_tolerance
    out = predict(model, fx)
    expected = expected_probabilities(fx[f'{prefix}.final_logits_sub'], fx)
    assert (out.seg_logits.data[:, ::2 * s, ::2 * s] - expected).abs().max() < probs_tolerance
    assert torch.equal(out.pred_sem_seg.data[0].to(torch.uint8), fx[f'{prefix}.pred'])


def test_float32_within_the_official_float32_noise(fx):
    """In float32 (Ω, SFR and PAMR's own dtypes unchanged) the official code moves the slide
    logits by 1.3e-6 from its float64 run and flips no label (the fixture's `noise`)."""
    clip = dict(tiny_clip_cfg(fx), precision='fp32')
    model = build(fx, clip=clip)
    s = fx['subsample']
    with torch.no_grad():
        logits = model.inference_logits(model_input(fx)[0].float())
    assert logits.dtype == torch.float32
    assert (logits[:, ::s, ::s].double() - fx['slide_logits_sub']).abs().max() < 5e-6
    out = predict(model, fx)
    assert torch.equal(out.pred_sem_seg.data[0].to(torch.uint8), fx['slide.pred'])


# ------------------------------------------------------------------ per crop
def crop_pass(model, crops):
    """The last block of ResCLIP on crops, step by step through the segmentor's own methods."""
    clip = model.clip
    tokens, grid, intermediates = clip.forward_to_last_block(crops, return_intermediates=True)
    r = dict(x_in=tokens, attn_rcs=model.residual_attention(crops, intermediates))
    _, r['k'], r['v'] = clip.qkv(tokens)
    kk = r['k'] @ r['k'].transpose(-1, -2) * r['k'].shape[-1] ** -0.5
    omega = model.neighbourhood(grid, 1).to(kk)
    first = model.host_attention(kk, omega, r['attn_rcs']) @ r['v']
    r['temp_logits'] = model.feedback_logits(first, grid, 1)
    r['temp_probs'] = model.pixel_probabilities(r['temp_logits'], crops)
    r['temp_labels'] = model.pixel_labels(r['temp_probs'])
    r['patch_labels'] = model.patch_labels(r['temp_labels'])
    r['valid_paths'] = same_entity_paths(r['patch_labels'])
    r['sfr'] = feedback_matrix(r['patch_labels'], model.gaussian_std)
    r['attn'] = model.host_attention(kk, omega, r['attn_rcs'],
                                     model.semantic_feedback(r['temp_labels'], 1))
    r['features'] = clip.head(clip.out_proj(r['attn'] @ r['v']))
    r['logits'] = model.cosine_logits(model.encode_crops(crops))
    return r


@pytest.fixture(scope='module')
def crops(fx):
    boxes = fx['crop_boxes'].tolist()
    images = torch.cat([model_input(fx)[:, :, y1:y2, x1:x2] for y1, y2, x1, x2 in boxes])
    with torch.no_grad():
        return crop_pass(build(fx), images)


def test_crop0_intermediates(fx, crops):
    golden, s = fx['crop0'], fx['subsample']
    close = dict(x_in=crops['x_in'][0], attn_rcs=crops['attn_rcs'][0], k=crops['k'][0],
                 v=crops['v'][0], temp_logits=crops['temp_logits'][0],
                 temp_probs_sub=crops['temp_probs'][0, :, ::s, ::s], attn=crops['attn'][0],
                 features=crops['features'][0], logits=crops['logits'][0])
    for key, value in close.items():
        assert (value - golden[key]).abs().max() < 1e-12, key
    assert torch.equal(crops['temp_labels'][0].to(torch.uint8), golden['temp_labels'])
    assert torch.equal(crops['patch_labels'][0], golden['patch_labels'])
    assert torch.equal(crops['valid_paths'][0], golden['valid_paths'])
    assert crops['sfr'].dtype == torch.float32
    assert torch.equal(crops['sfr'][0], golden['sfr'][1:, 1:])   # bit for bit, float32
    assert not golden['valid_paths'].all()     # the path check decides something here


def test_every_crop_first_segmentation_and_logits(fx, crops):
    assert (crops['temp_logits'] - fx['crop_temp_logits']).abs().max() < 1e-12
    assert torch.equal(crops['patch_labels'], fx['crop_patch_labels'])
    assert (crops['logits'] - fx['crop_logits']).abs().max() < 1e-12


def test_a_crop_alone_equals_it_in_the_batch(fx, crops):
    model = build(fx)
    with torch.no_grad():
        for index in (0, 7):   # crop 0 holds the fixture's tied patch mode (labels 0, 3)
            alone = model.cosine_logits(model.encode_crops(crop_of(fx, index)))
            # equal on an AVX2 machine; 9e-16 apart on an AMD EPYC (AVX-512), whose float64
            # kernels round a batch of one crop otherwise than one of eight (the crops' logits
            # differ from each other by 0.04 and more)
            assert (alone[0] - crops['logits'][index]).abs().max() < 1e-14


# ------------------------------------------------------------------ SFR pieces by hand
def test_patch_mode_ties_go_to_the_smallest_label():
    labels = torch.tensor([[[3, 3, 1, 2, 0, 5, 4],
                            [1, 1, 2, 0, 5, 0, 4]]])   # three 2×2 patches; the last column is
    assert patch_mode(labels, (2, 2), 6).tolist() == [[[1, 2, 0]]]   # past the last patch


def test_same_entity_paths_by_hand():
    """1×4 grid, labels 0 1 0 0: S = 3, points round(a(1 − k/3) + b·k/3), k ≤ s_ab."""
    valid = same_entity_paths(torch.tensor([[[0, 1, 0, 0]]]))[0]
    assert not valid[0, 2] and not valid[2, 0]     # through patch 1
    assert not valid[0, 3] and not valid[3, 0]     # 3 → 0 visits 3, 2, 1
    assert valid[2, 3] and valid[3, 2]             # neighbours with the same label
    assert valid[0, 1] and valid[1, 0]             # the end is not checked when s < S
    # 1×5, labels 0 0 0 1 0: S = 4, so 1 → 4 (s = 3) reaches patch 3 (rounding 2.5 → 2, then 3)
    valid = same_entity_paths(torch.tensor([[[0, 0, 0, 1, 0]]]))[0]
    assert not valid[1, 4] and valid[0, 2] and not valid[0, 4]


def test_feedback_matrix_by_hand():
    """1×3 grid, labels 0 1 0, σ = 0.3: kernel of size 3; pairs (0, 2) and (2, 0) cross label 1
    and decay by exp(−2/2); rows blurred (zero padding) and normalised."""
    sigma = 0.3
    g = torch.tensor([math.exp(-1 / (2 * sigma ** 2)), 1.0, math.exp(-1 / (2 * sigma ** 2))],
                     dtype=torch.float64)
    g = g / g.sum()
    e = torch.tensor([[1, 0, math.exp(-1)], [0, 1, 0], [math.exp(-1), 0, 1]],
                     dtype=torch.float64)
    blurred = torch.stack([F.conv1d(row.view(1, 1, 3), g.view(1, 1, 3), padding=1).view(3)
                           for row in e])
    expected = blurred / (blurred.sum(1, keepdim=True) + 1e-8)
    sfr = feedback_matrix(torch.tensor([[[0, 1, 0]]]), sigma)[0]
    assert sfr.dtype == torch.float32
    assert (sfr.double() - expected).abs().max() < 1e-6
    plain = feedback_matrix(torch.tensor([[[0, 1, 0]]]), sigma, same_entity=False)[0]
    assert plain[0, 2] > sfr[0, 2] * 1.5      # without the decay the pair keeps weight 1


# ------------------------------------------------------------------ a plain reference
def reference_omega(grid, std):
    """Ω (N, N) as docs/specs/resclip.md §2 computes it: coordinates scaled by 1/(σ√2) with
    float32 ``linspace``, squared and summed in float32, exp."""
    c = 1 / (std * math.sqrt(2))
    axes = [torch.linspace(-(n - 1) * c, (n - 1) * c, 2 * n - 1, dtype=torch.float32)
            for n in grid]
    window = torch.exp(-(axes[0][:, None] ** 2 + axes[1][None, :] ** 2))
    h, w = grid
    omega = torch.zeros(h * w, h * w, dtype=torch.float32)
    for i in range(h * w):
        for j in range(h * w):
            (yi, xi), (yj, xj) = divmod(i, w), divmod(j, w)
            omega[i, j] = window[yi - yj + h - 1, xi - xj + w - 1]
    return omega


def reference_sfr(patch_labels, std):
    """The SFR matrix (N, N) of docs/specs/resclip.md §4, pair by pair, float32."""
    h, w = patch_labels.shape
    n, span = h * w, max(h, w) - 1
    t = torch.linspace(0, 1, span + 1, dtype=torch.float32)
    labels = patch_labels.flatten()
    e = torch.zeros(n, n, dtype=torch.float32)
    for i in range(n):
        for j in range(n):
            if labels[i] != labels[j]:
                continue
            (yi, xi), (yj, xj) = divmod(i, w), divmod(j, w)
            steps = max(abs(yi - yj), abs(xi - xj))
            points = [(int((yi * (1 - t[k]) + yj * t[k]).round()),
                       int((xi * (1 - t[k]) + xj * t[k]).round())) for k in range(steps + 1)]
            valid = all(patch_labels[p] == labels[i] for p in points)
            e[i, j] = 1.0 if valid else torch.exp(torch.tensor(-steps, dtype=torch.float32)
                                                  / span)
    size = min(n, int(6 * std + 1))
    size = size if size % 2 else size + 1
    x = torch.arange(size, dtype=torch.float32) - size // 2
    kernel = torch.exp(-(x ** 2) / (2 * std ** 2))
    kernel = kernel / kernel.sum()
    blurred = F.conv1d(e[:, None], kernel.view(1, 1, -1), padding=size // 2)[:, 0].relu()
    return blurred / (blurred.sum(1, keepdim=True) + 1e-8)


def reference_crop(fx, crop, benchmark, keep_cls, fsa=None):
    """ResCLIP's last block on the fixture's crop 0 from the official trunk output and RCS
    (``crop0.x_in``, ``crop0.attn_rcs``), written from the spec with the fixture's weights;
    without the class token if not ``keep_cls``; FSA (the official formulation) on the final
    attention and values if given. Returns the intermediates and the grid logits (Q, h, w)."""
    w = {k: v.double() for k, v in fx['clip_state_dict'].items()}
    c, hp, bench = fx['clip_cfg'], fx['hparams'], fx['benchmarks'][benchmark]
    width, heads, patch = c['width'], c['heads'], c['patch_size']
    block = f'transformer.resblocks.{c["layers"] - 1}.'
    skip = 0 if keep_cls else 1
    x, rcs = fx['crop0']['x_in'][skip:], fx['crop0']['attn_rcs'][:, skip:, skip:]
    grid = (crop.shape[-2] // patch, crop.shape[-1] // patch)
    text = fx['text_features']

    y = F.layer_norm(x, (width,), w[block + 'ln_1.weight'], w[block + 'ln_1.bias'], 1e-5)
    qkv = y @ w[block + 'attn.in_proj_weight'].T + w[block + 'attn.in_proj_bias']
    k, v = (qkv[:, i * width:(i + 1) * width].reshape(-1, heads, width // heads).transpose(0, 1)
            for i in (1, 2))
    kk = k @ k.transpose(1, 2) / math.sqrt(width // heads)
    omega = F.pad(reference_omega(grid, hp['gaussian_std']), (1 - skip, 0, 1 - skip, 0))

    def attention(sfr16=None):
        logits = kk
        if sfr16 is not None:
            tau, lam = bench['attn_sfr_weights']
            logits = tau * ((1 - lam) * kk + lam * sfr16)
        attn = torch.softmax(logits + omega.double(), dim=-1)
        tau, lam = bench['attn_rcs_weights']
        return tau * ((1 - lam) * attn + lam * rcs)

    def cosine(heads_out):                                # (H, n, d) → (n, Q)
        merged = heads_out.transpose(0, 1).reshape(-1, width)
        out = merged @ w[block + 'attn.out_proj.weight'].T + w[block + 'attn.out_proj.bias']
        f = F.layer_norm(out, (width,), w['ln_post.weight'], w['ln_post.bias'], 1e-5) @ w['proj']
        return (f / f.norm(dim=-1, keepdim=True)) @ text.T

    def grid_logits(per_token):
        return per_token[1 - skip:].T.reshape(-1, *grid)

    r = dict(temp_logits=grid_logits(cosine(attention() @ v)))
    up = F.interpolate(r['temp_logits'][None], size=crop.shape[-2:], mode='bilinear',
                       align_corners=False)
    refined = reference_pamr(crop, up, hp['pamr_steps_sfr'], hp['pamr_dilations_sfr'])
    probs = torch.softmax(refined[0] * hp['logit_scale'], dim=0)
    labels = probs.argmax(0)
    labels[probs.max(0).values < bench['temp_thd']] = 0
    blocks = labels.unfold(0, patch, patch).unfold(1, patch, patch).reshape(*grid, -1)
    r['patch_labels'] = torch.mode(blocks, dim=-1).values          # the official function
    r['sfr'] = reference_sfr(r['patch_labels'], hp['gaussian_std'])
    sfr16 = F.pad(r['sfr'] / r['sfr'].max(), (1 - skip, 0, 1 - skip, 0)).half()
    r['attn'] = attention(sfr16)
    out = r['attn'] @ v
    if fsa is not None:
        out = reference_fsa(**fsa)(r['attn'][None], v[None],
                                   lambda h: cosine(h[0])[None])[0]
    r['logits'] = grid_logits(cosine(out))
    return r


def test_the_reference_reproduces_the_official_crop(fx):
    """The reference itself, with the class token, against the golden crop 0."""
    ref = reference_crop(fx, crop_of(fx), 'context60', keep_cls=True)
    golden = fx['crop0']
    assert torch.equal(ref['patch_labels'], golden['patch_labels'])
    assert torch.equal(ref['sfr'], golden['sfr'][1:, 1:])
    for key in ('temp_logits', 'attn', 'logits'):
        assert (ref[key] - golden[key]).abs().max() < 1e-12, key


def test_plugin_on_all_tokens_keeps_resclip_exactly(fx, pass_through_plugins):
    crop = crop_of(fx)
    model = build(fx, plugin=dict(type='TestPassThroughAll'))
    with torch.no_grad():
        assert torch.equal(model.encode_crops(crop), build(fx).encode_crops(crop))
    assert model.plugin.seen['num_prefix'] == 1
    tau = fx['benchmarks']['context60']['attn_rcs_weights'][0]
    assert torch.allclose(model.plugin.row_sums, torch.full((1, 4, 37), tau,
                                                             dtype=torch.float64))


def test_plugin_on_patches_drops_the_class_token_from_both_passes(fx, pass_through_plugins):
    crop = crop_of(fx)
    model = build(fx, plugin=dict(type='TestPassThrough'))
    with torch.no_grad():
        logits = model.cosine_logits(model.encode_crops(crop))[0]
    ref = reference_crop(fx, crop, 'context60', keep_cls=False)
    assert model.plugin.seen['num_prefix'] == 0
    assert (logits - ref['logits']).abs().max() < 1e-12
    # rows: τ_r((1 − λ_r) + λ_r·(RCS's patch-block rows, less than 1))
    tau, lam = fx['benchmarks']['context60']['attn_rcs_weights']
    rows = tau * ((1 - lam) + lam * fx['crop0']['attn_rcs'][:, 1:, 1:].sum(-1))
    assert torch.allclose(model.plugin.row_sums[0], rows, atol=1e-12)
    assert (rows < tau).all()


def test_fsa_binds_to_the_final_attention_and_values(fx):
    """RCS → SFR → FSA: FSA on the final per-head attention (class token dropped) and the
    last block's values, feedback logits with the raw text; equals the official formulation."""
    crop = crop_of(fx)
    model = build(fx, plugin=dict(type='FSA', **FSA))
    with torch.no_grad():
        logits = model.cosine_logits(model.encode_crops(crop))[0]
    ref = reference_crop(fx, crop, 'context60', keep_cls=False, fsa=FSA)
    assert (logits - ref['logits']).abs().max() < 1e-12
    plain = reference_crop(fx, crop, 'context60', keep_cls=False)
    assert (logits - plain['logits']).abs().max() > 1e-3        # FSA did change the crop


# ------------------------------------------------------------------ options
def test_without_rcs_and_sfr_it_is_naclip(fx):
    """ResCLIP's host: with both modules off, NACLIP (Ω in float32 here, in float64 there)."""
    model = build(fx, use_rcs=False, use_sfr=False, attn_rcs_weights=None,
                  attn_sfr_weights=None, temp_thd=None)
    naclip = MODELS.build(dict(type='NACLIP', clip=tiny_clip_cfg(fx), templates='plain',
                               vocabulary=fx['class_names'], text_cache_dir=False))
    naclip.clip.load_state_dict(model.clip.state_dict())
    crop = crop_of(fx)
    with torch.no_grad():
        assert (model.encode_crops(crop) - naclip.encode_crops(crop)).abs().max() < 1e-8


def test_sfr_refine_none_skips_the_first_pamr(fx):
    """What the official code silently does when that PAMR raises: the pixel probabilities
    then come from the upsampled logits alone."""
    with torch.no_grad():
        r = crop_pass(build(fx, sfr_refine=None), crop_of(fx))
    up = F.interpolate(fx['crop0']['temp_logits'][None], size=(48, 48), mode='bilinear',
                       align_corners=False)
    assert (r['temp_probs'] - (up * fx['hparams']['logit_scale']).softmax(1)).abs().max() < 1e-12


def test_bad_settings_are_refused(fx):
    with pytest.raises(ValueError, match='needs attn_rcs_weights'):
        build(fx, attn_rcs_weights=None)
    with pytest.raises(ValueError, match='needs temp_thd'):
        build(fx, temp_thd=None)
    with pytest.raises(ValueError, match='rcs_layers must be trunk blocks 0…10'):
        build(fx, rcs_layers=(5, 11))
    with pytest.raises(ValueError, match=r'\(tau, lambda\)'):
        build(fx, attn_sfr_weights=(1.8,))
    with pytest.raises(ValueError, match='at least one 8x8 patch'):
        predict(build(fx), dict(fx, image_uint8=fx['image_uint8'][:, :6]))
