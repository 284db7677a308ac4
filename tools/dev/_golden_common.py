"""Shared helpers of the golden-output generators in tools/dev (not run in CI).

The generators import official research code from a checkout given on the command line and run
it on CPU in float64 with tiny random weights. Everything here is shared: the command line, the
synthetic scene, the tiny OpenAI-format CLIP weights and the set-up the SCLIP-family generators
feed the official code, the in-memory shims that old research code needs on a modern CPU-only
torch, and call recorders that read the official intermediates without editing the official code.
"""
import argparse
import contextlib
import importlib
import os
import sys
import tempfile
import types
from typing import Callable, Dict, List, NamedTuple

import torch

# CLIP normalisation of the SCLIP-family SegDataPreProcessor (RGB order, 0..255 pixel scale).
CLIP_MEAN = (122.771, 116.746, 104.094)
CLIP_STD = (68.501, 66.632, 70.323)

# The tiny set-up of the SCLIP-family generators (ResCLIP, SC-CLIP): a 12-layer CLIP like B/16, so
# that the official hard-coded layer indices apply unchanged; one name with two synonyms; a
# non-square image whose slide windows overlap, resized back to a larger original shape.
CLIP_CFG = dict(input_resolution=48, patch_size=8, width=16, layers=12, heads=4, output_dim=32)
QK_GAIN, OUT_GAIN = 3.0, 5.0
CLASS_NAMES = [['c0'], ['c1'], ['c2'], ['c3'], ['c4a', 'c4b']]
QUERY_IDX = [0, 1, 2, 3, 4, 4]
IMAGE_HW, ORI_HW, CROP, STRIDE = (72, 100), (90, 125), 48, 24
SEEDS = dict(weights=0, scene=3, text=5)
TEXT_MIX = 0.9


def parse_generator_args(doc: str, official: str, commit: str, default_out: str):
    """The generators' command line: an extracted checkout of `official` (owner/name), the commit
    it was extracted from (it must be the one the generator documents) and the output file."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument('repo', help=f'extracted checkout of {official}')
    parser.add_argument('--commit', required=True, help='the commit it was extracted from')
    parser.add_argument('--out', default=default_out)
    args = parser.parse_args()
    if not commit.startswith(args.commit):
        sys.exit(f'this generator documents {official.split("/")[1]} @ {commit[:7]}, '
                 f'not {args.commit}')
    return args


def import_official(repo: str, *modules: str) -> List[types.ModuleType]:
    """Import modules of an official checkout by name, after the shims old code needs."""
    # fsa_seg first: on import it looks for the real pkg_resources, which the shim would hide
    from fsa_seg.compat import ensure_mmcv_ops
    ensure_mmcv_ops()  # mmcv-lite has no compiled ops; mmseg imports a few at import time
    install_pkg_resources_shim()
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


def import_official_clip(repo: str, segmentor_module: str):
    """The official `clip`, `clip.model` (its LayerNorm in the input dtype) and segmentor
    modules of an SCLIP-family checkout."""
    clip_mod, model_mod, seg_mod = import_official(repo, 'clip', 'clip.model', segmentor_module)
    layernorm_in_input_dtype(model_mod)
    return clip_mod, model_mod, seg_mod


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


class TinyScene(NamedTuple):
    """What the SCLIP-family generators feed the official code, all from the fixed seeds."""
    state_dict: Dict[str, torch.Tensor]  # tiny OpenAI-format visual weights (float16)
    image: torch.Tensor  # uint8 (3, H, W)
    regions: torch.Tensor  # (H, W) region of each pixel
    inputs: torch.Tensor  # the normalised image (1, 3, H, W), float64
    name_path: str  # the class-name file
    boxes: list  # slide windows (y1, y2, x1, x2)
    probe: torch.Tensor  # text features for a first run that the real ones are made from


def tiny_scene() -> TinyScene:
    p = CLIP_CFG['patch_size']
    state_dict = tiny_openai_visual_state_dict(
        CLIP_CFG['width'], CLIP_CFG['layers'], p, CLIP_CFG['input_resolution'] // p,
        CLIP_CFG['output_dim'], seed=SEEDS['weights'], qk_gain=QK_GAIN, out_gain=OUT_GAIN)
    image, regions = voronoi_scene(*IMAGE_HW, n_regions=len(QUERY_IDX), seed=SEEDS['scene'])
    name_path = os.path.join(tempfile.mkdtemp(), 'cls_tiny.txt')
    write_name_file(name_path, CLASS_NAMES)
    probe = torch.eye(len(QUERY_IDX), CLIP_CFG['output_dim'], dtype=torch.float64)
    return TinyScene(state_dict, image, regions, normalise(image), name_path,
                     slide_boxes(*IMAGE_HW, CROP, STRIDE), probe)


def region_text_features(scene: TinyScene, view_features: List[torch.Tensor], views,
                          crop_means: torch.Tensor) -> torch.Tensor:
    """`make_text_features` for the patch features (N, D) of views (y1, y2, x1, x2) of the
    scene, each patch labelled with the region at its centre (pixels past the last whole patch
    are left out)."""
    p = CLIP_CFG['patch_size']
    labels = []
    for y1, y2, x1, x2 in views:
        gh, gw = (y2 - y1) // p, (x2 - x1) // p
        labels.append(patch_labels(scene.regions[y1:y1 + gh * p, x1:x1 + gw * p], (gh, gw)))
    return make_text_features(torch.cat(view_features), torch.cat(labels), len(QUERY_IDX),
                              crop_means, TEXT_MIX, seed=SEEDS['text'])


def install_tiny_clip(clip_mod, model_mod, state_dict, text: torch.Tensor,
                      dtype: torch.dtype) -> TinyClipNet:
    """Makes the official `clip.load` return the official VisionTransformer with the tiny weights
    and fixed text features, in dtype."""
    visual = model_mod.VisionTransformer(**CLIP_CFG).to(dtype).eval()
    visual.load_state_dict({k: v.to(dtype) for k, v in state_dict.items()}, strict=True)
    net = TinyClipNet(visual, text.to(dtype), model_mod.CLIP.encode_image).eval()
    install_clip_load_shim(clip_mod, net)
    return net


def data_sample(ori_hw, img_hw=IMAGE_HW):
    from mmseg.structures import SegDataSample
    ds = SegDataSample()
    ds.set_metainfo(dict(ori_shape=ori_hw, img_shape=img_hw, pad_shape=img_hw,
                         padding_size=[0, 0, 0, 0]))
    return ds


@contextlib.contextmanager
def custom_attn_calls(visual: torch.nn.Module, describe: Callable):
    """Records each call of the official `visual.custom_attn` as
    describe(args, kwargs, bmm_args, out), bmm_args being the arguments of its `torch.bmm` calls
    in order (snapshots). The wrapper is an instance attribute, removed on exit."""
    calls = []
    original = visual.custom_attn

    def custom_attn(*args, **kwargs):
        with Recorder(torch, 'bmm') as bmm:
            out = original(*args, **kwargs)
        calls.append(describe(args, kwargs, [c['args'] for c in bmm.calls], out))
        return out

    visual.custom_attn = custom_attn
    try:
        yield calls
    finally:
        del visual.custom_attn


def normalisation_keys() -> Dict[str, List[float]]:
    return dict(norm_mean=list(CLIP_MEAN), norm_std=list(CLIP_STD))


def tiny_fixture_header(source: str, scene: TinyScene) -> Dict:
    """The fixture keys that the SCLIP-family generators share (tests/fixtures/README.md)."""
    return {
        'source': source,
        'clip_cfg': dict(CLIP_CFG),
        'clip_state_dict': scene.state_dict,
        'image_uint8': scene.image,
        **normalisation_keys(),
        'ori_shape': ORI_HW,
        'class_names': CLASS_NAMES,
        'query_idx': torch.tensor(QUERY_IDX),
    }


def save_fixture(fixture: Dict, path: str):
    torch.save(fixture, path)
    print('wrote', path, f'{os.path.getsize(path) / 1024:.0f} kB')


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item() if a.numel() else 0.0
