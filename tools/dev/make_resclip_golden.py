"""Golden outputs of the official ResCLIP code on a tiny random CLIP, in float64 on CPU.

Not run in CI. Writes tests/fixtures/resclip_tiny.pt (keys: tests/fixtures/README.md; algorithm:
docs/specs/resclip.md). Usage, from the repository root:

    git --git-dir=<mirror of yvhangyang/ResCLIP> archive 0e085f7 | tar -x -C /tmp/resclip
    PYTHONPATH=$PWD python tools/dev/make_resclip_golden.py /tmp/resclip --commit 0e085f7

The official code (yvhangyang/ResCLIP @ 0e085f7: `resclip_segmentor.py`, `clip/model.py`,
`pamr.py`) is imported from that checkout and run as is, in its default configuration
(arch='wo_resi', attn_strategy='resclip', gaussian_std=5, RCS and SFR on), with these in-memory
shims only:
  * `pkg_resources` (gone from setuptools) provides `packaging` to OpenAI's clip.py;
  * the vendored `LayerNorm` computes in the input dtype (the original always uses float32);
  * `Tensor.cuda()` is a no-op (hard-coded in the SFR code), and the PAMR that SFR builds with
    `.to(torch.device('cuda'))` stays on CPU and is built and run with float64 as torch's default
    dtype, so its kernels and its `torch.empty` buffer are float64 (on CPU the official float32
    kernels make conv2d raise on a float64 input, which the official code catches and then
    silently skips PAMR);
  * `clip.load` returns the official `VisionTransformer` with tiny random weights (12 layers, so
    the hard-coded RCS layers 5..8 apply unchanged), and `clip.tokenize`/`encode_text` return
    fixed unit text embeddings, one per name, the same for all 80 templates.
The official explicit float32 steps (Ω, the SFR matrix, the path check) and the float16 cast of
the SFR matrix are kept. Intermediates are read by wrapping official functions (`Recorder`).
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _golden_common import (  # noqa: E402
    CLASS_NAMES,
    CLIP_CFG,
    CROP,
    IMAGE_HW,
    ORI_HW,
    QUERY_IDX,
    STRIDE,
    Recorder,
    cpu_cuda_shim,
    custom_attn_calls,
    data_sample,
    default_dtype,
    import_official_clip,
    install_tiny_clip,
    parse_generator_args,
    region_text_features,
    save_fixture,
    tiny_fixture_header,
    tiny_scene,
)

OFFICIAL, COMMIT = 'yvhangyang/ResCLIP', '0e085f7f52f06098b383599e9653cd28cc665a8c'
# The official per-benchmark settings (configs/cfg_*.py); model defaults: arch='wo_resi',
# attn_strategy='resclip', gaussian_std=5, logit_scale=40, pamr_steps=0, area_thd=None.
BENCHMARKS = {
    'context60': dict(prob_thd=0.1, temp_thd=0.30, attn_rcs_weights=[2.0, 0.3],
                      attn_sfr_weights=[1.8, 0.7], slide_crop=CROP, slide_stride=STRIDE),
    'voc20': dict(temp_thd=0.10, attn_rcs_weights=[2.0, 0.6], attn_sfr_weights=[2.1, 0.6],
                  slide_crop=0),
}
# voc21 (whole image, temp_thd 0.5) is left out: on this tiny model its threshold sends 98% of
# the pixels to name 0, so every patch gets the same SFR label.
SLIDE, WHOLE = 'context60', 'voc20'


def make_pamr_shim(model_mod):
    """The SFR step's PAMR, kept on CPU and in the input's dtype (see the module docstring)."""
    official = model_mod.PAMR
    calls = []

    class CpuFloat64PAMR(official):
        def __init__(self, *args, **kwargs):
            with default_dtype(torch.float64):
                super().__init__(*args, **kwargs)

        def to(self, *args, **kwargs):  # `.to(torch.device('cuda'))`
            return self

        def forward(self, x, mask):
            torch.nn.Module.to(self, x.dtype)  # its kernels follow the input
            with default_dtype(x.dtype):
                out = super().forward(x, mask)
            calls.append(dict(x=x.clone(), mask=mask.clone(), out=out.clone(),
                              num_iter=self.num_iter, dilations=self.aff_x.dilations))
            return out

    model_mod.PAMR = CpuFloat64PAMR
    return calls


def build(seg_mod, clip_mod, model_mod, state_dict, text, name_path, bench,
          dtype=torch.float64):
    install_tiny_clip(clip_mod, model_mod, state_dict, text, dtype)
    model = seg_mod.ResCLIPSegmentation(
        clip_path='tiny', name_path=name_path, device=torch.device('cpu'),
        delete_same_entity=True, **BENCHMARKS[bench])
    return model.eval()


def run(model, model_mod, inputs, pamr_calls):
    """One official predict() with every recorder on; returns the records."""
    visual = model.net.visual

    def describe(args, kwargs, bmm_args, out):
        (a, b), (attn, v) = bmm_args
        return dict(kwargs=kwargs, first=(a, b), attn=attn, v=v, x=args[1].clone())

    del pamr_calls[:]
    VT = model_mod.VisionTransformer
    with custom_attn_calls(visual, describe) as attn_calls, \
            Recorder(visual, 'create_logit_temp') as temp, \
            Recorder(visual, 'create_patch_matrix') as patch_matrix, \
            Recorder(visual, 'generate_attention_sfr') as sfr, \
            Recorder(VT, 'check_path') as check_path, \
            Recorder(torch, 'mode') as mode, \
            Recorder(visual, 'forward') as visual_fwd, \
            Recorder(torch.nn.functional, 'interpolate') as interp:
        with torch.no_grad():
            out = model.predict(inputs, [data_sample(ORI_HW)])
    bilinear = [c for c in interp.calls
                if c['kwargs'].get('mode') == 'bilinear' and not c['kwargs'].get('align_corners')]
    n = len(visual_fwd.calls)
    assert len(pamr_calls) == n, 'PAMR of the SFR step did not run (the official code skips it ' \
                                 'silently on a RuntimeError)'
    assert len(attn_calls) == n * CLIP_CFG['layers'] + n and len(bilinear) == 2 * n + 1
    return dict(attn=attn_calls, temp=temp.calls, patch_matrix=patch_matrix.calls, sfr=sfr.calls,
                check_path=check_path.calls, mode=mode.calls, visual=visual_fwd.calls,
                temp_logits=[c['args'][0][0] for c in bilinear[0:-1:2]],
                logits=[c['args'][0][0] for c in bilinear[1:-1:2]],
                slide_logits=bilinear[-1]['args'][0][0], final_logits=bilinear[-1]['out'][0],
                pamr=list(pamr_calls), out=out[0], n=n)


def pass_records(rec, i: int, grid_hw, sub: int, full: bool):
    """The official intermediates of forward pass i (a crop, or the whole image)."""
    layers, patch = CLIP_CFG['layers'], CLIP_CFG['patch_size']
    calls = rec['attn'][i * (layers + 1):(i + 1) * (layers + 1)]
    trunk, temp_call, final_call = calls[:layers - 1], calls[layers - 1], calls[layers]
    h, w = grid_hw
    patches = rec['mode'][i]['args'][0]  # (h, w, p*p) pixel labels of each patch
    pixel_labels = patches.reshape(h, w, patch, patch).permute(0, 2, 1, 3).reshape(h * patch,
                                                                                  w * patch)
    r = {
        'temp_logits': rec['temp_logits'][i].clone(),
        'patch_labels': rec['patch_matrix'][i]['out'].clone(),
        'logits': rec['logits'][i].clone(),
    }
    if not full:
        return r
    rcs = torch.stack([trunk[j]['attn'] for j in range(5, 9)]).mean(0)
    assert torch.equal(rcs, temp_call['kwargs']['attn_rcs'])
    r.update({
        'x_in': rec['temp'][i]['args'][0].squeeze(1).clone(),  # trunk output (T, width)
        'attn_rcs': rcs.clone(),
        'temp_probs_sub': rec['temp'][i]['out'][0][:, ::sub, ::sub].clone(),
        'temp_labels': pixel_labels.to(torch.uint8).clone(),
        'valid_paths': rec['check_path'][i]['out'].view(h * w, h * w).clone(),
        'sfr': rec['sfr'][i]['out'][0].clone(),
        'k': final_call['first'][0].clone(),
        'v': final_call['v'].clone(),
        'attn': final_call['attn'].clone(),
        'features': rec['visual'][i]['out'][0].clone(),
    })
    return r


def main():
    args = parse_generator_args(__doc__, OFFICIAL, COMMIT, 'tests/fixtures/resclip_tiny.pt')
    clip_mod, model_mod, seg_mod = import_official_clip(args.repo, 'resclip_segmentor')
    cpu_cuda_shim()
    pamr_calls = make_pamr_shim(model_mod)

    scene = tiny_scene()
    state_dict, inputs, name_path, boxes = (
        scene.state_dict, scene.inputs, scene.name_path, scene.boxes)
    p = CLIP_CFG['patch_size']
    grid = CROP // p
    whole_grid = (IMAGE_HW[0] // p, IMAGE_HW[1] // p)

    # Text embeddings correlated with the regions, from the features of a first run with any
    # text (ResCLIP's features depend on the text only through SFR).
    feats, views = [], []
    for bench in (SLIDE, WHOLE):
        model = build(seg_mod, clip_mod, model_mod, state_dict, scene.probe, name_path, bench)
        rec = run(model, model_mod, inputs, pamr_calls)
        bench_views = boxes if bench == SLIDE else [(0, IMAGE_HW[0], 0, IMAGE_HW[1])]
        for c, view in zip(rec['visual'], bench_views):
            feats.append(c['out'][0, 1:])
            views.append(view)
    means = [f.mean(0) for f in feats]  # the crops' mean, and the whole image's
    text = region_text_features(scene, feats, views,
                                torch.stack([torch.stack(means[:-1]).mean(0), means[-1]]))

    sub = 4
    fixture = {
        **tiny_fixture_header(f'{OFFICIAL}@{COMMIT}', scene),
        'hparams': dict(arch='wo_resi', attn_strategy='resclip', gaussian_std=5.0,
                        logit_scale=40, delete_same_entity=True, rcs_layers=[5, 6, 7, 8],
                        pamr_steps_sfr=10, pamr_dilations_sfr=(8, 16), pamr_steps_final=0),
        'benchmarks': {SLIDE: BENCHMARKS[SLIDE], WHOLE: BENCHMARKS[WHOLE]},
        'subsample': sub,
    }
    margins, stats = {}, {}
    for bench in (SLIDE, WHOLE):
        model = build(seg_mod, clip_mod, model_mod, state_dict, text, name_path, bench)
        rec = run(model, model_mod, inputs, pamr_calls)
        fixture.setdefault('text_features', model.query_features.clone())
        assert torch.equal(fixture['text_features'], model.query_features)
        pred = rec['out'].pred_sem_seg.data[0].to(torch.uint8)
        if bench == SLIDE:
            assert rec['n'] == len(boxes)
            per = [pass_records(rec, i, (grid, grid), sub, full=(i == 0)) for i in range(rec['n'])]
            fixture['crop0'] = per[0]
            fixture['crop_boxes'] = torch.tensor(boxes)
            for key in ('temp_logits', 'patch_labels', 'logits'):
                fixture['crop_' + key] = torch.stack([r[key] for r in per])
            fixture['slide_logits_sub'] = rec['slide_logits'][:, ::sub, ::sub].clone()
        else:
            assert rec['n'] == 1
            fixture['whole'] = pass_records(rec, 0, whole_grid, sub, full=False)
        key = 'slide' if bench == SLIDE else 'whole'
        fixture[key + '.final_logits_sub'] = rec['final_logits'][:, ::2 * sub, ::2 * sub].clone()
        fixture[key + '.pred'] = pred

        # margins of the discrete steps; shares of what they decide
        temp = torch.cat([c['out'][0].flatten(1) for c in rec['temp']], 1)  # (Q, pixels)
        thd = BENCHMARKS[bench]['temp_thd']
        top2 = temp.topk(2, dim=0).values
        margins[bench] = dict(temp_top2_gap=(top2[0] - top2[1]).min().item(),
                              temp_thd_gap=(top2[0] - thd).abs().min().item())
        counts = torch.cat([torch.nn.functional.one_hot(c['args'][0].flatten(0, 1).long(),
                                                        len(QUERY_IDX)).sum(1)
                            for c in rec['mode']])  # (patches, Q) label counts
        srt = counts.sort(1, descending=True).values
        stats[bench] = dict(
            temp_below_thd=(top2[0] < thd).double().mean().item(),
            mode_ties=int((srt[:, 0] == srt[:, 1]).sum()),
            patch_label_hist=torch.bincount(torch.cat([c['out'].flatten() for c in
                                                       rec['patch_matrix']]),
                                            minlength=len(QUERY_IDX)).tolist(),
            pred_hist=torch.bincount(pred.long().flatten(), minlength=len(CLASS_NAMES)).tolist())
    fixture['margins'], fixture['stats'] = margins, stats

    # The official code's own spread on the slide benchmark: a float64 rerun, and float32.
    ref = fixture['slide_logits_sub']
    noise = dict(slide_logits_range=(ref.max() - ref.min()).item())
    for name, dtype in (('rerun_float64', torch.float64), ('float32', torch.float32)):
        model = build(seg_mod, clip_mod, model_mod, state_dict, text, name_path, SLIDE, dtype)
        rec = run(model, model_mod, inputs.to(dtype), pamr_calls)
        noise[name + '_slide_logits_max_diff'] = \
            (rec['slide_logits'][:, ::sub, ::sub].double() - ref).abs().max().item()
        noise[name + '_patch_labels_changed'] = int(sum(
            (c['out'] != fixture['crop_patch_labels'][i]).sum()
            for i, c in enumerate(rec['patch_matrix'])))
        noise[name + '_pred_flips'] = int((rec['out'].pred_sem_seg.data[0].to(torch.uint8)
                                           != fixture['slide.pred']).sum())
    fixture['noise'] = noise
    print('noise', noise)

    save_fixture(fixture, args.out)
    print('margins', margins)
    print('stats', stats)


if __name__ == '__main__':
    main()
