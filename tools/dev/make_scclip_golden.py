"""Golden outputs of the official SC-CLIP code on a tiny random CLIP, in float64 on CPU.

Not run in CI. Writes tests/fixtures/scclip_tiny.pt (keys: tests/fixtures/README.md; algorithm:
docs/specs/scclip.md). Usage, from the repository root:

    git --git-dir=<mirror of SuleBai/SC-CLIP> archive 0417ba9 | tar -x -C /tmp/scclip
    PYTHONPATH=$PWD python tools/dev/make_scclip_golden.py /tmp/scclip --commit 0417ba9

The official code (SuleBai/SC-CLIP @ 0417ba9: `scclip_segmentor.py`, `clip/model.py`) is imported
from that checkout and run as is, with these in-memory shims only:
  * `pkg_resources` (gone from setuptools) provides `packaging` to OpenAI's clip.py;
  * the vendored `LayerNorm` computes in the input dtype (the original always uses float32);
  * `clip.load` returns the official `VisionTransformer` with tiny random weights (12 layers, so
    the official layer indices 8/3/3..10 apply unchanged), and `clip.tokenize`/`encode_text`
    return fixed unit text embeddings, one per name, the same for all 80 templates.
Intermediates are read by wrapping official functions (`Recorder`), never by recomputing them.
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _golden_common import (  # noqa: E402
    CLASS_NAMES,
    CLIP_CFG,
    CROP,
    ORI_HW,
    QUERY_IDX,
    STRIDE,
    Recorder,
    custom_attn_calls,
    data_sample,
    import_official_clip,
    install_tiny_clip,
    parse_generator_args,
    region_text_features,
    save_fixture,
    tiny_fixture_header,
    tiny_scene,
)

OFFICIAL, COMMIT = 'SuleBai/SC-CLIP', '0417ba92851e9dd7432d608f10a0804d01a23062'
# SC-CLIP's ViT-B/16 settings (base_config.py); the tiny model has 12 layers like B/16.
MODEL_HP = dict(pre_adjust_idx=8, post_adjust_idx=3, multi_start_idx=3, multi_end_idx=10,
                res_cls=0.3)
# Postprocess settings of the official configs (everything else is shared by all benchmarks).
# context60 (prob_thd 0.15) and coco_object (logit_scale 55, prob_thd 0.35) are left out: on this
# tiny model the first never triggers (6 names: max prob > 1/6) and the second zeroes every pixel.
POST_HP = {
    'default': dict(logit_scale=40, prob_thd=0.0, area_thd=None),  # ade20k, city, c59, stuff, voc20
    'voc21': dict(logit_scale=50, prob_thd=0.15, area_thd=0.1),
}


def build(seg_mod, clip_mod, model_mod, state_dict, text, name_path, dtype=torch.float64):
    install_tiny_clip(clip_mod, model_mod, state_dict, text, dtype)
    model = seg_mod.SCCLIPForSegmentation(
        clip_path='tiny', name_path=name_path, device=torch.device('cpu'),
        slide_crop=CROP, slide_stride=STRIDE, **MODEL_HP, **POST_HP['voc21'])
    return model.eval()


def run(model, model_mod, inputs):
    """One official predict() with every recorder on; returns the records."""
    visual = model.net.visual
    blocks = []
    hooks = [b.register_forward_hook(lambda m, i, o: blocks.append(o.detach().clone()))
             for b in visual.transformer.resblocks]

    def describe(args, kwargs, bmm_args, out):  # the official call: (attn_layer, x, mid_simi=)
        (k, _), (attn, v) = bmm_args
        return dict(x=args[1].clone(), mid_simi=kwargs['mid_simi'].clone(), k=k, attn=attn, v=v,
                    out=out.clone())

    try:
        with custom_attn_calls(visual, describe) as attn_calls, \
                Recorder(model_mod, 'lof_pytorch') as lof, \
                Recorder(visual, 'mean_interpolation') as mean_interp, \
                Recorder(visual, 'adaptively_aggregate') as aggregate, \
                Recorder(visual, 'forward') as visual_fwd, \
                Recorder(torch.nn.functional, 'interpolate') as interp:
            with torch.no_grad():
                out = model.predict(inputs, [data_sample(ORI_HW)])
    finally:
        for h in hooks:
            h.remove()
    return dict(blocks=blocks, attn=attn_calls, lof=lof.calls, mean_interp=mean_interp.calls,
                aggregate=aggregate.calls, visual=visual_fwd.calls, interp=interp.calls,
                out=out[0])


def crop_records(rec, crop: int, n_layers: int):
    """The official intermediates of one crop (calls are sequential, a fixed number per crop)."""
    sq = lambda t: t.squeeze(1) if t.dim() == 3 and t.shape[1] == 1 else t  # noqa: E731
    blocks = rec['blocks'][crop * (n_layers - 1):(crop + 1) * (n_layers - 1)]
    lof = rec['lof'][crop]
    mi = rec['mean_interp'][2 * crop:2 * crop + 2]
    ag = rec['aggregate'][3 * crop:3 * crop + 3]
    main, multi = rec['attn'][2 * crop:2 * crop + 2]
    outliers, scores = lof['out']
    scores_f32 = scores.to(torch.float32)
    return {
        'layer_outputs': torch.stack([sq(b) for b in blocks]),
        'lof_scores': scores.clone(),
        'lof_threshold': torch.quantile(scores_f32, 0.95).item(),
        'outliers': outliers.clone(),
        'x_penult_fixed': mi[0]['out'][0].flatten(1).t().clone(),
        'mid_simi': main['mid_simi'][0].clone(),
        'x_agg': sq(ag[0]['out']).clone(),
        'main.k': main['k'].clone(), 'main.v': main['v'].clone(),
        'main.attn': main['attn'].clone(), 'main.out': sq(main['out']).clone(),
        'after_simi': ag[1]['args'][1][0].clone(),
        'x_main': sq(ag[1]['out']).clone(),
        'multi.k': multi['k'].clone(), 'multi.v': multi['v'].clone(),
        'multi.attn': multi['attn'].clone(), 'multi.out': sq(multi['out']).clone(),
        'x_multi': sq(ag[2]['out']).clone(),
        'features': rec['visual'][crop]['out'][0].clone(),
    }


def main():
    args = parse_generator_args(__doc__, OFFICIAL, COMMIT, 'tests/fixtures/scclip_tiny.pt')
    clip_mod, model_mod, seg_mod = import_official_clip(args.repo, 'scclip_segmentor')

    scene = tiny_scene()
    state_dict, inputs, name_path, boxes = (
        scene.state_dict, scene.inputs, scene.name_path, scene.boxes)

    # Text embeddings correlated with the regions: prototypes from a first run with any text
    # (SC-CLIP's image features do not depend on the text).
    rec = run(build(seg_mod, clip_mod, model_mod, state_dict, scene.probe, name_path), model_mod,
              inputs)
    feats = torch.stack([r['out'][0] for r in rec['visual']])
    text = region_text_features(scene, list(feats), boxes, feats.mean(1))

    model = build(seg_mod, clip_mod, model_mod, state_dict, text, name_path)
    rec = run(model, model_mod, inputs)
    n_layers = CLIP_CFG['layers']
    n_crops = len(boxes)
    assert len(rec['visual']) == n_crops and len(rec['lof']) == n_crops
    # interpolate calls: one logits upsampling per crop, then the resize to ori_shape.
    assert len(rec['interp']) == n_crops + 1
    crop_logits = torch.stack([c['args'][0][0] for c in rec['interp'][:n_crops]])
    slide_logits = rec['interp'][-1]['args'][0][0]
    final_logits = rec['interp'][-1]['out'][0]

    preds, probs = {}, {}
    for bench, hp in POST_HP.items():
        for k, v in hp.items():
            setattr(model, k, v)
        ds = model.postprocess_result(final_logits[None].clone(), [data_sample(ORI_HW)])[0]
        preds[bench] = ds.pred_sem_seg.data[0].to(torch.uint8)
        probs[bench] = ds.seg_logits.data
    assert torch.equal(preds['voc21'], rec['out'].pred_sem_seg.data[0].to(torch.uint8))

    sub = 4
    fixture = {
        **tiny_fixture_header(f'{OFFICIAL}@{COMMIT}', scene),
        'text_features': model.query_features.clone(),
        'hparams': dict(MODEL_HP, slide_crop=CROP, slide_stride=STRIDE, beta=0.4,
                        lof_neighbors=30, lof_contamination=0.05),
        'post_hparams': POST_HP,
        'crop0': crop_records(rec, 0, n_layers),
        'crop_boxes': torch.tensor(boxes),
        'crop_outliers': [rec['lof'][i]['out'][0].clone() for i in range(n_crops)],
        'crop_logits': crop_logits,
        'slide_logits_sub': slide_logits[:, ::sub, ::sub].clone(),
        'subsample': sub,
        'final_logits_sub': final_logits[:, ::2 * sub, ::2 * sub].clone(),
        'preds': preds,
    }
    c0 = fixture['crop0']
    c0['logits'] = crop_logits[0].clone()

    # Margins of the discrete steps (how far a float64 re-implementation is from a flip).
    margins = {}
    scores = torch.stack([rec['lof'][i]['out'][1] for i in range(n_crops)])
    thr = torch.stack([torch.quantile(s.float(), 0.95) for s in scores]).double()
    margins['lof_score_minus_threshold'] = (scores - thr[:, None]).abs().min().item()
    top2 = probs['default'].topk(2, dim=0).values
    margins['pred_top2_gap_default'] = (top2[0] - top2[1]).min().item()
    fixture['margins'] = margins
    fixture['stats'] = dict(n_outliers=[len(o) for o in fixture['crop_outliers']])
    # share of pixels whose predicted class equals the scene's class (region r -> class idx[r])
    scene_cls = torch.tensor(QUERY_IDX)[torch.nn.functional.interpolate(
        scene.regions[None, None].double(), size=ORI_HW, mode='nearest')[0, 0].long()]
    fixture['stats']['pred_region_agreement'] = {
        b: (p.long() == scene_cls).double().mean().item() for b, p in preds.items()}
    fixture['stats']['pred_class_share'] = {
        b: torch.bincount(p.long().flatten(), minlength=len(CLASS_NAMES)).tolist()
        for b, p in preds.items()}

    # The official code's own spread: a float64 rerun, and the whole run in float32.
    again = run(build(seg_mod, clip_mod, model_mod, state_dict, text, name_path), model_mod,
                inputs)
    f32 = run(build(seg_mod, clip_mod, model_mod, state_dict, text, name_path, torch.float32),
              model_mod, inputs.float())
    slide32 = f32['interp'][-1]['args'][0][0].double()
    slide_again = again['interp'][-1]['args'][0][0]
    fixture['noise'] = dict(
        rerun_float64_max_diff=(slide_again - slide_logits).abs().max().item(),
        float32_slide_logits_max_diff=(slide32 - slide_logits).abs().max().item(),
        float32_outliers_changed=sum(not torch.equal(a['out'][0], b['out'][0])
                                     for a, b in zip(f32['lof'], rec['lof'])),
        float32_pred_flips_voc21=int((f32['out'].pred_sem_seg.data[0].to(torch.uint8)
                                      != preds['voc21']).sum()),
        slide_logits_range=(slide_logits.max() - slide_logits.min()).item())
    print('noise', fixture['noise'])

    save_fixture(fixture, args.out)
    spread = (crop_logits.max(1).values - crop_logits.min(1).values).mean().item()
    f = fixture['crop0']['features']
    f = f / f.norm(dim=-1, keepdim=True)
    print(f'logit spread over names {spread:.4f}, min patch-feature cosine {(f @ f.t()).min():.3f},'
          f' main attn row max {fixture["crop0"]["main.attn"].max(-1).values.mean():.3f}')
    print('margins', margins)
    print('stats', fixture['stats'])


if __name__ == '__main__':
    main()
