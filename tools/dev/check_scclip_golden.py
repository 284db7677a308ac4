"""Self-check of tests/fixtures/scclip_tiny.pt against docs/specs/scclip.md (not run in CI).

An independent re-implementation of SC-CLIP, written from the spec with plain torch ops (no
official code), runs the whole pipeline from the stored image, weights and text, and is compared
with every stored intermediate. Usage: PYTHONPATH=$PWD python tools/dev/check_scclip_golden.py
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _check_common import (  # noqa: E402
    check_slide,
    cos_logits,
    load_tiny_clip_fixture,
    max_abs,
    postprocess,
    print_logits_range,
    report,
)


def lof_outliers(p: torch.Tensor, k: int = 30, contamination: float = 0.05):
    """SC-CLIP's LOF: squared distances, the query's own k-distance as reach distance."""
    d = ((p[:, None] - p[None]) ** 2).sum(-1)
    knn_d, knn_i = d.topk(k + 1, largest=False)
    knn_d, knn_i = knn_d[:, 1:], knn_i[:, 1:]  # drop the point itself
    kdist = knn_d[:, -1]
    lrd = k / torch.maximum(knn_d, kdist[:, None]).mean(1)
    scores = (lrd[knn_i] / lrd[:, None]).mean(1)
    threshold = torch.quantile(scores.float(), 1 - contamination)
    return torch.nonzero(scores > threshold.double())[:, 0], scores, threshold.item()


def fill_outliers(tokens: torch.Tensor, outliers, grid):
    """Each outlier patch := mean of its non-outlier 8-neighbours inside the grid (if any)."""
    h, w = grid
    fmap = tokens.t().reshape(-1, h, w).clone()
    bad = torch.zeros(h, w, dtype=torch.bool)
    for idx in outliers.tolist():
        bad[idx // h, idx % h] = True  # official: (idx // n_rows, idx % n_rows)
    out = fmap.clone()
    for idx in outliers.tolist():
        r, c = idx // h, idx % h
        acc, n = torch.zeros(fmap.shape[0], dtype=torch.float64), 0
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                rr, cc = r + dr, c + dc
                if (dr or dc) and 0 <= rr < h and 0 <= cc < w and not bad[rr, cc]:
                    acc, n = acc + fmap[:, rr, cc], n + 1
        if n:
            out[:, r, c] = acc / n
    return out.reshape(-1, h * w).t()


def gram(tokens):
    t = tokens / tokens.norm(dim=-1, keepdim=True)
    return t @ t.t()


def aggregate(x, corr):
    return (corr / (corr.sum(-1, keepdim=True) + 1e-6)) @ x


def sc_attention(vit, blk, x, sim):
    """The last block's attention path on x (N, width): per-head A = (softmax(M) + softmax(kk))/2,
    M = 3(S - mean S) with negatives -inf. Returns out_proj(A v), and q/k/v/A."""
    _, k, v = vit.qkv(vit.ln(x, 'ln_1', blk), blk)
    m = 3.0 * (sim - sim.mean())
    m[m < 0] = float('-inf')
    a = (torch.softmax(m, -1)[None] + torch.softmax(k @ k.transpose(1, 2) * k.shape[-1] ** -0.5,
                                                    -1)) / 2
    return vit.out_proj(a @ v, blk), k, v, a


def sc_clip_crop(vit, img, hp, text):
    outs, _, grid = vit.trunk(img)
    penult = outs[-1]
    outliers, scores, threshold = lof_outliers(penult[1:])
    if hp.get('no_fix'):  # deviation study only
        outliers = outliers[:0]
    x = fill_outliers(penult[1:], outliers, grid)
    cls = penult[0]
    r = dict(layer_outputs=torch.stack(outs), lof_scores=scores, lof_threshold=threshold,
             outliers=outliers, x_penult_fixed=x)
    sim = gram(fill_outliers(outs[hp['pre_adjust_idx']][1:], outliers, grid))
    r['mid_simi'] = sim
    before = torch.where(sim < hp['beta'], torch.zeros_like(sim), sim)
    x = aggregate(x, before)
    r['x_agg'] = x
    blk = vit.block(vit.layers - 1)
    out, r['main.k'], r['main.v'], r['main.attn'] = sc_attention(vit, blk, x, sim)
    r['main.out'] = out
    y = out + hp['res_cls'] * cls
    post = outs[hp['post_adjust_idx']][1:]
    after = gram(fill_outliers(post, outliers, grid) if hp.get('fix_post') else post)
    after = torch.where(after < hp['beta'], torch.zeros_like(after), after)
    r['after_simi'] = after
    r['x_main'] = aggregate(y, after)
    multi = torch.zeros_like(outs[0])
    for i in range(hp['multi_start_idx'], hp['multi_end_idx']):
        multi = multi + outs[i]
    out2, r['multi.k'], r['multi.v'], r['multi.attn'] = sc_attention(vit, blk, multi[1:], sim)
    r['multi.out'] = out2
    r['x_multi'] = aggregate(out2 + hp['res_cls'] * multi[0], after)
    r['features'] = vit.head(r['x_main'] + r['x_multi'])
    r['logits'] = cos_logits(r['features'], text, grid)
    return r


def main():
    fx, vit, image, boxes = load_tiny_clip_fixture('scclip_tiny.pt')
    hp, text = fx['hparams'], fx['text_features']
    crops = [sc_clip_crop(vit, image[:, :, y1:y2, x1:x2], hp, text) for y1, y2, x1, x2 in boxes]

    errors = {}
    for key, ref in fx['crop0'].items():
        got = crops[0][key]
        if key == 'outliers':
            assert torch.equal(got, ref), (got, ref)
            continue
        errors['crop0.' + key] = max_abs(got, ref)
    for i, o in enumerate(fx['crop_outliers']):
        assert torch.equal(crops[i]['outliers'], o), i
    errors['crop_logits'] = max_abs(torch.stack([c['logits'] for c in crops]), fx['crop_logits'])
    final = check_slide(fx, [c['logits'] for c in crops], boxes, errors, 'final_logits_sub')
    flips = {}
    for bench, php in fx['post_hparams'].items():
        pred = postprocess(final, fx['query_idx'], php['logit_scale'], php['prob_thd'],
                           php['area_thd'])
        flips[bench] = int((pred != fx['preds'][bench].long()).sum())
    print('SC-CLIP self-check: independent re-implementation vs the official golden outputs')
    ok = report(errors, tol=1e-12)
    print('  outliers: identical in all crops; pred pixels that differ:', flips)
    ok &= not any(flips.values())

    # How far common deviations move crop0's logits (range of the logits for scale).
    c0 = fx['crop0']
    print_logits_range(c0['logits'])
    img0 = image[:, :, boxes[0][0]:boxes[0][1], boxes[0][2]:boxes[0][3]]
    for name, change in deviations(hp).items():
        moved = max_abs(sc_clip_crop(vit, img0, change, text)['logits'], c0['logits'])
        print(f'    {name:<48} {moved:.1e}')
    sys.exit(0 if ok else 1)


def deviations(hp):
    return {
        'pre_adjust_idx 9 instead of 8': dict(hp, pre_adjust_idx=9),
        'post_adjust_idx 4 instead of 3': dict(hp, post_adjust_idx=4),
        'multi range inclusive (3..10)': dict(hp, multi_end_idx=hp['multi_end_idx'] + 1),
        'res_cls 0': dict(hp, res_cls=0.0),
        'beta 0.5': dict(hp, beta=0.5),
        'no outlier repair': dict(hp, no_fix=True),
        'outliers also repaired in the post_adjust layer': dict(hp, fix_post=True),
    }


if __name__ == '__main__':
    main()
