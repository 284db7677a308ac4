"""Shared helpers of the golden-output generators in tools/dev (not run in CI).

The generators import official research code from a checkout given on the command line and run
it on CPU in float64 with tiny random weights. Everything here is generic: the synthetic scene,
the tiny OpenAI-format CLIP weights, the in-memory shims that old research code needs on a modern
CPU-only torch, and call recorders that read the official intermediates without editing the
official code.
"""
import contextlib
import importlib
import sys
import types
from typing import Callable, Dict, List

import torch

# CLIP normalisation of the SCLIP-family SegDataPreProcessor (RGB order, 0..255 pixel scale).
CLIP_MEAN = (122.771, 116.746, 104.094)
CLIP_STD = (68.501, 66.632, 70.323)


def import_official(repo: str, *modules: str) -> List[types.ModuleType]:
    """Import modules of an official checkout by name, after the shims old code needs."""
    install_pkg_resources_shim()
    from fsa_seg.compat import ensure_mmcv_ops
    ensure_mmcv_ops()  # mmcv-lite has no compiled ops; mmseg imports a few at import time
    sys.path.insert(0, repo)
    return [importlib.import_module(name) for name in modules]


def install_pkg_resources_shim():
    """OpenAI's clip.py does `from pkg_resources import packaging`; setuptools no longer ships
    pkg_resources. Only `packaging.version.parse` is used (a version warning)."""
    if 'pkg_resources' in sys.modules:
        return
    import packaging.version
    shim = types.ModuleType('pkg_resources')
    shim.packaging = packaging
    sys.modules['pkg_resources'] = shim


def layernorm_in_input_dtype(clip_model_module):
    """The vendored OpenAI `LayerNorm` always computes in float32 and casts back; make it compute
    in the input dtype so that a float64 run stays float64 (the only numerical change)."""
    clip_model_module.LayerNorm.forward = lambda self, x: torch.nn.LayerNorm.forward(self, x)


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def snapshot(obj):
    """A copy of the tensors in obj (nested tuples, lists and dicts), other values as they are."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, (tuple, list)):
        return type(obj)(snapshot(o) for o in obj)
    if isinstance(obj, dict):
        return {k: snapshot(v) for k, v in obj.items()}
    return obj


class Recorder:
    """Wraps `owner.name` (a function or method) and records every call's args and result."""

    def __init__(self, owner, name: str):
        self.owner, self.name = owner, name
        self.calls: List[Dict] = []
        self.active = True

    def __enter__(self):
        self.original = getattr(self.owner, self.name)
        self.had_own = isinstance(self.owner, torch.nn.Module) and self.name in vars(self.owner)
        original = self.original

        def wrapper(*args, **kwargs):
            # snapshots: official code updates tensors in place after returning them
            # (`x += re_feats`, `image_features /= ...`)
            record = dict(args=snapshot(args), kwargs=snapshot(kwargs)) if self.active else None
            out = original(*args, **kwargs)
            if self.active:
                record['out'] = snapshot(out)
                self.calls.append(record)
            return out

        setattr(self.owner, self.name, wrapper)
        return self

    def __exit__(self, *exc):
        if isinstance(self.owner, torch.nn.Module) and not self.had_own:
            delattr(self.owner, self.name)  # back to the class's method
        else:
            setattr(self.owner, self.name, self.original)


def tiny_openai_visual_state_dict(width: int, layers: int, patch: int, grid: int, out_dim: int,
                                  seed: int, qk_gain: float = 1.0,
                                  out_gain: float = 1.0) -> Dict[str, torch.Tensor]:
    """Random weights of OpenAI CLIP's `VisionTransformer`, with OpenAI's init scales, plus random
    LayerNorm affines and biases (OpenAI initialises them to 1/0, which would hide mistakes in
    their use). `qk_gain` scales the q and k rows of `in_proj` (sharper attention), `out_gain` the
    attention `out_proj` (a larger attention branch): with OpenAI's scales a random 12-layer
    model gives nearly uniform attention and a last block whose output varies little over the
    patches. Rounded to float16, so that they are stored in half the space and cast to float64
    exactly."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape, std):
        return torch.randn(*shape, generator=g, dtype=torch.float64) * std

    scale = width ** -0.5
    proj_std = scale * (2 * layers) ** -0.5
    sd = {
        'class_embedding': randn(width, std=scale),
        'positional_embedding': randn(grid * grid + 1, width, std=scale),
        'proj': randn(width, out_dim, std=scale),
        'conv1.weight': randn(width, 3, patch, patch, std=(3 * patch * patch) ** -0.5),
        'ln_pre.weight': 1 + randn(width, std=0.1), 'ln_pre.bias': randn(width, std=0.05),
        'ln_post.weight': 1 + randn(width, std=0.1), 'ln_post.bias': randn(width, std=0.05),
    }
    for i in range(layers):
        p = f'transformer.resblocks.{i}.'
        sd.update({
            p + 'attn.in_proj_weight': randn(3 * width, width, std=scale) * torch.tensor(
                [qk_gain] * (2 * width) + [1.0] * width, dtype=torch.float64)[:, None],
            p + 'attn.in_proj_bias': randn(3 * width, std=0.05),
            p + 'attn.out_proj.weight': randn(width, width, std=proj_std * out_gain),
            p + 'attn.out_proj.bias': randn(width, std=0.02),
            p + 'ln_1.weight': 1 + randn(width, std=0.1), p + 'ln_1.bias': randn(width, std=0.05),
            p + 'mlp.c_fc.weight': randn(4 * width, width, std=(2 * width) ** -0.5),
            p + 'mlp.c_fc.bias': randn(4 * width, std=0.05),
            p + 'mlp.c_proj.weight': randn(width, 4 * width, std=proj_std),
            p + 'mlp.c_proj.bias': randn(width, std=0.02),
            p + 'ln_2.weight': 1 + randn(width, std=0.1), p + 'ln_2.bias': randn(width, std=0.05),
        })
    return {k: v.half() for k, v in sd.items()}


def voronoi_scene(height: int, width: int, n_regions: int, seed: int, noise: float = 6.0):
    """A uint8 RGB scene (3, H, W): Voronoi regions with distinct colours, a smooth shading and a
    little pixel noise (so no two patches are identical), and the region map (H, W)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(n_regions, 2, generator=g, dtype=torch.float64)
    centres = centres * torch.tensor([height, width], dtype=torch.float64)
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float64),
                            torch.arange(width, dtype=torch.float64), indexing='ij')
    d = (ys[None] - centres[:, 0, None, None]) ** 2 + (xs[None] - centres[:, 1, None, None]) ** 2
    regions = d.argmin(0)
    palette = torch.rand(n_regions, 3, generator=g, dtype=torch.float64) * 200 + 25
    image = palette[regions].permute(2, 0, 1)
    shade = 20 * torch.sin(ys / 9.0) * torch.cos(xs / 13.0)
    image = image + shade + noise * torch.randn(3, height, width, generator=g, dtype=torch.float64)
    return image.round().clamp(0, 255).to(torch.uint8), regions


def normalise(image_uint8: torch.Tensor) -> torch.Tensor:
    """SegDataPreProcessor in float64: (x - mean) / std per RGB channel, batch of one."""
    mean = torch.tensor(CLIP_MEAN, dtype=torch.float64)[:, None, None]
    std = torch.tensor(CLIP_STD, dtype=torch.float64)[:, None, None]
    return ((image_uint8.double() - mean) / std)[None]


def unit_rows(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def slide_boxes(h_img: int, w_img: int, crop: int, stride: int):
    """(y1, y2, x1, x2) of mmseg-style slide windows, in the order the SCLIP family visits them."""
    h_grids = max(h_img - crop + stride - 1, 0) // stride + 1
    w_grids = max(w_img - crop + stride - 1, 0) // stride + 1
    boxes = []
    for hi in range(h_grids):
        for wi in range(w_grids):
            y1, x1 = hi * stride, wi * stride
            y2, x2 = min(y1 + crop, h_img), min(x1 + crop, w_img)
            boxes.append((max(y2 - crop, 0), y2, max(x2 - crop, 0), x2))
    return boxes


def write_name_file(path: str, class_names: List[List[str]]):
    """A `cls_*.txt` file in the SCLIP format: one class per line, its names joined by ', '."""
    with open(path, 'w') as f:
        f.write('\n'.join(', '.join(names) for names in class_names))


class TinyClipNet(torch.nn.Module):
    """What `clip.load` returns to a segmentor, reduced to what the segmentors use: `.visual`
    (the official VisionTransformer), `.dtype`, the official `encode_image`, and an
    `encode_text` that returns fixed text features (the tokenizer shim passes the name index)."""

    def __init__(self, visual: torch.nn.Module, text_features: torch.Tensor,
                 encode_image: Callable):
        super().__init__()
        self.visual = visual
        self.register_buffer('text_features', text_features)
        self._encode_image = encode_image

    @property
    def dtype(self):
        return self.visual.conv1.weight.dtype

    def encode_image(self, *args, **kwargs):
        return self._encode_image(self, *args, **kwargs)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.text_features[tokens[:, 0]]


def install_clip_load_shim(clip_module, net: TinyClipNet):
    """`clip.load(name)` -> the tiny net; `clip.tokenize(texts)` -> the index of the name being
    embedded (calls come in name order), repeated once per template."""
    counter = {'i': 0}

    def tokenize(texts, *args, **kwargs):
        idx = counter['i']
        counter['i'] += 1
        return torch.full((len(texts), 1), idx, dtype=torch.long)

    clip_module.load = lambda *args, **kwargs: (net, None)
    clip_module.tokenize = tokenize


def cpu_cuda_shim():
    """Hard-coded `.cuda()` in per-crop code: stay on CPU (a no-op on a CPU tensor)."""
    torch.Tensor.cuda = lambda self, *args, **kwargs: self


def make_text_features(features: torch.Tensor, labels: torch.Tensor, n_regions: int,
                       crop_means: torch.Tensor, mix: float, seed: int) -> torch.Tensor:
    """Unit text embeddings under which patch features (M, D) score highest on their own region's
    text, with realistic confusion. Random tiny CLIPs give features that differ far more between
    crops than between the patches of a crop, so the texts are made orthogonal to the span of
    the crops' mean features (K, D): each is a least-squares region classifier, mixed with a
    random direction, both projected off that span: normalise(mix * w_r + (1 - mix) * noise_r)."""
    g = torch.Generator().manual_seed(seed)
    feats = unit_rows(features)
    basis = torch.linalg.qr(unit_rows(crop_means).t()).Q  # (D, K)
    off = lambda x: x - (x @ basis) @ basis.t()  # noqa: E731
    onehot = torch.nn.functional.one_hot(labels, n_regions).double()
    w = torch.linalg.lstsq(feats - feats.mean(0), onehot - onehot.mean(0)).solution.t()
    noise = torch.randn(w.shape, generator=g, dtype=torch.float64)
    return unit_rows(mix * unit_rows(off(w)) + (1 - mix) * unit_rows(off(noise)))


def patch_labels(regions: torch.Tensor, grid_hw) -> torch.Tensor:
    """The region at the centre of each patch of a crop, row-major (N,)."""
    h, w = grid_hw
    ph, pw = regions.shape[0] // h, regions.shape[1] // w
    return regions[ph // 2::ph, pw // 2::pw][:h, :w].reshape(-1)


def fsize(path: str) -> str:
    import os
    return f'{os.path.getsize(path) / 1024:.0f} kB'


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item() if a.numel() else 0.0
