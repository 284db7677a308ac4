"""SC-CLIP against golden outputs of the official code (tests/fixtures/scclip_tiny.pt, README
there; algorithm in docs/specs/scclip.md): every per-crop intermediate, the slide inference and
both official post-processings; its steps by hand; other grids and FSA against references
written here from the spec."""
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from mmseg.structures import SegDataSample

from fsa_seg.models.segmentors.scclip import (
    aggregate,
    cosine_similarities,
    local_outliers,
    repair_outliers,
    similarity_attention,
    suppress_small_areas,
)

from golden_fixtures import build_with_fixture_weights, model_input, tiny_clip_cfg
from references import reference_fsa

FIXTURE = Path(__file__).resolve().parents[2] / 'fixtures' / 'scclip_tiny.pt'
TOL = 1e-12
FSA_CFG = dict(type='FSA', lamda=3.0, top_p=0.45, logit_scales=(20.0, 35.0))


@pytest.fixture(scope='module')
def fx():
    return torch.load(FIXTURE, weights_only=False)


def build(fx, **overrides):
    """SCCLIP with the fixture's weights, text and official settings (B/16 layer indices)."""
    h = fx['hparams']
    cfg = dict(
        type='SCCLIP', clip=tiny_clip_cfg(fx),
        vocabulary=fx['class_names'], templates='plain', text_cache_dir=False,
        test_cfg=dict(mode='slide', crop_size=(h['slide_crop'],) * 2,
                      stride=(h['slide_stride'],) * 2),
        pre_adjust_idx=h['pre_adjust_idx'], post_adjust_idx=h['post_adjust_idx'],
        multi_start_idx=h['multi_start_idx'], multi_end_idx=h['multi_end_idx'],
        res_cls=h['res_cls'], beta=h['beta'], lof_neighbors=h['lof_neighbors'],
        lof_contamination=h['lof_contamination'])
    cfg.update(overrides)
    return build_with_fixture_weights(cfg, fx)


def all_crops(fx):
    image = model_input(fx)
    return torch.cat([image[:, :, y1:y2, x1:x2] for y1, y2, x1, x2 in fx['crop_boxes'].tolist()])


def max_error(a, b):
    return (a - b).abs().max().item()


@pytest.fixture(scope='module')
def crop0(fx):
    """Our first crop through the trunk and each SC-CLIP step, on our own previous outputs."""
    model = build(fx)
    h = fx['hparams']
    with torch.no_grad():
        tokens, grid, outputs = model.clip.forward_to_last_block(all_crops(fx)[:1],
                                                                 return_intermediates=True)
        lof = local_outliers(tokens[:, 1:], h['lof_neighbors'], h['lof_contamination'])
        fixed = repair_outliers(tokens[:, 1:], lof.mask, grid)
        similarity = cosine_similarities(
            repair_outliers(outputs[h['pre_adjust_idx']][:, 1:], lof.mask, grid))
        x_agg = aggregate(fixed, model.thresholded(similarity))
        after = model.thresholded(cosine_similarities(outputs[h['post_adjust_idx']][:, 1:]))
    return dict(model=model, tokens=tokens, grid=grid, outputs=outputs, lof=lof, fixed=fixed,
                similarity=similarity, x_agg=x_agg, after=after,
                shared=similarity_attention(similarity))


# ------------------------------------------------------------------ golden: per crop
def test_trunk_gives_the_official_block_outputs(fx, crop0):
    assert crop0['grid'] == (6, 6) and len(crop0['outputs']) == 11
    stacked = torch.stack(crop0['outputs'])[:, 0]
    assert max_error(stacked, fx['crop0']['layer_outputs']) < TOL   # values up to ~80


def test_outliers_are_the_official_lof_set(fx, crop0):
    golden, lof = fx['crop0'], crop0['lof']
    assert max_error(lof.scores[0], golden['lof_scores']) < TOL
    assert lof.threshold.dtype == torch.float32
    assert lof.threshold.item() == golden['lof_threshold']    # float32 quantile, bit for bit
    assert lof.mask[0].nonzero().flatten().tolist() == golden['outliers'].tolist()


def test_outliers_of_every_crop_in_one_batch(fx):
    model = build(fx)
    with torch.no_grad():
        tokens, _ = model.clip.forward_to_last_block(all_crops(fx))
    mask = local_outliers(tokens[:, 1:]).mask
    assert [m.nonzero().flatten().tolist() for m in mask] == \
        [o.tolist() for o in fx['crop_outliers']]


def test_repair_similarities_and_first_aggregation(fx, crop0):
    golden = fx['crop0']
    assert max_error(crop0['fixed'][0], golden['x_penult_fixed']) < TOL
    assert max_error(crop0['similarity'][0], golden['mid_simi']) < TOL
    assert max_error(crop0['x_agg'][0], golden['x_agg']) < TOL
    assert max_error(crop0['after'][0], golden['after_simi']) < TOL


@pytest.mark.parametrize('branch', ['main', 'multi'])
def test_last_block_branches(fx, crop0, branch):
    golden, model, h = fx['crop0'], crop0['model'], fx['hparams']
    outputs = crop0['outputs']
    if branch == 'main':
        tokens, cls = crop0['x_agg'], crop0['tokens'][:, :1]
    else:
        levels = sum(outputs[h['multi_start_idx']:h['multi_end_idx']])
        tokens, cls = levels[:, 1:], levels[:, :1]
    with torch.no_grad():
        _, keys, values = model.clip.qkv(tokens)
        attn = model.branch_attention(keys, crop0['shared'])
        out = model.last_block_branch(tokens, crop0['shared'], crop0['grid'])
    assert max_error(keys[0], golden[f'{branch}.k']) < TOL
    assert max_error(values[0], golden[f'{branch}.v']) < TOL
    assert max_error(attn[0], golden[f'{branch}.attn']) < TOL
    assert max_error(out[0], golden[f'{branch}.out']) < TOL
    fused = aggregate(out + h['res_cls'] * cls, crop0['after'])
    assert max_error(fused[0], golden[f'x_{branch}']) < TOL


def test_crop_features_and_logits(fx):
    model = build(fx)
    with torch.no_grad():
        features, grid = model.crop_features(all_crops(fx)[:1])
        logits = model.cosine_logits(model.encode_crops(all_crops(fx)))
    assert grid == (6, 6)
    assert max_error(features[0], fx['crop0']['features']) < TOL
    assert max_error(logits[0], fx['crop0']['logits']) < TOL
    assert max_error(logits, fx['crop_logits']) < TOL                 # 8 crops in one batch


# ------------------------------------------------------------------ golden: slide inference
def expected_probabilities(logits, fx, logit_scale):
    """Softmax of logit_scale × logits over the names, max over each class's names."""
    probs = (logits * logit_scale).softmax(0)
    index = fx['query_idx']
    return torch.stack([probs[index == c].max(0).values for c in range(int(index.max()) + 1)])


def predict(model, fx):
    x = model_input(fx)
    meta = dict(img_shape=tuple(x.shape[-2:]), ori_shape=tuple(fx['ori_shape']))
    return model.predict(x, [SegDataSample(metainfo=meta)])[0]


def test_slide_logits(fx):
    model = build(fx)
    with torch.no_grad():
        logits = model.inference_logits(model_input(fx)[0])
    s = fx['subsample']
    assert max_error(logits[:, ::s, ::s], fx['slide_logits_sub']) < TOL


def test_default_postprocessing(fx):
    post = fx['post_hparams']['default']
    out = predict(build(fx, logit_scale=post['logit_scale'], prob_thd=post['prob_thd']), fx)
    s = 2 * fx['subsample']
    expected = expected_probabilities(fx['final_logits_sub'], fx, post['logit_scale'])
    assert max_error(out.seg_logits.data[:, ::s, ::s], expected) < TOL
    assert torch.equal(out.pred_sem_seg.data[0].to(torch.uint8), fx['preds']['default'])


def test_voc21_postprocessing_with_area_threshold(fx):
    """logit_scale 50, prob_thd 0.15, area_thd 0.1. The areas are those of the argmax, which
    does not depend on the scale: from the default prediction, class 2 wins 772 of the 10663
    pixels won by classes ≥ 1, below 10%, so its probability becomes 0."""
    post = fx['post_hparams']['voc21']
    out = predict(build(fx, logit_scale=post['logit_scale'], prob_thd=post['prob_thd'],
                        area_thd=post['area_thd']), fx)
    areas = torch.bincount(fx['preds']['default'].flatten().long(), minlength=5)
    removed = areas[1:] <= post['area_thd'] * areas[1:].sum()
    assert removed.tolist() == [False, True, False, False]
    s = 2 * fx['subsample']
    expected = expected_probabilities(fx['final_logits_sub'], fx, post['logit_scale'])
    expected[1:][removed] = 0
    assert max_error(out.seg_logits.data[:, ::s, ::s], expected) < TOL
    assert torch.equal(out.pred_sem_seg.data[0].to(torch.uint8), fx['preds']['voc21'])


# ------------------------------------------------------------------ steps by hand
def test_lof_by_hand():
    """Points 0, 1, 2, 3, 10 on a line, k = 2. Squared distances give k-distances 4, 1, 1, 4, 64;
    with the query's own k-distance as reach distance lrd = 2 / k-distance = 1/2, 2, 2, 1/2,
    1/32 and LOF = mean of the neighbours' lrd / own lrd = 4, 5/8, 5/8, 4, 40 (the textbook
    LOF would give 3.2 for the point 0). The 0.75-quantile of the scores is 4."""
    points = torch.tensor([0., 1., 2., 3., 10.], dtype=torch.float64).view(1, 5, 1)
    lof = local_outliers(points, neighbors=2, contamination=0.25)
    assert lof.scores[0].tolist() == [4.0, 0.625, 0.625, 4.0, 40.0]
    assert lof.threshold.item() == 4.0
    assert lof.mask[0].tolist() == [False, False, False, False, True]


def test_lof_needs_more_patches_than_neighbours():
    with pytest.raises(ValueError, match='more than 30 patches per crop'):
        local_outliers(torch.randn(1, 30, 4))


def test_the_fewest_patches_a_crop_may_have_are_what_the_outliers_detection_takes(fx):
    """``min_crop_patches`` (the crop benchmark's warm-up takes it) is one more patch than the
    outlier detection's neighbours: the fewest it runs on."""
    model = build(fx, lof_neighbors=8)
    assert model.min_crop_patches == 9
    local_outliers(torch.randn(1, 9, 4), neighbors=8)
    with pytest.raises(ValueError, match='more than 8 patches per crop'):
        local_outliers(torch.randn(1, 8, 4), neighbors=8)
    # a slide crop of fewer is refused as the model is built; 3 × 3 patches are built
    patch = model.clip.patch_size[0]
    slide = dict(mode='slide', stride=(patch, patch))
    with pytest.raises(ValueError, match=r'SCCLIP needs crops of at least 9 .* holds 2x4'):
        build(fx, lof_neighbors=8, test_cfg=dict(slide, crop_size=(2 * patch, 4 * patch)))
    build(fx, lof_neighbors=8, test_cfg=dict(slide, crop_size=(3 * patch, 3 * patch)))


def test_repair_by_hand():
    """A 4×4 grid of values 0 … 15 with outliers at 0 (a corner) and 5 (next to it): 0 gets
    the mean of 1 and 4 (5 is an outlier, outside the grid counts for nothing), 5 the mean of
    its 7 other neighbours; an outlier whose neighbours are all outliers keeps its value."""
    tokens = torch.arange(16, dtype=torch.float64).view(1, 16, 1)
    outliers = torch.zeros(1, 16, dtype=torch.bool)
    outliers[0, [0, 5]] = True
    repaired = repair_outliers(tokens, outliers, (4, 4))[0, :, 0]
    expected = torch.arange(16, dtype=torch.float64)
    expected[0] = (1 + 4) / 2
    expected[5] = (1 + 2 + 4 + 6 + 8 + 9 + 10) / 7
    assert torch.equal(repaired, expected)
    # non-square grid (2×3): the row-major layout of the patches
    tokens = torch.arange(6, dtype=torch.float64).view(1, 6, 1)
    outliers = torch.tensor([[False, False, True, False, False, False]])
    assert repair_outliers(tokens, outliers, (2, 3))[0, 2, 0] == (1 + 4 + 5) / 3
    everything = torch.ones(1, 4, dtype=torch.bool)
    assert torch.equal(repair_outliers(tokens[:, :4], everything, (2, 2)), tokens[:, :4])


def test_shared_attention_by_hand():
    """softmax(3·(S − mean S)) per row, entries below 0 masked (mean S = 0.775 here)."""
    sim = torch.tensor([[[1.0, 0.9], [0.2, 1.0]]], dtype=torch.float64)
    attn = similarity_attention(sim)
    assert attn.shape == (1, 1, 2, 2)
    expected = torch.tensor([[3 * 0.225, 3 * 0.125], [-math.inf, 3 * 0.225]],
                            dtype=torch.float64).softmax(-1)
    assert max_error(attn[0, 0], expected) < 1e-15


def test_area_threshold_by_hand():
    """Class 0 (background) is never removed; class 1 wins 1 of the 9 pixels of classes ≥ 1
    (11% > 10%: kept), class 2 wins 8; with 0.2, class 1 is removed."""
    winners = torch.tensor([[0, 0, 0, 1, 2], [2, 2, 2, 2, 2], [2, 2, 0, 0, 0]])
    probs = F.one_hot(winners, 3).permute(2, 0, 1).double() * 0.5 + 0.1
    kept = suppress_small_areas(probs.clone(), 0.1)
    assert torch.equal(kept, probs)
    removed = suppress_small_areas(probs.clone(), 0.2)
    assert torch.equal(removed[1], torch.zeros_like(probs[1]))
    assert torch.equal(removed[[0, 2]], probs[[0, 2]])


# ------------------------------------------------------------------ options
def test_layer_indices_are_checked_against_the_depth(fx):
    with pytest.raises(ValueError, match='pre_adjust_idx must index a block before the last'):
        build(fx, pre_adjust_idx=11)
    with pytest.raises(ValueError, match='multi_start_idx < multi_end_idx <= 11'):
        build(fx, multi_end_idx=12)


def test_official_outlier_positions_refuse_non_square_grids(fx):
    model = build(fx)
    crop = model_input(fx)[:, :, :48, :72]
    with pytest.raises(ValueError, match='only right on square patch grids, this crop has 6x9'):
        model.encode_crops(crop)


# ------------------------------------------------------------------ other grids, FSA
def logits_fn_from_weights(fx):
    """FSA's feedback of the contract, from the fixture's weights and text: cos(ln_post(
    out_proj(heads)) @ proj, text)."""
    w = {k: v.double() for k, v in fx['clip_state_dict'].items()}
    block = 'transformer.resblocks.11.attn.out_proj.'

    def logits_fn(heads):
        merged = heads.transpose(1, 2).flatten(2)
        out = merged @ w[block + 'weight'].t() + w[block + 'bias']
        out = F.layer_norm(out, out.shape[-1:], w['ln_post.weight'], w['ln_post.bias'], 1e-5)
        return F.normalize(out @ w['proj'], dim=-1) @ fx['text_features'].t()
    return logits_fn


def reference_crop_features(fx, outputs, grid, plugin=None, correct_positions=False):
    """SC-CLIP's features (N, D) of one crop from the trunk outputs f_0 … f_10 (T, C) each,
    written from docs/specs/scclip.md with plain ops and loops; ``plugin(attn, v, logits_fn)``
    replaces A·V in both branches."""
    h = fx['hparams']
    w = {k: v.double() for k, v in fx['clip_state_dict'].items()}
    last = 'transformer.resblocks.11.'
    rows, cols = grid
    penult = outputs[-1]

    # LOF: squared distances, k nearest by a full sort, reach = the query's k-distance
    k = h['lof_neighbors']
    patches = penult[1:]
    dist = ((patches[:, None] - patches[None]) ** 2).sum(-1)
    order = dist.argsort(dim=1, stable=True)[:, 1:k + 1]
    kdist = dist.gather(1, order)[:, -1]
    lrd = k / kdist
    scores = torch.stack([lrd[order[i]].mean() / lrd[i] for i in range(len(lrd))])
    threshold = torch.quantile(scores.float(), 1 - h['lof_contamination'])
    outliers = [i for i in range(len(scores)) if scores[i] > threshold.double()]
    divisor = cols if correct_positions else rows
    bad = {(i // divisor, i % divisor) for i in outliers}

    def repair(tokens):
        out = tokens.clone()
        for r, c in bad:
            near = [tokens[rr * cols + cc] for rr in range(r - 1, r + 2)
                    for cc in range(c - 1, c + 2)
                    if (rr, cc) != (r, c) and 0 <= rr < rows and 0 <= cc < cols
                    and (rr, cc) not in bad]
            if near:
                out[r * cols + c] = sum(near) / len(near)
        return out

    def gram(tokens):
        unit = tokens / tokens.norm(dim=-1, keepdim=True)
        return unit @ unit.t()

    def agg(x, weights):
        return (weights / (weights.sum(-1, keepdim=True) + 1e-6)) @ x

    def branch(tokens, sim):
        x = F.layer_norm(tokens, tokens.shape[-1:], w[last + 'ln_1.weight'],
                         w[last + 'ln_1.bias'], 1e-5)
        q, kk, v = (x @ w[last + 'attn.in_proj_weight'].t()
                    + w[last + 'attn.in_proj_bias']).chunk(3, dim=-1)
        heads = fx['clip_cfg']['heads']
        kk, v = (t.view(-1, heads, t.shape[-1] // heads).transpose(0, 1) for t in (kk, v))
        m = 3.0 * (sim - sim.mean())
        m[m < 0] = -math.inf
        attn = (m.softmax(-1) + (kk @ kk.transpose(1, 2) / math.sqrt(kk.shape[-1])).softmax(-1)) / 2
        out = attn @ v if plugin is None else \
            plugin(attn[None], v[None], logits_fn_from_weights(fx))[0]
        merged = out.transpose(0, 1).reshape(len(tokens), -1)
        return merged @ w[last + 'attn.out_proj.weight'].t() + w[last + 'attn.out_proj.bias']

    sim = gram(repair(outputs[h['pre_adjust_idx']][1:]))
    before = torch.where(sim < h['beta'], 0.0, sim)
    after = gram(outputs[h['post_adjust_idx']][1:])
    after = torch.where(after < h['beta'], 0.0, after)
    x_main = agg(branch(agg(repair(penult[1:]), before), sim) + h['res_cls'] * penult[0], after)
    levels = torch.zeros_like(outputs[0])
    for i in range(h['multi_start_idx'], h['multi_end_idx']):
        levels = levels + outputs[i]
    x_multi = agg(branch(levels[1:], sim) + h['res_cls'] * levels[0], after)
    x = x_main + x_multi
    x = F.layer_norm(x, x.shape[-1:], w['ln_post.weight'], w['ln_post.bias'], 1e-5)
    return x @ w['proj']


@pytest.mark.parametrize('size, fsa', [((48, 48), True), ((64, 64), False), ((80, 80), True),
                                       ((72, 48), False), ((48, 80), True)])
def test_any_grid_against_the_reference(fx, size, fsa):
    """Native (6×6), interpolated (8×8, 10×10) and non-square grids (9×6, 6×10: the correct
    outlier positions), with and without FSA; two crops in one batch."""
    square = size[0] == size[1]
    model = build(fx, official_outlier_positions=square, plugin=FSA_CFG if fsa else None)
    image = F.interpolate(model_input(fx), size=(96, 100), mode='bilinear')
    crops = torch.cat([image[:, :, :size[0], :size[1]], image[:, :, -size[0]:, -size[1]:]])
    with torch.no_grad():
        features, grid = model.crop_features(crops)
        _, _, outputs = model.clip.forward_to_last_block(crops, return_intermediates=True)
    assert grid == (size[0] // 8, size[1] // 8)
    plugin = reference_fsa() if fsa else None
    for i in range(2):
        expected = reference_crop_features(fx, [o[i] for o in outputs], grid, plugin,
                                           correct_positions=not square)
        assert max_error(features[i], expected) < TOL


@pytest.mark.parametrize('branch', ['main', 'multi'])
def test_fsa_on_each_branch_equals_the_reference_fsa(fx, branch):
    """Our FSA with the segmentor's feedback, on the attention and values of the golden run,
    equals the official FSA formulation with a feedback built from the weights."""
    model = build(fx, plugin=FSA_CFG)
    golden = fx['crop0']
    attn, values = golden[f'{branch}.attn'][None], golden[f'{branch}.v'][None]
    with torch.no_grad():
        ours = model.apply_plugin(attn, values, attn @ values, (6, 6))
    expected = reference_fsa()(attn, values, logits_fn_from_weights(fx))
    assert max_error(ours, expected) < TOL
    assert max_error(ours, attn @ values) > 1e-3          # FSA changes the branch


def test_fsa_crop_equals_the_reference_composition(fx):
    """SC-CLIP + FSA on crop 0 from the golden tensors: FSA replaces A·V in both branches, the
    cls terms, aggregations and fusion follow unchanged."""
    golden, h = fx['crop0'], fx['hparams']
    w = {k: v.double() for k, v in fx['clip_state_dict'].items()}
    out_proj = 'transformer.resblocks.11.attn.out_proj.'
    outputs = golden['layer_outputs']
    levels = outputs[h['multi_start_idx']:h['multi_end_idx']].sum(0)
    cls = {'main': outputs[-1][0], 'multi': levels[0]}
    fused = 0
    for branch in ('main', 'multi'):
        attn, values = golden[f'{branch}.attn'][None], golden[f'{branch}.v'][None]
        attended = reference_fsa()(attn, values, logits_fn_from_weights(fx))[0]
        out = attended.transpose(0, 1).reshape(36, -1) @ w[out_proj + 'weight'].t() \
            + w[out_proj + 'bias']
        fused = fused + aggregate((out + h['res_cls'] * cls[branch])[None],
                                  golden['after_simi'][None])[0]
    fused = F.layer_norm(fused, (16,), w['ln_post.weight'], w['ln_post.bias'], 1e-5)
    expected = fused @ w['proj']
    with torch.no_grad():
        features, _ = build(fx, plugin=FSA_CFG).crop_features(all_crops(fx)[:1])
    assert max_error(features[0], expected) < TOL
    assert max_error(features[0], golden['features']) > 1e-3


# ------------------------------------------------------------------ configs
CONFIGS = FIXTURE.parents[2] / 'configs' / 'scclip'
# From the official configs: base_config.py and cfg_*.py @0417ba9 (ViT-B/16), the commented L/14
# blocks of 74471da. benchmark: (logit_scale, prob_thd, area_thd, short side)
OFFICIAL_B16 = {
    'voc21': (50.0, 0.15, 0.1, 336), 'context60': (40.0, 0.15, None, 336),
    'coco_object': (55.0, 0.35, None, 336), 'voc20': (40.0, 0.0, None, 336),
    'context59': (40.0, 0.0, None, 336), 'coco_stuff164k': (40.0, 0.0, None, 336),
    'cityscapes': (40.0, 0.0, None, 560), 'ade20k': (40.0, 0.0, None, 336),
}
OFFICIAL_L14 = dict(OFFICIAL_B16, voc21=(40.0, 0.2, 0.1, 336),
                    coco_object=(40.0, 0.25, None, 336))
LAYERS = {'vit-b16': (8, 3, 3, 10, 0.3), 'vit-l14': (16, 6, 8, 19, 0.1)}


@pytest.mark.parametrize('backbone', ['vit-b16', 'vit-l14'])
@pytest.mark.parametrize('dataset', list(OFFICIAL_B16))
def test_configs_carry_the_official_settings(backbone, dataset):
    from mmengine import Config
    official = OFFICIAL_B16 if backbone == 'vit-b16' else OFFICIAL_L14
    logit_scale, prob_thd, area_thd, short_side = official[dataset]
    cfg = Config.fromfile(str(CONFIGS / f'scclip_{backbone}_{dataset}.py'))
    model = cfg.model
    assert model.type == 'SCCLIP' and model.templates == 'openai_imagenet'
    assert (model.pre_adjust_idx, model.post_adjust_idx, model.multi_start_idx,
            model.multi_end_idx, model.res_cls) == LAYERS[backbone]
    assert (model.logit_scale, model.prob_thd, model.get('area_thd')) == \
        (logit_scale, prob_thd, area_thd)
    assert model.test_cfg == dict(mode='slide', crop_size=(224, 224), stride=(112, 112))
    assert model.vocabulary == ('cass_coco_object' if dataset == 'coco_object' else dataset)
    resize = [t for t in cfg.test_dataloader.dataset.pipeline if t.type == 'Resize'][0]
    assert resize.scale == (2048, short_side)
    with_fsa = Config.fromfile(str(CONFIGS / f'scclip_fsa_{backbone}_{dataset}.py')).model
    assert with_fsa.plugin == dict(type='FSA', top_p=0.45, logit_scales=(20.0, 35.0), lamda=3.0)
    assert not model.get('plugin')
    assert {k: v for k, v in with_fsa.items() if k != 'plugin'} == \
        {k: v for k, v in model.items() if k != 'plugin'}
