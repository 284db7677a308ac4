"""Independent re-implementations used by the golden self-checks (tools/dev/check_*_golden.py).

Written from docs/specs/{scclip,resclip,pamr}.md with plain torch ops; nothing here imports or
copies official code. They read only the fixtures.
"""
import math
import os
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F


def load(path: str) -> Dict:
    return torch.load(path, weights_only=False)


def load_tiny_clip_fixture(name: str):
    """An SCLIP-family fixture of tests/fixtures, its ViT, its normalised image and its slide
    windows (y1, y2, x1, x2)."""
    fx = load(os.path.join('tests', 'fixtures', name))
    vit = TinyViT(fx['clip_state_dict'], fx['clip_cfg'])
    return fx, vit, normalised_image(fx), fx['crop_boxes'].tolist()


def normalised_image(fx: Dict) -> torch.Tensor:
    mean = torch.tensor(fx['norm_mean'], dtype=torch.float64)[:, None, None]
    std = torch.tensor(fx['norm_std'], dtype=torch.float64)[:, None, None]
    img = fx['image_uint8']
    if img.dim() == 3:
        return ((img.double() - mean) / std)[None]
    return (img.double() - mean) / std


class TinyViT:
    """OpenAI CLIP ViT in float64, from its weights (OpenAI names, `visual.` prefix dropped)."""

    def __init__(self, state_dict: Dict[str, torch.Tensor], cfg: Dict):
        self.w = {k: v.double() for k, v in state_dict.items()}
        self.patch, self.width, self.heads = cfg['patch_size'], cfg['width'], cfg['heads']
        self.layers = cfg['layers']
        self.grid0 = cfg['input_resolution'] // self.patch

    def block(self, i: int) -> Dict[str, torch.Tensor]:
        p = f'transformer.resblocks.{i}.'
        return {k[len(p):]: v for k, v in self.w.items() if k.startswith(p)}

    def ln(self, x, name, blk=None):
        src = blk if blk is not None else self.w
        return F.layer_norm(x, (self.width,), src[name + '.weight'], src[name + '.bias'], 1e-5)

    def qkv(self, x, blk):
        """Per-head q, k, v (H, T, hd) of in_proj applied to x (T, width)."""
        y = x @ blk['attn.in_proj_weight'].t() + blk['attn.in_proj_bias']
        q, k, v = y.chunk(3, dim=-1)
        hd = self.width // self.heads
        split = lambda t: t.reshape(-1, self.heads, hd).transpose(0, 1)  # noqa: E731
        return split(q), split(k), split(v)

    def out_proj(self, o, blk):
        """Heads (H, T, hd) -> concatenated -> out_proj (T, width)."""
        merged = o.transpose(0, 1).reshape(o.shape[1], self.width)
        return merged @ blk['attn.out_proj.weight'].t() + blk['attn.out_proj.bias']

    def pos_embed(self, gh: int, gw: int) -> torch.Tensor:
        pos = self.w['positional_embedding']
        if gh == gw == self.grid0:
            return pos
        g0 = self.grid0
        grid = pos[1:].reshape(1, g0, g0, self.width).permute(0, 3, 1, 2)
        # the SCLIP family passes the scale factor ((g+0.1)/g0), which also sets the sampling
        grid = F.interpolate(grid, scale_factor=((gh + 0.1) / g0, (gw + 0.1) / g0),
                             mode='bicubic', align_corners=False, recompute_scale_factor=False)
        assert grid.shape[-2:] == (gh, gw)
        return torch.cat([pos[:1], grid.permute(0, 2, 3, 1).reshape(gh * gw, self.width)])

    def embed(self, img: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        """(1, 3, H, W) -> ln_pre(tokens) (T, width), cls first; and the grid (h, w)."""
        x = F.conv2d(img, self.w['conv1.weight'], stride=self.patch)[0]
        gh, gw = x.shape[-2:]
        x = x.flatten(1).t()
        x = torch.cat([self.w['class_embedding'][None], x]) + self.pos_embed(gh, gw)
        return self.ln(x, 'ln_pre'), (gh, gw)

    def trunk(self, img: torch.Tensor):
        """Blocks 0..L-2, standard (q·k softmax attention, residual, QuickGELU MLP).
        Returns the output of every block and every block's attention (H, T, T)."""
        x, grid = self.embed(img)
        outs, attns = [], []
        for i in range(self.layers - 1):
            blk = self.block(i)
            q, k, v = self.qkv(self.ln(x, 'ln_1', blk), blk)
            a = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(q.shape[-1]), dim=-1)
            x = x + self.out_proj(a @ v, blk)
            h = self.ln(x, 'ln_2', blk) @ blk['mlp.c_fc.weight'].t() + blk['mlp.c_fc.bias']
            h = h * torch.sigmoid(1.702 * h)
            x = x + h @ blk['mlp.c_proj.weight'].t() + blk['mlp.c_proj.bias']
            outs.append(x)
            attns.append(a)
        return outs, attns, grid

    def head(self, x):
        """ln_post then proj: (T, width) -> (T, D)."""
        return self.ln(x, 'ln_post') @ self.w['proj']


def cos_logits(features: torch.Tensor, text: torch.Tensor, grid: Tuple[int, int]):
    """Patch features (N, D) -> (Q, h, w) cosine logits."""
    f = features / features.norm(dim=-1, keepdim=True)
    return (f @ text.t()).t().reshape(text.shape[0], *grid)


def upsample(logits: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(logits[None], size=size, mode='bilinear', align_corners=False)[0]


def slide_assemble(crop_logits: List[torch.Tensor], boxes, hw) -> torch.Tensor:
    """Upsample each crop's grid logits to the crop, sum them into the canvas, divide by counts."""
    q = crop_logits[0].shape[0]
    acc = torch.zeros(q, *hw, dtype=torch.float64)
    count = torch.zeros(1, *hw, dtype=torch.float64)
    for lg, (y1, y2, x1, x2) in zip(crop_logits, boxes):
        acc[:, y1:y2, x1:x2] += upsample(lg, (y2 - y1, x2 - x1))
        count[:, y1:y2, x1:x2] += 1
    return acc / count


def check_slide(fx: Dict, crop_logits: List[torch.Tensor], boxes, errors: Dict[str, float],
                final_key: str) -> torch.Tensor:
    """Slide-assembles the crops' logits and resizes them to ori_shape; enters their errors
    against the fixture's subsampled `slide_logits_sub` and `final_key`; returns the latter."""
    s = fx['subsample']
    slide = slide_assemble(crop_logits, boxes, tuple(fx['image_uint8'].shape[-2:]))
    errors['slide_logits_sub'] = max_abs(slide[:, ::s, ::s], fx['slide_logits_sub'])
    final = upsample(slide, tuple(fx['ori_shape']))
    errors[final_key] = max_abs(final[:, ::2 * s, ::2 * s], fx[final_key])
    return final


def print_logits_range(logits: torch.Tensor):
    """The header of the deviation study: the scale its distances are read against."""
    print(f'  crop0 logits range {logits.max() - logits.min():.2e}; deviations:')


def postprocess(logits, query_idx, logit_scale, prob_thd, area_thd=None, normalise=False):
    """SCLIP-family postprocess of (Q, H, W) logits -> (H, W) class map."""
    probs = torch.softmax(logits * logit_scale, dim=0)
    n_cls = int(query_idx.max()) + 1
    if n_cls != len(query_idx):
        probs = torch.stack([probs[query_idx == c].max(0).values for c in range(n_cls)])
    if area_thd is not None:
        winners = probs.argmax(0)
        area = torch.stack([(winners == c).sum() for c in range(1, n_cls)]).double()
        keep = (area > area_thd * area.sum()).double()
        probs = torch.cat([probs[:1], probs[1:] * keep[:, None, None]])
    pred = probs.argmax(0)
    pred[probs.max(0).values < prob_thd] = 0
    return pred


def shifted(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """y[..., i, j] = x[..., clamp(i+dy), clamp(j+dx)] (replicate border)."""
    h, w = x.shape[-2:]
    iy = (torch.arange(h) + dy).clamp(0, h - 1)
    ix = (torch.arange(w) + dx).clamp(0, w - 1)
    return x[..., iy, :][..., ix]


def pamr(image: torch.Tensor, mask: torch.Tensor, steps: int, dilations) -> torch.Tensor:
    """PAMR as docs/specs/pamr.md states it. image (B, K, H, W), mask (B, C, h, w)."""
    h, w = image.shape[-2:]
    mask = F.interpolate(mask, size=(h, w), mode='bilinear', align_corners=True)
    ring = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]
    full = [(a, b) for a in (-1, 0, 1) for b in (-1, 0, 1)]
    nb = [(a * d, b * d) for d in dilations for a, b in ring]
    window = torch.stack([shifted(image, a * d, b * d) for d in dilations for a, b in full], 2)
    std = window.std(2, keepdim=True)  # unbiased, over 9·len(dilations) values
    diff = torch.stack([(image - shifted(image, dy, dx)).abs() for dy, dx in nb], 2)
    aff = torch.softmax((-diff / (1e-8 + 0.1 * std)).mean(1, keepdim=True), dim=2)
    for _ in range(steps):
        mask = (torch.stack([shifted(mask, dy, dx) for dy, dx in nb], 2) * aff).sum(2)
    return mask


def omega_float32(h: int, w: int, std: float, dtype=torch.float32) -> torch.Tensor:
    """NACLIP's Gaussian neighbourhood term (N, N) in float32 (other dtypes: deviation study):
    exp(-(Δy² + Δx²)/(2σ²)), with the coordinates scaled by 1/(σ√2) in float32 before squaring."""
    c = 1 / (std * math.sqrt(2))
    ky = torch.linspace(-(h - 1) * c, (h - 1) * c, 2 * h - 1, dtype=dtype)
    kx = torch.linspace(-(w - 1) * c, (w - 1) * c, 2 * w - 1, dtype=dtype)
    window = torch.exp(-(ky[:, None] ** 2 + kx[None, :] ** 2))
    iy, ix = torch.meshgrid(torch.arange(h), torch.arange(w), indexing='ij')
    iy, ix = iy.reshape(-1), ix.reshape(-1)
    return window[iy[None, :] - iy[:, None] + h - 1, ix[None, :] - ix[:, None] + w - 1]


def report(errors: Dict[str, float], tol: float) -> bool:
    width = max(len(k) for k in errors)
    ok = True
    for k, e in errors.items():
        flag = '' if e <= tol else '   <-- ABOVE TOLERANCE'
        ok &= e <= tol
        print(f'  {k:<{width}}  {e:.2e}{flag}')
    return ok


def max_abs(a, b) -> float:
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    assert a.shape == b.shape, (tuple(a.shape), tuple(b.shape))
    return (a - b).abs().max().item() if a.numel() else 0.0
