"""CASS against golden outputs of the official code (tests/fixtures/cass_tiny*.pt, README there):
the contract of issue 9 end to end (slide and whole-image inference, the ADE20K-style, VOC20 and
Cityscapes paths), and every per-crop intermediate the fixtures store."""
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample

from fsa_seg.models.segmentors.cass import dino_pixels
from fsa_seg.models.segmentors.last_block import official_neighbourhood
from fsa_seg.models.segmentors.spectral import low_rank_graph, matching_cost, top_spectra

from references import reference_fsa

FIXTURES = Path(__file__).resolve().parents[2] / 'fixtures'


@pytest.fixture(scope='module', params=['cass_tiny', 'cass_tiny_voc20', 'cass_tiny_cityscapes'])
def fx(request):
    data = torch.load(FIXTURES / f'{request.param}.pt', weights_only=False)
    data['name'] = request.param
    return data


def build(fx, **overrides):
    """The model of the contract (issue 9), with the fixture's weights and text."""
    c, d, h = fx['clip_cfg'], fx['dino_cfg'], fx['hparams']
    cfg = dict(
        type='CASS',
        clip=dict(arch=dict(embed_dim=c['out'], vision_cfg=dict(
            image_size=c['res'], patch_size=c['patch'], width=c['width'], layers=c['layers'],
            head_width=c['width'] // c['heads'], mlp_ratio=4.0),
            text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=1)),
            quick_gelu=True, random_init=True, precision='fp64'),
        vfm=dict(type='TimmVFM', name='dino_vitb8', random_init=True,
                 model_kwargs=dict(img_size=d['img'], embed_dim=d['width'], depth=d['depth'],
                                   num_heads=d['heads'])),
        vocabulary=fx['class_names'], templates='plain', logit_scale=h['logit_scale'],
        prob_thd=h['prob_thd'],
        test_cfg=dict(mode='slide', crop_size=(h['slide_crop'],) * 2,
                      stride=(h['slide_stride'],) * 2),
        global_semantics_weight=h['global_semantics_weight'],
        mean_vector_weight=h['mean_vector_weight'], h_threshold=h['h_threshold'],
        gaussian_std=h['gaussian_std'], scale_singular_values=h['scale_singular_values'],
        whole_image_global=h['whole_image_global'], svd_seed=fx['svd_seed'],
        text_cache_dir=False)
    cfg.update(overrides)
    model = MODELS.build(cfg)
    model.clip.visual.load_state_dict({k: v.double() for k, v in fx['clip_state_dict'].items()})
    model.vfm.model.load_state_dict({k: v.double() for k, v in fx['dino_state_dict'].items()})
    model.set_query_embeddings(fx['text_features'])
    return model


def crop_omega(fx):
    """This CPU's float32 window Ω on the crops' grid, as the official code computes it."""
    return official_neighbourhood(tuple(fx['crop_logits'].shape[-2:]),
                                  fx['hparams']['gaussian_std'])


def omega_as_made(fx) -> bool:
    """Whether this CPU's float32 ``exp`` gives the fixture's Ω (the crops' grid) bit for bit:
    not where the fixture was made on a CPU whose float32 exp differs in the last bit
    (cass_tiny.pt; ATen's scalar kernels, ATEN_CPU_CAPABILITY=default, against its AVX2 and
    AVX-512 ones), and one ulp of Ω moves CASS's probabilities by up to 5e-9."""
    return torch.equal(crop_omega(fx).double(), fx['crop0']['omega'])


def with_official_omega(model, fx):
    """Ω from the fixture: the official code computes it with float32 ``exp`` and sums, whose
    last bit differs between CPUs (see test_neighbourhood_is_the_official_float32_window)."""
    model.neighbourhood = lambda grid: fx['crop0']['omega'].float()
    return model


def model_input(fx, image=None):
    mean = torch.tensor(fx['norm_mean'], dtype=torch.float64).view(3, 1, 1)
    std = torch.tensor(fx['norm_std'], dtype=torch.float64).view(3, 1, 1)
    image = fx['image_uint8'] if image is None else image
    return ((image.double() - mean) / std)[None]


def expected_probabilities(logits, fx):
    """Softmax of logit_scale × logits over the names, max over each class's names."""
    probs = (logits * fx['hparams']['logit_scale']).softmax(0)
    index = fx['query_idx']
    return torch.stack([probs[index == c].max(0).values for c in range(int(index.max()) + 1)])


def predict(model, x):
    shape = tuple(x.shape[-2:])
    return model.predict(x, [SegDataSample(metainfo=dict(img_shape=shape, ori_shape=shape))])[0]


def test_contract_reproduces_the_official_slide_inference(fx):
    out = predict(with_official_omega(build(fx), fx), model_input(fx))
    s = fx['subsample']
    expected = expected_probabilities(fx['slide_logits_sub'], fx)
    assert (out.seg_logits.data[:, ::s, ::s] - expected).abs().max() < 1e-10
    assert torch.equal(out.pred_sem_seg.data[0].to(torch.uint8), fx['pred'])


def test_contract_with_this_machines_float32_window(fx):
    """Without the fixture's Ω: the official float32 window of this CPU."""
    out = predict(build(fx), model_input(fx))
    s = fx['subsample']
    expected = expected_probabilities(fx['slide_logits_sub'], fx)
    tolerance = 1e-10 if omega_as_made(fx) else 1e-7
    assert (out.seg_logits.data[:, ::s, ::s] - expected).abs().max() < tolerance
    assert torch.equal(out.pred_sem_seg.data[0].to(torch.uint8), fx['pred'])


def test_contract_whole_image_inference(fx):
    """A VOC21-style run: whole image (not a multiple of the patch), σ-stretch on, the global
    prior from the image itself, DINO on the image squashed to a square."""
    if 'whole' not in fx:
        pytest.skip('no whole-image run in this fixture')
    whole = fx['whole']
    model = build(fx, test_cfg=dict(mode='whole'),
                  global_semantics_weight=whole['global_semantics_weight'],
                  mean_vector_weight=whole['mean_vector_weight'], scale_singular_values=True)
    x = model_input(fx, whole['image_uint8'])
    assert torch.equal(dino_pixels(x)[0].permute(1, 2, 0), whole['dino_image'])
    out = predict(model, x)
    s = whole['subsample']
    expected = expected_probabilities(whole['seg_logits_sub'], fx)
    # Ω on the whole image's grid, which the fixture does not hold, is this CPU's float32
    # window: one ulp of it moves the probabilities by up to 5e-9 (7.5e-9 with ATen's scalar
    # kernels, 2.0e-10 on an AMD EPYC with AVX-512, within 1e-10 on the AVX2 machine that
    # made the fixture)
    assert (out.seg_logits.data[:, ::s, ::s] - expected).abs().max() < 1e-7
    assert torch.equal(out.pred_sem_seg.data[0].to(torch.uint8), whole['pred'])


def test_neighbourhood_is_the_official_float32_window(fx):
    omega = crop_omega(fx)
    assert omega.dtype == torch.float32
    ulp = torch.finfo(torch.float32).eps   # of 1, Ω's largest entry
    assert (omega.double() - fx['crop0']['omega']).abs().max() <= ulp   # 0 where made alike

def test_neighbourhood_by_hand():
    """NACLIP's Gaussian: exp(-|p - q|² / (2σ²)) over patch coordinates, float32 rounding."""
    omega = official_neighbourhood((10, 10), 5.0)
    ulp = torch.finfo(torch.float32).eps
    assert abs(omega[0, 11].item() - torch.tensor(-2 / 50).exp().item()) < 2 * ulp
    assert abs(omega[23, 0].item() - torch.tensor(-13 / 50).exp().item()) < 2 * ulp
    assert omega[0, 0] == 1 and torch.equal(omega, omega.T)
    assert official_neighbourhood((2, 3), 1.0).shape == (6, 6)


def test_query_clusters_match_the_official_ward_clustering(fx):
    clusters = build(fx).query_clusters.int().argmax(dim=0)
    assert clusters.tolist() == fx['cluster_info'].tolist()


@pytest.fixture(scope='module')
def crop0(fx):
    """The first crop through our model, step by step, with the fixture's seed."""
    model = with_official_omega(build(fx), fx)
    y1, y2, x1, x2 = fx['crop0']['box']
    crop = model_input(fx)[:, :, y1:y2, x1:x2]
    with torch.no_grad():
        tokens, grid = model.clip.forward_to_last_block(crop)
        _, keys, values = model.clip.qkv(tokens[:, 1:])
        dino_keys = model.dino_keys(crop, keys, grid)
    return dict(model=model, crop=crop, tokens=tokens, grid=grid, keys=keys[0],
                values=values[0], dino_keys=dino_keys[0])


def test_crop_inputs_dino_image_and_keys(fx, crop0):
    golden = fx['crop0']
    assert torch.equal(dino_pixels(crop0['crop'])[0].permute(1, 2, 0), golden['dino_image'])
    assert (crop0['keys'] - golden['clip_k']).abs().max() < 1e-12
    assert (crop0['values'] - golden['values']).abs().max() < 1e-12
    assert (crop0['dino_keys'] - golden['dino_key_final']).abs().max() < 1e-12


def test_crop_spectral_distillation_steps(fx, crop0):
    golden = fx['crop0']
    scale = crop0['keys'].shape[-1] ** -0.5
    clip_kk = crop0['keys'] @ crop0['keys'].transpose(-1, -2) * scale
    dino_kk = crop0['dino_keys'] @ crop0['dino_keys'].transpose(-1, -2) * scale
    assert (clip_kk - golden['clip_kk']).abs().max() < 1e-12
    assert (dino_kk - golden['dino_kk']).abs().max() < 1e-12
    # spectra: the fixture stores the top-k eigenvalues before the L2 normalisation
    h = fx['hparams']
    for graphs, eig in ((clip_kk, golden['eig_clip']), (dino_kk, golden['eig_dino'])):
        assert (top_spectra(graphs, h['k_eigen']) - F.normalize(eig, dim=1)).abs().max() < 1e-12
    cost = matching_cost(top_spectra(dino_kk, h['k_eigen']), top_spectra(clip_kk, h['k_eigen']))
    assert cost.dtype == torch.float32 and torch.equal(cost, golden['cost'])
    # the randomized SVD replays the official draws: seed, then heads in order
    torch.manual_seed(fx['svd_seed'])
    stretch = h['scale_singular_values']
    for idx, j in enumerate(golden['col_ind'].tolist()):
        s = golden['svd_s_scaled' if stretch else 'svd_s'][idx]
        expected = (golden['svd_u'][idx] @ torch.diag(s) @ golden['svd_v'][idx].T)
        graph = low_rank_graph(dino_kk[j], h['svd_q'], h['svd_niter'], stretch=stretch)
        assert (graph - expected.fill_diagonal_(0)).abs().max() < 1e-12


def test_crop_attention_logits_and_text(fx, crop0):
    golden, model = fx['crop0'], crop0['model']
    torch.manual_seed(fx['svd_seed'])
    with torch.no_grad():
        attn = model.distilled_attention(crop0['keys'][None], crop0['dino_keys'][None],
                                         crop0['grid'])[0]
        assert (attn - golden['attn']).abs().max() < 1e-12
        out = model.clip.out_proj((attn @ crop0['values'])[None])[0]
        assert (out - golden['attn_output']).abs().max() < 1e-12
        context = model.image_context(model_input(fx)[0])
        if context is None:   # the global prior from the crop itself (Cityscapes)
            context = model.global_similarity(crop0['tokens'])
        assert (context[0] - golden['global_clip_sim']).abs().max() < 1e-12
        torch.manual_seed(fx['svd_seed'])
        logits = model.crop_logits(crop0['crop'], context)[0]
    expected = F.interpolate(golden['logits'][None], size=crop0['crop'].shape[-2:],
                             mode='bilinear', align_corners=False)[0]
    assert (logits - expected).abs().max() < 1e-12


def test_fsa_on_cass_uses_the_adjusted_text_and_per_head_attention(fx, crop0):
    """(i) text adjusted from the features before FSA, (ii) FSA on the per-head attention and
    values with feedback logits against that text (no global mix), (iii) logits with it."""
    golden, h = fx['crop0'], fx['hparams']
    fsa = dict(lamda=2.5, top_p=0.5)
    model = with_official_omega(build(fx, plugin=dict(type='FSA', **fsa)), fx)
    with torch.no_grad():
        context = model.image_context(model_input(fx)[0])
        torch.manual_seed(fx['svd_seed'])
        logits = model.crop_logits(crop0['crop'], context)[0]
    clip, text, size = model.clip, golden['adjusted_text'], crop0['crop'].shape[-2:]

    def features(heads):
        tokens = clip.head(clip.out_proj(heads))
        return tokens / tokens.norm(dim=-1, keepdim=True)

    attended = reference_fsa(**fsa)(golden['attn'][None], golden['values'][None],
                                     lambda heads: features(heads) @ text.T)
    gamma = h['global_semantics_weight']
    expected = (features(attended)[0] @ text.T) * (1 - gamma) + golden['global_clip_sim'] * gamma
    expected = F.interpolate(expected.T.reshape(1, -1, *crop0['grid']), size=size,
                             mode='bilinear', align_corners=False)[0]
    assert (logits - expected).abs().max() < 1e-12
    plain = F.interpolate(golden['logits'][None], size=size, mode='bilinear')[0]
    assert (logits - plain).abs().max() > 1e-3   # FSA did change the crop


@pytest.fixture(scope='module')
def tiny_fx():
    return torch.load(FIXTURES / 'cass_tiny.pt', weights_only=False)


def test_batch_and_seed_handling(tiny_fx):
    """Each image seeds its own draws: a batch equals the images alone, and the caller's RNG
    state is left as it was."""
    fx = tiny_fx
    model = build(fx, test_cfg=dict(mode='slide', crop_size=(160, 160), stride=(120, 120)))
    x = model_input(fx)[:, :, :200, :300]
    pair = torch.cat([x, x.flip(-1)])
    meta = dict(img_shape=(200, 300), ori_shape=(200, 300))
    state = torch.get_rng_state()
    both = model.predict(pair, [SegDataSample(metainfo=meta) for _ in range(2)])
    assert torch.equal(torch.get_rng_state(), state)
    for image, result in zip(pair, both):
        alone = predict(model, image[None])
        assert torch.equal(alone.seg_logits.data, result.seg_logits.data)


def test_small_crops_and_mismatched_models_are_refused(tiny_fx):
    fx = tiny_fx
    model = build(fx, test_cfg=dict(mode='whole'))
    with pytest.raises(ValueError, match='at least 10 patches'):
        predict(model, model_input(fx)[:, :, :40, :40])   # a 2x2 patch grid
    with pytest.raises(ValueError, match='DINO width'):
        build(fx, vfm=dict(type='TimmVFM', name='dino_vitb8', random_init=True,
                           model_kwargs=dict(img_size=160, embed_dim=32, depth=1, num_heads=2)))
    # a slide crop of fewer patches than the SVD's rank: refused as the model is built (the
    # CLIs say it in one line), 4 × 4 patches built
    patch = fx['clip_cfg']['patch']
    slide = dict(mode='slide', stride=(patch, patch))
    assert model.min_crop_patches == model.svd_q == 10
    refusal = (rf"CASS needs crops of at least 10 of CLIP's {patch}x{patch} patches; the crop "
               rf"\({4 * patch}, {2 * patch}\) holds 4x2 \(the smallest square crop: {4 * patch}\)")
    with pytest.raises(ValueError, match=refusal):
        build(fx, test_cfg=dict(slide, crop_size=(4 * patch, 2 * patch)))
    assert build(fx, test_cfg=dict(slide, crop_size=(4 * patch,) * 2)).svd_q == 10
