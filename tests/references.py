"""Reference computations written out from the papers' formulas and the official code, shared by
tests (independent of the implementation under test), and the random problems they are run on."""
import math

import torch
import torch.nn.functional as F

from fsa_seg.models.plugins.fsa_reference import official_fsa


def reference_fsa(lamda=3.0, top_p=0.45, logit_scales=(20.0, 35.0)):
    """FSA as the official code computes it, as a ``plugin(attn, values, logits_fn)`` callable."""
    def plugin(attn, values, logits_fn):
        return official_fsa(attn, values, logits_fn, lamda, top_p, logit_scales)
    return plugin


def random_fsa_problem(batch, heads, n, dim, queries, attention, seed=0, dtype=torch.float64):
    """An FSA input ``(attn, values, logits_fn)``: random values, an attention that is 'per-head'
    (softmax of random logits), 'shared' (ProxyCLIP-like: masked, one for all heads) or None
    ('identity'), and a random linear head with unit text embeddings."""
    generator = torch.Generator().manual_seed(seed)
    values = torch.randn(batch, heads, n, dim, generator=generator, dtype=dtype)
    if attention == 'per-head':
        attn = (3 * torch.randn(batch, heads, n, n, generator=generator, dtype=dtype)).softmax(-1)
    elif attention == 'shared':
        logits = 3 * torch.randn(batch, 1, n, n, generator=generator, dtype=dtype)
        attn = logits.masked_fill(logits < -1, float('-inf'))
        attn = attn.diagonal_scatter(torch.zeros(batch, 1, n, dtype=dtype), dim1=-2, dim2=-1)
        attn = attn.softmax(-1)
    else:
        attn = None
    head = torch.randn(heads * dim, 8, generator=generator, dtype=dtype)
    text = F.normalize(torch.randn(queries, 8, generator=generator, dtype=dtype), dim=-1)
    return attn, values, linear_logits_fn(head, text)


def linear_logits_fn(head, text):
    """The ``logits_fn`` of a linear head: heads merged, projected, cosine to the text rows."""
    def logits_fn(o):
        merged = o.transpose(1, 2).flatten(2)
        return F.normalize(merged @ head.to(o.dtype), dim=-1) @ text.to(o.dtype).t()
    return logits_fn


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
    elif attention == 'k-k':
        attn = torch.softmax(k @ k.transpose(2, 3) * scale, -1)
    elif attention == 'identity':
        attn = None
    elif attention == 'naclip':
        logits = k @ k.transpose(2, 3) * scale
        prefix = 0 if drop_cls else 1
        window = torch.zeros(length, length, dtype=logits.dtype)
        window[prefix:, prefix:] = naclip_addition(grid, std=5.0)
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


def official_interpolate_pos_encoding(pos_embed, patch_size, x, w, h):
    """``interpolate_pos_encoding`` as the official code has it, in DINO's terms
    (facebookresearch/dino@7c446df ``vision_transformer.py``; CASS vendors the same). The SCLIP
    family's CLIP has the same (ProxyCLIP's open_clip/transformer.py, mc-lan/ProxyCLIP@e7b767f;
    SCLIP, ClearCLIP, NACLIP and CASS alike) on its (1 + N, C) embedding with a square patch:
    pass it as ``pos_embed[None]``. pos_embed (1, 1 + N, C); w, h: the input's height and width
    (the official names); the grid is resampled by bicubic scale factors (g + 0.1) / √N."""
    npatch = x.shape[1] - 1
    N = pos_embed.shape[1] - 1
    if npatch == N and w == h:
        return pos_embed
    class_pos_embed = pos_embed[:, 0]
    patch_pos_embed = pos_embed[:, 1:]
    dim = x.shape[-1]
    w0 = w // patch_size
    h0 = h // patch_size
    w0, h0 = w0 + 0.1, h0 + 0.1
    patch_pos_embed = F.interpolate(
        patch_pos_embed.reshape(1, int(math.sqrt(N)), int(math.sqrt(N)), dim).permute(0, 3, 1, 2),
        scale_factor=(w0 / math.sqrt(N), h0 / math.sqrt(N)),
        mode='bicubic',
    )
    assert int(w0) == patch_pos_embed.shape[-2] and int(h0) == patch_pos_embed.shape[-1]
    patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).view(1, -1, dim)
    return torch.cat((class_pos_embed.unsqueeze(0), patch_pos_embed), dim=1)


def reference_pamr(image, mask, steps, dilations):
    """PAMR as docs/specs/pamr.md states it, with clamped index shifts instead of the official
    shift kernels: image (B, K, H, W), mask (B, C, h, w) → (B, C, H, W)."""
    height, width = image.shape[-2:]
    mask = F.interpolate(mask, size=(height, width), mode='bilinear', align_corners=True)

    def shifted(x, dy, dx):  # x[..., clamp(i + dy), clamp(j + dx)]
        rows = (torch.arange(height) + dy).clamp(0, height - 1)
        cols = (torch.arange(width) + dx).clamp(0, width - 1)
        return x[..., rows, :][..., cols]

    ring = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]
    window = [(a, b) for a in (-1, 0, 1) for b in (-1, 0, 1)]
    offsets = [(a * d, b * d) for d in dilations for a, b in ring]
    spread = torch.stack([shifted(image, a * d, b * d) for d in dilations for a, b in window],
                         dim=2).std(dim=2, keepdim=True)
    distance = torch.stack([(image - shifted(image, dy, dx)).abs() for dy, dx in offsets], dim=2)
    affinity = torch.softmax((-distance / (1e-8 + 0.1 * spread)).mean(1, keepdim=True), dim=2)
    for _ in range(steps):
        mask = (torch.stack([shifted(mask, dy, dx) for dy, dx in offsets], dim=2)
                * affinity).sum(2)
    return mask


def naclip_addition(grid, std):
    """NACLIP's Ω as its official code computes it (clip/model.py ``gaussian_window`` and
    ``get_attention_addition``): a float32 window from ``linspace`` coordinates, convolved with a
    one-hot map per patch; (N, N) float32."""
    height, width = grid
    constant = 1 / (std * math.sqrt(2))
    axes = []
    for dim in (2 * height - 1, 2 * width - 1):
        start = -(dim - 1) / 2.0
        axes.append(torch.linspace(start=start * constant, end=(start + (dim - 1)) * constant,
                                   steps=dim, dtype=torch.float))
    window = torch.exp(-(torch.stack(torch.meshgrid(*axes, indexing='ij')) ** 2).sum(0))
    one_hot = torch.einsum('ij,kl->ijkl', torch.eye(height), torch.eye(width))
    one_hot = one_hot.permute((0, 3, 1, 2)).contiguous()
    out = F.conv2d(one_hot.view(-1, height, width).unsqueeze(1), window[None, None],
                   padding='same').squeeze(1)
    return out.view(height * width, height * width)
