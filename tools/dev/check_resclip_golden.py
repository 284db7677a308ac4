"""Self-check of tests/fixtures/resclip_tiny.pt against docs/specs/resclip.md (not run in CI).

An independent re-implementation of ResCLIP (NACLIP host + RCS + SFR), written from the spec with
plain torch ops (no official code), runs the slide and the whole-image pipelines from the stored
image, weights and text, and is compared with every stored intermediate.
Usage: PYTHONPATH=$PWD python tools/dev/check_resclip_golden.py
"""
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _check_common import (  # noqa: E402
    check_slide,
    cos_logits,
    load_tiny_clip_fixture,
    max_abs,
    omega_float32,
    pamr,
    postprocess,
    print_logits_range,
    report,
    upsample,
)


def patch_mode(labels: torch.Tensor, grid, patch: int) -> torch.Tensor:
    """Most frequent pixel label of each patch (ties: the smallest label); pixels past the
    last whole patch are ignored."""
    h, w = grid
    blocks = labels[:h * patch, :w * patch].reshape(h, patch, w, patch).permute(0, 2, 1, 3)
    counts = F.one_hot(blocks.reshape(h, w, -1).long(), int(labels.max()) + 1).sum(2)
    return counts.argmax(-1)  # argmax returns the first (smallest) maximal label


def same_entity_paths(labels: torch.Tensor):
    """valid[i, j]: every sampled point of the first s_ij+1 of S+1 evenly spaced points on the
    segment from patch i to patch j (float32, rounded half to even) has patch i's label;
    s_ij = Chebyshev distance, S = its maximum over all pairs."""
    h, w = labels.shape
    rc = torch.stack(torch.meshgrid(torch.arange(h), torch.arange(w), indexing='ij'), -1)
    rc = rc.reshape(-1, 2)
    n = rc.shape[0]
    start = rc[:, None].expand(n, n, 2).reshape(-1, 2)
    end = rc[None].expand(n, n, 2).reshape(-1, 2)
    steps = (end - start).abs().max(1).values
    big = int(steps.max())
    t = torch.linspace(0, 1, big + 1, dtype=torch.float32)[None, :, None]
    pts = (start[:, None].float() * (1 - t) + end[:, None].float() * t).round().long()
    on_path = labels[pts[..., 0], pts[..., 1]] == labels[start[:, 0], start[:, 1]][:, None]
    checked = torch.arange(big + 1)[None] <= steps[:, None]
    valid = (on_path | ~checked).all(1)
    return valid.view(n, n), steps.view(n, n), big


def sfr_matrix(patch_labels: torch.Tensor, std: float, same_entity: bool, blur_dtype=None):
    """ResCLIP's SFR matrix (T, T), float32, zero cls row and column."""
    lab = patch_labels.reshape(-1)
    n = lab.numel()
    e = (lab[:, None] == lab[None]).float()
    valid = None
    if same_entity:
        valid, steps, big = same_entity_paths(patch_labels)
        e = torch.where(valid, e, e * torch.exp(-steps / big).float())
    ks = min(n, int(6 * std + 1))
    ks = ks if ks % 2 == 1 else ks + 1
    x = torch.arange(ks) - ks // 2
    g = torch.exp(-(x ** 2) / (2 * std ** 2)).float()
    g = g / g.sum()
    if blur_dtype is not None:  # deviation study only
        e, g = e.to(blur_dtype), g.to(blur_dtype)
    b = F.conv1d(e[:, None], g.view(1, 1, -1), padding=ks // 2)[:, 0].relu()
    b = b / (b.sum(1, keepdim=True) + 1e-8)
    return F.pad(b, (1, 0, 1, 0)), valid


def nac_attention(kk, omega, rcs, tau_r, lam_r, sfr16=None, tau_s=None, lam_s=None):
    a = kk
    if sfr16 is not None:
        a = tau_s * ((1 - lam_s) * a + lam_s * sfr16)
    a = torch.softmax(a + omega, dim=-1)
    return tau_r * ((1 - lam_r) * a + lam_r * rcs)


def resclip_pass(vit, img, text, hp, bench, dev=None):
    """One ResCLIP forward (a crop or the whole image). dev: deviation switches (study only)."""
    dev = dev or {}
    outs, attns, grid = vit.trunk(img)
    x = outs[-1]
    lo, hi = dev.get('rcs_layers', (5, 9))
    rcs = torch.stack(attns[lo:hi]).mean(0)
    tau_r, lam_r = bench['attn_rcs_weights']
    tau_s, lam_s = bench['attn_sfr_weights']
    if dev.get('rows_sum_to_one'):
        tau_r = 1.0
    blk = vit.block(vit.layers - 1)
    _, k, v = vit.qkv(vit.ln(x, 'ln_1', blk), blk)
    kk = k @ k.transpose(1, 2) * k.shape[-1] ** -0.5
    omega = F.pad(omega_float32(*grid, hp['gaussian_std'], dev.get('omega_dtype', torch.float32)),
                  (1, 0, 1, 0)).double()

    def logits_of(attn):
        feats = vit.head(vit.out_proj(attn @ v, blk))
        return feats, cos_logits(feats[1:], text, grid)

    r = dict(x_in=x, attn_rcs=rcs, k=k, v=v)
    _, r['temp_logits'] = logits_of(nac_attention(kk, omega, rcs, tau_r, lam_r))
    size = tuple(img.shape[-2:])
    temp = upsample(r['temp_logits'], size)
    if not dev.get('skip_pamr'):
        temp = pamr(img, temp[None], hp['pamr_steps_sfr'], hp['pamr_dilations_sfr'])[0]
    probs = torch.softmax(temp * hp['logit_scale'], dim=0)
    labels = probs.argmax(0)
    labels[probs.max(0).values < bench['temp_thd']] = 0
    r['temp_probs'], r['temp_labels'] = probs, labels
    r['patch_labels'] = patch_mode(labels, grid, vit.patch)
    sfr, valid = sfr_matrix(r['patch_labels'], hp['gaussian_std'],
                            hp['delete_same_entity'] and not dev.get('no_paths'),
                            blur_dtype=dev.get('blur_dtype'))
    r['sfr'], r['valid_paths'] = sfr, valid
    sfr16 = sfr / sfr.max()
    sfr16 = sfr16.double() if dev.get('no_fp16') else sfr16.half()
    r['attn'] = nac_attention(kk, omega, rcs, tau_r, lam_r, sfr16, tau_s, lam_s)
    r['features'], r['logits'] = logits_of(r['attn'])
    return r


def main():
    fx, vit, image, boxes = load_tiny_clip_fixture('resclip_tiny.pt')
    hp, text, s = fx['hparams'], fx['text_features'], fx['subsample']
    (slide_name, slide_hp), (whole_name, whole_hp) = fx['benchmarks'].items()
    crops = [resclip_pass(vit, image[:, :, y1:y2, x1:x2], text, hp, slide_hp)
             for y1, y2, x1, x2 in boxes]

    errors, exact = {}, {}
    for key, ref in fx['crop0'].items():
        got = crops[0]['temp_probs'][:, ::s, ::s] if key == 'temp_probs_sub' else crops[0][key]
        if ref.dtype in (torch.bool, torch.uint8, torch.int64):
            exact['crop0.' + key] = int((got.long() != ref.long()).sum())
        else:
            errors['crop0.' + key] = max_abs(got, ref)
    for key in ('temp_logits', 'logits'):
        errors['crop_' + key] = max_abs(torch.stack([c[key] for c in crops]), fx['crop_' + key])
    exact['crop_patch_labels'] = int((torch.stack([c['patch_labels'] for c in crops])
                                      != fx['crop_patch_labels']).sum())
    final = check_slide(fx, [c['logits'] for c in crops], boxes, errors, 'slide.final_logits_sub')
    pred = postprocess(final, fx['query_idx'], hp['logit_scale'], slide_hp.get('prob_thd', 0.0))
    exact['slide.pred'] = int((pred != fx['slide.pred'].long()).sum())

    whole = resclip_pass(vit, image, text, hp, whole_hp)
    for key in ('temp_logits', 'logits'):
        errors['whole.' + key] = max_abs(whole[key], fx['whole'][key])
    exact['whole.patch_labels'] = int((whole['patch_labels'] != fx['whole']['patch_labels']).sum())
    final = upsample(upsample(whole['logits'], tuple(image.shape[-2:])), tuple(fx['ori_shape']))
    errors['whole.final_logits_sub'] = max_abs(final[:, ::2 * s, ::2 * s],
                                               fx['whole.final_logits_sub'])
    pred = postprocess(final, fx['query_idx'], hp['logit_scale'], whole_hp.get('prob_thd', 0.0))
    exact['whole.pred'] = int((pred != fx['whole.pred'].long()).sum())

    print(f'ResCLIP self-check ({slide_name} slide, {whole_name} whole image): independent '
          're-implementation vs the official golden outputs')
    ok = report(errors, tol=1e-12)
    print('  entries that differ (labels, paths, predictions):', exact)
    ok &= not any(exact.values())

    c0 = fx['crop0']
    y1, y2, x1, x2 = boxes[0]
    img0 = image[:, :, y1:y2, x1:x2]
    print_logits_range(c0['logits'])
    for name, dev in DEVIATIONS.items():
        r = resclip_pass(vit, img0, text, hp, slide_hp, dev)
        extra = ''
        if 'blur_dtype' in dev:
            a = (r['sfr'] / r['sfr'].max()).half()
            b = (c0['sfr'] / c0['sfr'].max()).half()
            extra = f'  ({int((a != b).sum())} of {a.numel()} float16 SFR entries differ)'
        print(f'    {name:<40} {max_abs(r["logits"], c0["logits"]):.1e}{extra}')
    sys.exit(0 if ok else 1)


DEVIATIONS = {
    'SFR kept in float32 (no float16 cast)': dict(no_fp16=True),
    'SFR blur in float64, then float16': dict(blur_dtype=torch.float64),
    'Ω in float64 instead of float32': dict(omega_dtype=torch.float64),
    'no same-entity path check': dict(no_paths=True),
    'no PAMR in the SFR step': dict(skip_pamr=True),
    'RCS from blocks 6..9 instead of 5..8': dict(rcs_layers=(6, 10)),
    'RCS mix rows summing to 1 (tau_rcs = 1)': dict(rows_sum_to_one=True),
}


if __name__ == '__main__':
    main()
