"""Golden fixtures of the official CASS code (MICV-yonsei/CASS @228ecdd), float64, on CPU.

Developer tool, not run in CI and not imported by the package or the tests. It runs the
*official* code, taken from a checkout outside this repository (nothing of it is copied here),
on tiny random models, and writes ``tests/fixtures/cass_tiny_*.pt`` in the format of the team's
``cass_tiny.pt`` (keys documented in ``tests/fixtures/README.md``).

Get the official code::

    # the team's `fetch` tool gives a git dir <mirror> of MICV-yonsei/CASS (commit 228ecdd)
    mkdir -p /tmp/cass && git --git-dir=<mirror> archive HEAD | tar -x -C /tmp/cass

It imports ``cass_segmentor`` (hence mmseg, torchvision, scipy and scikit-learn: install the
latter outside the project, e.g. ``pip install --target /tmp/cass_deps scikit-learn narwhals``
and add that folder to PYTHONPATH). Run from the repository root::

    PYTHONPATH=$PWD:/tmp/cass_deps python tools/dev/make_cass_golden.py /tmp/cass \\
        --check tests/fixtures/cass_tiny.pt              # rerun a fixture from its own inputs
    PYTHONPATH=$PWD:/tmp/cass_deps python tools/dev/make_cass_golden.py /tmp/cass \\
        --make voc20 cityscapes --out-dir tests/fixtures # write new fixtures (then --check them)

How the official code is run (in-memory shims only; every official file is left as it is):

* ``CASS_segmentor.__init__`` runs as written, with a class-name file in the official
  ``cls_*.txt`` format, ``device='cpu'``, ``pamr_steps=0`` (PAMR off, as every official
  evaluation) and ``dataset='./configs/cfg_<name>.py'`` (the model parses the benchmark name).
  ``clip.load`` returns a bare ``clip.model.CLIP`` that holds only a tiny float64
  ``clip.model.VisionTransformer`` (the image side is all that CASS runs), and
  ``_encode_text_features`` returns the given L2-normalised text features (no text tower, no
  hard-coded 'cuda' tokens). ``DinoSelfAttention.__init__`` runs as written, with
  ``vision_transformer.vit_base`` building the tiny DINO and ``_load_weights`` loading its weights.
* Two changes keep the run float64 (those of ``cass_tiny.pt``): the vendored CLIP ``LayerNorm``
  computes in the input's dtype (the original casts to float32), and the ``dino_attn.half()``
  cast is skipped (the returned qkv is a Tensor subclass whose ``half()`` is the identity;
  ``--dino-fp16`` keeps the cast). DINO's float32 input (``ToTensor``/``Normalize`` as written)
  is cast to float64 on entering the model (exact).
* Inference is ``CASS_segmentor.predict`` (hence ``forward_slide``/``forward_feature``/
  ``postprocess_result``), after ``torch.manual_seed(svd_seed)``, inside ``torch.no_grad()``.
* Intermediates are recorded by wrapping official functions (arguments and results are recorded,
  never changed): the DINO forward (its PIL input and the last block's qkv), ``custom_attn``
  (called with its own ``with_attn=True`` option, which returns the same output plus the final
  attention; the values are the second argument of its last ``torch.bmm``), ``compute_spectrum``,
  ``linear_sum_assignment``, ``optimal_q``, ``_scale_singular_values``, ``_normalize_key_range``,
  ``_normalize_attention_range``, ``_get_attention_addition``, ``hierarchical_prompt``, the last
  ``F.interpolate`` of ``forward_feature`` (its input = the crop logits on the patch grid) and
  ``postprocess_result`` (its input = the logits after the final resize, before x logit_scale).

``--check`` reruns a fixture from its stored weights, image, text and settings and prints the max
|diff| of every key (``svd_*`` through U diag(s) V^T). Fixtures made here rerun bit-identically.
``cass_tiny.pt`` differs by one float32 ulp in ``crop0.omega`` (float32 ``torch.exp`` differs
between machines/builds), hence ~1e-9 from ``attn`` on; ``--omega-from-fixture`` injects the stored
Omega and then everything matches to <= 8e-16 (see tests/fixtures/README.md). A fixture takes
1.5-3 min on 2 CPU cores (the fp16-DINO rerun for ``noise`` included).
"""
import argparse
import contextlib
import importlib
import importlib.util
import os
import sys
import tempfile
import types
from functools import partial
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

NORM_MEAN = [122.771, 116.746, 104.094]  # CASS's SegDataPreProcessor
NORM_STD = [68.501, 66.632, 70.323]

# Fixed by the official code, stored for the reader (CASS has no options for them).
OFFICIAL_CONSTANTS = dict(k_eigen=20, scale_factor=10.0, svd_q=10, svd_niter=2, topk_patches=2,
                          pamr=False)

PRESETS = {
    # VOC20 path: singular-value stretch off, global prior from the whole image. 3 heads; the
    # crop (112) is neither CLIP's nor DINO's native size (96), so both position embeddings are
    # interpolated per crop (CLIP 6x6 -> 7x7, DINO 12x12 -> 14x14); the last row and column of
    # windows are shifted inside the image. Plus a whole-image run ('voc21': stretch on, prior =
    # the image's own CLS) on a 171x233 image: CLIP grid 10x14, DINO sees it squashed to 171x171.
    'voc20': dict(
        variant='voc20', dataset='voc20', seed=20,
        clip_cfg=dict(res=96, patch=16, width=48, layers=2, heads=3, out=24),
        dino_cfg=dict(img=96, width=48, depth=2, heads=3, patch=8, qkv_bias=True, mlp_ratio=4,
                      ln_eps=1e-6),
        image_hw=(184, 264), regions=7,
        class_names=[['c0'], ['c1a', 'c1b'], ['c2'], ['c3a', 'c3b', 'c3c'], ['c4'], ['c5']],
        clusters=4,
        hparams=dict(global_semantics_weight=0.4, mean_vector_weight=0.02, prob_thd=0.25,
                     logit_scale=40.0, gaussian_std=5.0, slide_crop=112, slide_stride=56),
        svd_seed=4321, subsample=5,
        whole=dict(dataset='voc21', image_hw=(171, 233), global_semantics_weight=0.1,
                   mean_vector_weight=0.03)),
    # Cityscapes path: stretch off, global prior from each crop's own CLS (x_last). The crop is
    # CLIP's and DINO's native size; stride 96 != crop/2; 4 heads of width 12; 3 CLIP layers.
    'cityscapes': dict(
        variant='cityscapes', dataset='city_scapes', seed=19,
        clip_cfg=dict(res=112, patch=16, width=48, layers=3, heads=4, out=32),
        dino_cfg=dict(img=112, width=48, depth=2, heads=4, patch=8, qkv_bias=True, mlp_ratio=4,
                      ln_eps=1e-6),
        image_hw=(176, 300), regions=5,
        class_names=[['c0'], ['c1'], ['c2a', 'c2b'], ['c3'], ['c4']],
        clusters=3,
        hparams=dict(global_semantics_weight=0.1, mean_vector_weight=0.03, prob_thd=0.0,
                     logit_scale=40.0, gaussian_std=5.0, slide_crop=112, slide_stride=96),
        svd_seed=7, subsample=5, whole=None),
}


# --------------------------------------------------------------------------- official imports

def import_official(checkout):
    """Import the official modules from ``checkout`` (its own package layout, unchanged)."""
    checkout = os.path.abspath(checkout)
    if not os.path.isfile(os.path.join(checkout, 'cass_segmentor.py')):
        sys.exit(f'{checkout} is not a CASS checkout (no cass_segmentor.py)')
    if importlib.util.find_spec('sklearn') is None:
        sys.exit('the official CASS code needs scikit-learn: pip install --target DIR '
                 'scikit-learn narwhals, and add DIR to PYTHONPATH')
    # fsa_seg first: on import it looks for the real pkg_resources, which the shim would hide
    from fsa_seg.compat import ensure_mmcv_ops  # mmseg.models imports mmcv.ops at module level
    ensure_mmcv_ops()
    if importlib.util.find_spec('pkg_resources') is None:
        # clip/clip.py does `from pkg_resources import packaging` (gone from new setuptools)
        import packaging.version
        sys.modules['pkg_resources'] = types.SimpleNamespace(packaging=packaging)
    sys.path.insert(0, checkout)
    seg = importlib.import_module('cass_segmentor')
    return types.SimpleNamespace(
        seg=seg, Segmentor=seg.CASS_segmentor, clip=importlib.import_module('clip'),
        clip_model=importlib.import_module('clip.model'),
        dino_attention=sys.modules[seg.DinoSelfAttention.__module__],
        vits=importlib.import_module('vision_transformer'))  # dino/, put on sys.path by dino/


def build_clip_visual(off, c):
    return off.clip_model.VisionTransformer(c['res'], c['patch'], c['width'], c['layers'],
                                            c['heads'], c['out'])


def build_dino(off, d):
    return off.vits.VisionTransformer(
        img_size=[d['img']], patch_size=d['patch'], embed_dim=d['width'], depth=d['depth'],
        num_heads=d['heads'], qkv_bias=d['qkv_bias'], mlp_ratio=d['mlp_ratio'],
        norm_layer=partial(nn.LayerNorm, eps=d['ln_eps']))


# ------------------------------------------------------------------------------ random inputs

def random_state_dict(module, gen):
    """float32 weights with every parameter random (LayerNorms and biases too)."""
    out = {}
    for name, p in module.state_dict().items():
        leaf = name.rsplit('.', 1)[-1]
        noise = torch.randn(p.shape, generator=gen)
        if leaf == 'weight' and p.ndim == 1:  # LayerNorm
            out[name] = 1 + 0.1 * noise
        elif leaf == 'bias':
            out[name] = 0.1 * noise
        elif leaf in ('positional_embedding', 'pos_embed', 'cls_token'):
            out[name] = 0.5 * noise
        elif leaf == 'class_embedding':
            out[name] = 0.1 * noise
        else:  # x @ proj: fan-in is dim 0; Linear/Conv weights: fan-in is everything but dim 0
            fan_in = p.shape[0] if leaf == 'proj' else p[0].numel()
            out[name] = noise * fan_in ** -0.5
    return out


def voronoi_scene(hw, colours, rng):
    """(3, H, W) uint8 and the (H, W) region map: Voronoi regions with their own colours
    (one region per row of ``colours``), a vertical gradient and pixel noise."""
    h, w = hw
    centres = rng.uniform(0, 1, size=(len(colours), 2)) * (h, w)
    yy, xx = np.mgrid[:h, :w]
    label = ((yy[..., None] - centres[:, 0]) ** 2
             + (xx[..., None] - centres[:, 1]) ** 2).argmin(-1)
    img = colours[label] + 20 * np.sin(yy / 23.0)[..., None] + rng.normal(0, 10, (h, w, 3))
    img = torch.from_numpy(np.clip(np.rint(img), 0, 255).astype(np.uint8)).permute(2, 0, 1)
    return img.contiguous(), label


def float32_normalised(rows):
    rows = rows.float()
    return (rows / rows.norm(dim=1, keepdim=True)).double()


def region_aligned_text(runs, patch, class_names, gen, spread=0.5):
    """Text features under which the prediction follows the regions, as real text does.

    ``runs``: (recorder, boxes, region map, global_semantics_weight) of first runs made with
    any text (here the slide run only: balancing on the whole-image run too gave no more
    classes there and fewer in the slide run). They give what does not depend on the text:
    the official normalised patch features F of every crop (the argument of
    ``hierarchical_prompt``) and the normalised CLS embedding x of the global prior. Tiny
    random CLIPs give nearly parallel patch features (|mean F| ~ 0.96), so a random text row
    scores every patch alike. Instead, class k's names get the direction of region k's mean
    feature minus the regions' average, plus their own random part (synonyms differ),
    orthogonal to the mean feature u; then each name's component along u is set (bisection)
    so that its mean logit (1-g) F.t + g x.t, averaged over the runs, is about 0: no class
    wins everywhere.
    """
    feats, labels, mixed = [], [], []
    for rec, boxes, label, gamma in runs:
        run_feats, run_priors = [], []
        for (y1, _, x1, _), call in zip(boxes, rec.calls):
            h, w = call['n_patches']
            ys = y1 + patch * np.arange(h) + patch // 2
            xs = x1 + patch * np.arange(w) + patch // 2
            labels.append(torch.from_numpy(label[np.ix_(ys, xs)].reshape(-1)))
            run_feats.append(call['image_features'][0])
            run_priors.append(F.normalize(call['prior_cls'], dim=-1).expand(h * w, -1))
        run_feats = torch.cat(run_feats)
        feats.append(run_feats)
        mixed.append((1 - gamma) * run_feats.mean(0) + gamma * torch.cat(run_priors).mean(0))
    feats, labels, mixed = torch.cat(feats), torch.cat(labels), torch.stack(mixed).mean(0)
    u = F.normalize(feats.mean(0), dim=0)
    means = torch.stack([feats[labels == r].mean(0) for r in range(len(class_names))])
    directions = F.normalize(means - means.mean(0), dim=1)
    rows = []
    for k, names in enumerate(class_names):
        for _ in names:
            v = directions[k] + spread * torch.randn(u.shape[0], generator=gen,
                                                     dtype=torch.float64)
            v = v - (v @ u) * u
            target = 0.01 * torch.randn((), generator=gen, dtype=torch.float64)
            lo, hi = -3.0, 3.0
            for _ in range(60):
                mid = (lo + hi) / 2
                if F.normalize(v + mid * u, dim=0) @ mixed < target:
                    lo = mid
                else:
                    hi = mid
            rows.append(v + lo * u)
    return float32_normalised(torch.stack(rows))


def ward_merge_heights(text_features):
    from scipy.cluster.hierarchy import linkage
    from scipy.spatial.distance import squareform
    from sklearn.metrics.pairwise import cosine_distances
    d = cosine_distances(text_features.numpy())
    return np.sort(linkage(squareform(d), method='ward')[:, 2])


def h_threshold_for(text_features, clusters):
    """A threshold halfway between two Ward merge heights, leaving `clusters` clusters."""
    heights = ward_merge_heights(text_features)
    merges = len(heights) + 1 - clusters
    return round(float((heights[merges - 1] + heights[merges]) / 2), 4)


def normalised_input(image_uint8):
    mean = torch.tensor(NORM_MEAN, dtype=torch.float64)[:, None, None]
    std = torch.tensor(NORM_STD, dtype=torch.float64)[:, None, None]
    return ((image_uint8.double() - mean) / std)[None]


def slide_boxes(h, w, crop, stride):
    """The windows of the official forward_slide, in its order, as (y1, y2, x1, x2)."""
    boxes = []
    for hi in range(max(h - crop + stride - 1, 0) // stride + 1):
        for wi in range(max(w - crop + stride - 1, 0) // stride + 1):
            y2, x2 = min(hi * stride + crop, h), min(wi * stride + crop, w)
            boxes.append((max(y2 - crop, 0), y2, max(x2 - crop, 0), x2))
    return boxes


# ------------------------------------------------------------------------- shims and recording

class _HalfIsIdentity(torch.Tensor):
    """DINO's qkv with ``.half()`` as a no-op: skips the official fp16 cast of ``dino_attn``."""

    def half(self, *args, **kwargs):
        return self.as_subclass(torch.Tensor)


class Recorder:
    """Arguments/results of official functions, one dict per ``forward_feature`` call."""

    def __init__(self):
        self.calls = []
        self.postprocess_inputs = []

    @property
    def current(self):
        return self.calls[-1]


def _wrap_static(stack, cls, name, make_wrapper):
    orig = getattr(cls, name)
    stack.enter_context(mock.patch.object(cls, name, staticmethod(make_wrapper(orig))))


def _wrap_method(stack, cls, name, make_wrapper):
    orig = getattr(cls, name)
    stack.enter_context(mock.patch.object(cls, name, make_wrapper(orig)))


@contextlib.contextmanager
def official_run(off, fx_like, dino_fp16=False, omega=None):
    """Shims that let the official code build and run on CPU, in float64, without downloads,
    plus the recording wrappers. Yields the Recorder."""
    rec = Recorder()
    c, d = fx_like['clip_cfg'], fx_like['dino_cfg']
    text_features = fx_like['text_features']
    visual = build_clip_visual(off, c).double()
    visual.load_state_dict({k: v.double() for k, v in fx_like['clip_state_dict'].items()})
    net = off.clip_model.CLIP.__new__(off.clip_model.CLIP)  # image side only (no text tower)
    nn.Module.__init__(net)
    net.visual = visual
    net.eval()
    dino_sd = {k: v.double() for k, v in fx_like['dino_state_dict'].items()}
    VT, Seg = off.clip_model.VisionTransformer, off.Segmentor
    DinoSA = off.dino_attention.DinoSelfAttention

    def tiny_dino(patch_size, num_classes):
        assert patch_size == d['patch'] and num_classes == 0
        model = build_dino(off, d).double()
        entry = model.get_intermediate_feat  # float32 ToTensor/Normalize output -> float64

        def get_intermediate_feat(x):
            return entry(x.to(torch.float64))
        model.get_intermediate_feat = get_intermediate_feat
        return model

    def load_tiny_dino_weights(self):
        self.model.load_state_dict(dino_sd, strict=True)

    def encode_text_features(self, words, net_):
        assert len(words) == len(text_features)
        return text_features.clone()

    def layer_norm_in_input_dtype(self, x):
        return nn.LayerNorm.forward(self, x)

    with contextlib.ExitStack() as stack:
        def patch(obj, name, value):
            stack.enter_context(mock.patch.object(obj, name, value))
        patch(off.clip, 'load', lambda *a, **k: (net, None))
        patch(Seg, '_encode_text_features', encode_text_features)
        patch(off.vits, 'vit_base', tiny_dino)
        patch(DinoSA, '_load_weights', load_tiny_dino_weights)
        patch(off.clip_model.LayerNorm, 'forward', layer_norm_in_input_dtype)

        def forward_feature(orig):
            def wrapper(self, img, whole_img):
                call = dict(img=img, whole_img_given=whole_img is not None, dino=[],
                            spectra=[], svd=[], s_scaled=[], sparse_adj=[], omega=[], key=[])
                rec.calls.append(call)
                interpolate = F.interpolate

                def recording_interpolate(inp, *args, **kwargs):
                    call['last_interpolate_input'] = inp
                    return interpolate(inp, *args, **kwargs)
                with mock.patch.object(F, 'interpolate', recording_interpolate):
                    out = orig(self, img, whole_img)
                call['out'] = out
                return out
            return wrapper
        _wrap_method(stack, Seg, 'forward_feature', forward_feature)

        def dino_forward(orig):
            def wrapper(self, image):
                qkv = orig(self, image)
                rec.current['dino'].append((np.array(image), qkv))
                return qkv if dino_fp16 else qkv.as_subclass(_HalfIsIdentity)
            return wrapper
        _wrap_method(stack, DinoSA, 'forward', dino_forward)

        def custom_attn(orig):
            def wrapper(self, attn_layer, x, n_patches, dino_type, dino_attn, dino_n_patches,
                        dataset, **kwargs):
                bmm, bmm_args = torch.bmm, []

                def recording_bmm(a, b, *args, **kw):
                    bmm_args.append((a, b))
                    return bmm(a, b, *args, **kw)
                with mock.patch.object(torch, 'bmm', recording_bmm):
                    out, attn = orig(self, attn_layer, x, n_patches, dino_type, dino_attn,
                                     dino_n_patches, dataset, with_attn=True, **kwargs)
                rec.current.update(attn=attn, attn_output=out, values=bmm_args[-1][1],
                                   n_patches=n_patches, dino_n_patches=dino_n_patches)
                return out
            return wrapper
        _wrap_method(stack, VT, 'custom_attn', custom_attn)

        def recording(key, static=False):
            def make(orig):
                def wrapper(*args, **kwargs):
                    out = orig(*args, **kwargs)
                    rec.current[key].append((args if static else args[1:], out))
                    return out
                return wrapper
            return make
        _wrap_static(stack, VT, 'compute_spectrum', recording('spectra', static=True))
        _wrap_static(stack, VT, 'optimal_q', recording('svd', static=True))
        _wrap_method(stack, VT, '_scale_singular_values', recording('s_scaled'))
        _wrap_method(stack, VT, '_normalize_key_range', recording('key'))
        _wrap_method(stack, VT, '_normalize_attention_range', recording('sparse_adj'))
        if omega is not None:  # diagnostic (--omega-from-fixture): a given Omega for its grid
            own_omega = VT._get_attention_addition

            def given_omega(self, n_patches):
                if omega.shape[0] != n_patches[0] * n_patches[1]:
                    return own_omega(self, n_patches)
                return omega[None].to(self.class_embedding.dtype)
            patch(VT, '_get_attention_addition', given_omega)
        _wrap_method(stack, VT, '_get_attention_addition', recording('omega'))

        lsa = off.clip_model.linear_sum_assignment

        def recording_lsa(cost):
            rows, cols = lsa(cost)
            rec.current.update(cost=torch.from_numpy(cost.copy()), col_ind=torch.from_numpy(
                np.asarray(cols, dtype=np.int64)), row_ind=np.asarray(rows))
            return rows, cols
        patch(off.clip_model, 'linear_sum_assignment', recording_lsa)

        def encode_image(orig):  # the CLS embedding behind global_clip_sim
            def wrapper(self, image, *args, **kwargs):
                out = orig(self, image, *args, **kwargs)
                if kwargs.get('return_cls'):  # whole-image prior (the crop's is then unused)
                    rec.current['prior_cls'] = out
                elif not rec.current['whole_img_given']:  # x_last of this tensor
                    rec.current['prior_cls'] = out[1]
                return out
            return wrapper
        _wrap_method(stack, off.clip_model.CLIP, 'encode_image', encode_image)

        def hierarchical_prompt(orig):
            def wrapper(self, image_features, image_class_similarities):
                out = orig(self, image_features, image_class_similarities)
                rec.current.update(global_clip_sim=image_class_similarities, adjusted_text=out,
                                   image_features=image_features)
                return out
            return wrapper
        _wrap_method(stack, Seg, 'hierarchical_prompt', hierarchical_prompt)

        def postprocess_result(orig):
            def wrapper(self, seg_logits, data_samples):
                rec.postprocess_inputs.append(seg_logits.clone())
                return orig(self, seg_logits, data_samples)
            return wrapper
        _wrap_method(stack, Seg, 'postprocess_result', postprocess_result)
        yield rec


def build_segmentor(off, class_names, hparams, dataset):
    """The official constructor, with a name file in the official cls_*.txt format."""
    with tempfile.TemporaryDirectory() as tmp:
        name_path = os.path.join(tmp, f'cls_{dataset}.txt')
        with open(name_path, 'w') as f:
            f.write('\n'.join(', '.join(names) for names in class_names))
        model = off.Segmentor(
            clip_path='tiny-random', name_path=name_path, device='cpu', arch='reduced',
            attn_strategy='spectral', gaussian_std=hparams['gaussian_std'], pamr_steps=0,
            dino_type='dino_vitb8', scale_up=False, prob_thd=hparams['prob_thd'],
            logit_scale=hparams['logit_scale'], slide_stride=hparams['slide_stride'],
            slide_crop=hparams['slide_crop'],
            global_semantics_weight=hparams['global_semantics_weight'],
            mean_vector_weight=hparams['mean_vector_weight'],
            h_threshold=hparams['h_threshold'], dataset=f'./configs/cfg_{dataset}.py')
    return model.eval()


def run_official(off, fx_like, hparams, dataset, image_uint8, svd_seed, dino_fp16=False,
                 omega=None):
    """One official ``predict`` on one image. Returns (model, recorder, predicted labels)."""
    from mmseg.structures import SegDataSample
    with official_run(off, fx_like, dino_fp16=dino_fp16, omega=omega) as rec:
        model = build_segmentor(off, fx_like['class_names'], hparams, dataset)
        assert model.dataset == dataset
        x = normalised_input(image_uint8)
        hw = tuple(image_uint8.shape[-2:])
        sample = SegDataSample(metainfo=dict(img_shape=hw, ori_shape=hw))
        torch.manual_seed(svd_seed)
        with torch.no_grad():
            out = model.predict(x, [sample])[0]
    return model, rec, out.pred_sem_seg.data[0]


# ------------------------------------------------------------------------------- fixture dicts

def crop_record(call):
    """The ``crop0``-style intermediates of one forward_feature call."""
    dino_image, qkv = call['dino'][0]  # [1]: the whole-image global_vector call, unused by CASS
    (dino_kk,), eig_dino = call['spectra'][0]
    (clip_kk,), eig_clip = call['spectra'][1]
    (dino_key, clip_k), dino_key_final = call['key'][0]
    svd = [out for _, out in call['svd']]
    return dict(
        dino_image=torch.from_numpy(dino_image),
        dino_k=qkv[1, 0, :, 1:, :].clone(),
        dino_key_final=dino_key_final, clip_k=clip_k, values=call['values'],
        clip_kk=clip_kk, dino_kk=dino_kk, eig_clip=eig_clip, eig_dino=eig_dino,
        cost=call['cost'], col_ind=call['col_ind'],
        svd_u=torch.stack([u for _, u, _, _ in svd]), svd_s=torch.stack([s for _, _, s, _ in svd]),
        svd_v=torch.stack([v for _, _, _, v in svd]),
        svd_s_scaled=torch.stack([out for _, out in call['s_scaled']]),
        dino_sparse_adj=torch.stack([out for _, out in call['sparse_adj']]),
        omega=call['omega'][0][1][0], attn=call['attn'], attn_output=call['attn_output'][:, 0],
        global_clip_sim=call['global_clip_sim'][0], adjusted_text=call['adjusted_text'],
        logits=call['last_interpolate_input'][0])


def slide_record(rec, x, hparams, pred, subsample):
    """Per-crop and slide-level keys of a slide run (checks the recorded crops' boxes)."""
    boxes = slide_boxes(*x.shape[-2:], hparams['slide_crop'], hparams['slide_stride'])
    assert len(boxes) == len(rec.calls)
    for (y1, y2, x1, x2), call in zip(boxes, rec.calls):
        assert torch.equal(call['img'], x[:, :, y1:y2, x1:x2])
    crop0 = crop_record(rec.calls[0])
    crop0 = dict(box=boxes[0], **crop0)
    logits = rec.postprocess_inputs[0][0]
    return dict(
        crop0=crop0, crop_boxes=torch.tensor(boxes, dtype=torch.int64),
        crop_logits=torch.stack([c['last_interpolate_input'][0] for c in rec.calls]),
        global_clip_sim=torch.stack([c['global_clip_sim'][0] for c in rec.calls]),
        adjusted_text=torch.stack([c['adjusted_text'] for c in rec.calls]),
        crop_cost=torch.stack([c['cost'] for c in rec.calls]),
        crop_col_ind=torch.stack([c['col_ind'] for c in rec.calls]),
        slide_logits_sub=logits[:, ::subsample, ::subsample].clone(), subsample=subsample,
        pred=pred.to(torch.uint8))


def whole_record(rec, x, pred, gsw, mvw, dataset, image_uint8, subsample):
    assert len(rec.calls) == 1 and torch.equal(rec.calls[0]['img'], x)
    call = rec.calls[0]
    assert not call['whole_img_given'] and len(call['dino']) == 1  # prior = the image's own CLS
    logits = rec.postprocess_inputs[0][0]
    return dict(
        dataset=dataset, image_uint8=image_uint8, global_semantics_weight=gsw,
        mean_vector_weight=mvw, scale_singular_values=True, slide_crop=0,
        seg_logits_sub=logits[:, ::subsample, ::subsample].clone(), subsample=subsample,
        pred=pred.to(torch.uint8), n_patches=tuple(call['n_patches']),
        dino_n_patches=tuple(call['dino_n_patches']),
        dino_image=torch.from_numpy(call['dino'][0][0]),
        global_clip_sim=call['global_clip_sim'][0], adjusted_text=call['adjusted_text'],
        cost=call['cost'], col_ind=call['col_ind'], logits=call['last_interpolate_input'][0])


def noise_record(off, fx_like, hparams, dataset, image_uint8, svd_seed, logits, pred,
                 omega=None):
    """The official code's own spread: the same run with its fp16 DINO cast kept."""
    _, rec, pred_half = run_official(off, fx_like, hparams, dataset, image_uint8, svd_seed,
                                     dino_fp16=True, omega=omega)
    return dict(dino_half=float((rec.postprocess_inputs[0][0] - logits).abs().max()),
                flips_dino_half=float((pred_half.to(torch.uint8) != pred).double().mean()),
                logit_range=float(logits.max() - logits.min()))


def whole_hparams(hparams, whole):
    """The whole-image run: slide_crop=0 and its own prior and mean-vector weights."""
    return dict(hparams, slide_crop=0, global_semantics_weight=whole['global_semantics_weight'],
                mean_vector_weight=whole['mean_vector_weight'])


def run_fixture(off, fx_like, noise=True, omega=None):
    """Every golden key of a fixture from its inputs (weights, image, text, settings)."""
    h = fx_like['hparams']
    dataset = fx_like['dataset']
    x = normalised_input(fx_like['image_uint8'])
    model, rec, pred = run_official(off, fx_like, h, dataset, fx_like['image_uint8'],
                                    fx_like['svd_seed'], omega=omega)
    assert model.query_features.dtype == torch.float64
    assert (dataset not in ('voc20', 'city_scapes')) == h['scale_singular_values']
    assert (dataset != 'city_scapes') == h['whole_image_global']
    assert all(c['whole_img_given'] == h['whole_image_global'] for c in rec.calls)
    out = dict(query_idx=model.query_idx.cpu(),
               cluster_info=torch.from_numpy(np.asarray(model.cluster_info)),
               **slide_record(rec, x, h, pred, fx_like['subsample']))
    if noise:
        out['noise'] = noise_record(off, fx_like, h, dataset, fx_like['image_uint8'],
                                    fx_like['svd_seed'], rec.postprocess_inputs[0][0],
                                    out['pred'], omega=omega)
    if fx_like.get('whole') is not None:
        w = fx_like['whole']
        _, rec_w, pred_w = run_official(off, fx_like, whole_hparams(h, w), w['dataset'],
                                        w['image_uint8'],
                                        fx_like['svd_seed'])
        out['whole'] = whole_record(rec_w, normalised_input(w['image_uint8']), pred_w,
                                    w['global_semantics_weight'], w['mean_vector_weight'],
                                    w['dataset'], w['image_uint8'], fx_like['subsample'])
    return out


def make_fixture(off, preset):
    """Random inputs for a preset, then every golden key from the official code."""
    p = PRESETS[preset]
    gen = torch.Generator().manual_seed(p['seed'])
    rng = np.random.default_rng(p['seed'])
    c, d, h = p['clip_cfg'], p['dino_cfg'], p['hparams']
    clip_sd = random_state_dict(build_clip_visual(off, c), gen)
    dino_sd = random_state_dict(build_dino(off, d), gen)
    palette = rng.uniform(35, 220, size=(p['regions'], 3))
    image, label = voronoi_scene(p['image_hw'], palette, rng)
    fx = dict(variant=p['variant'], dataset=p['dataset'], clip_cfg=dict(c), clip_state_dict=clip_sd,
              dino_cfg=dict(d), dino_state_dict=dino_sd, image_uint8=image,
              norm_mean=list(NORM_MEAN), norm_std=list(NORM_STD),
              class_names=[list(n) for n in p['class_names']], svd_seed=p['svd_seed'],
              subsample=p['subsample'])
    # first runs with random text features, to align the text with the regions
    fx['text_features'] = float32_normalised(
        torch.randn(sum(map(len, p['class_names'])), c['out'], generator=gen))
    first = dict(h, h_threshold=h_threshold_for(fx['text_features'], p['clusters']))
    _, rec, _ = run_official(off, fx, first, p['dataset'], image, p['svd_seed'])
    runs = [(rec, slide_boxes(*image.shape[-2:], h['slide_crop'], h['slide_stride']), label,
             h['global_semantics_weight'])]
    if p['whole'] is not None:  # another layout of the same colours
        w = p['whole']
        fx['whole'] = dict(dataset=w['dataset'],
                           image_uint8=voronoi_scene(w['image_hw'], palette, rng)[0],
                           global_semantics_weight=w['global_semantics_weight'],
                           mean_vector_weight=w['mean_vector_weight'])
    text = region_aligned_text(runs, c['patch'], p['class_names'], gen)
    fx['text_features'] = text
    fx['hparams'] = dict(h, h_threshold=h_threshold_for(text, p['clusters']),
                         scale_singular_values=p['dataset'] not in ('voc20', 'city_scapes'),
                         whole_image_global=p['dataset'] != 'city_scapes', **OFFICIAL_CONSTANTS)
    golden = run_fixture(off, fx)
    whole = golden.pop('whole', None)
    order = ['variant', 'dataset', 'clip_cfg', 'clip_state_dict', 'dino_cfg', 'dino_state_dict',
             'image_uint8', 'norm_mean', 'norm_std', 'class_names', 'text_features', 'query_idx',
             'hparams', 'cluster_info', 'svd_seed', 'subsample']
    out = {k: (fx[k] if k in fx else golden.pop(k)) for k in order}
    out.update(golden)
    if whole is not None:
        out['whole'] = whole
    return out


# ---------------------------------------------------------------------------------- comparison

def _low_rank(fx):
    return fx['svd_u'] @ torch.diag_embed(fx['svd_s']) @ fx['svd_v'].transpose(-1, -2)


def compare(ref, new, prefix=''):
    """Rows (key, max |diff| or mismatch count, note) for every key of ``ref``."""
    rows = []
    for key, r in ref.items():
        name = prefix + key
        if key in ('svd_u', 'svd_v'):
            continue
        if key not in new:
            rows.append((name, 'MISSING', ''))
            continue
        n = new[key]
        if key == 'noise':  # informative (another run's spread), not a golden value
            continue
        if key == 'svd_s' and 'svd_u' in ref:  # singular vectors' signs are arbitrary
            err = (_low_rank(ref) - _low_rank(new)).abs().max().item()
            rows.append((prefix + 'svd U diag(s) V^T', err, 'max |diff|'))
            continue
        if isinstance(r, dict):
            rows += compare(r, n, name + '.')
        elif torch.is_tensor(r):
            if r.shape != n.shape:
                rows.append((name, 'SHAPE', f'{tuple(r.shape)} vs {tuple(n.shape)}'))
            elif r.is_floating_point():
                rows.append((name, (r.double() - n.double()).abs().max().item(), 'max |diff|'))
            else:
                rows.append((name, int((r != n).sum()), 'mismatches'))
        else:
            rows.append((name, 0 if r == n else 'DIFFERENT', repr(r)[:40]))
    return rows


def check(off, path, omega_from_fixture=False, noise=True):
    ref = torch.load(path, weights_only=False)
    omega = ref['crop0']['omega'] if omega_from_fixture else None
    new = run_fixture(off, ref, noise=noise and 'noise' in ref, omega=omega)
    rows = compare({k: v for k, v in ref.items() if k in new}, new)
    worst = 0.0
    for name, err, note in rows:
        print(f'{name:32s} {err!s:>24} {note}')
        if isinstance(err, str):
            worst = float('inf')
        else:
            worst = max(worst, float(err))
    if 'noise' in new:
        print('noise (stored / rerun):', ref['noise'], new['noise'])
    print(f'{path}: worst {worst:.3g}')
    return worst


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('checkout', help='extracted MICV-yonsei/CASS @228ecdd')
    parser.add_argument('--check', nargs='*', default=[], metavar='FIXTURE',
                        help='rerun fixtures from their stored inputs and compare every key')
    parser.add_argument('--make', nargs='*', default=[], choices=sorted(PRESETS))
    parser.add_argument('--out-dir', default='tests/fixtures')
    parser.add_argument('--omega-from-fixture', action='store_true',
                        help='diagnostic for --check: use the stored float32 crop0.omega '
                             '(torch.exp in float32 may differ by 1 ulp between machines)')
    parser.add_argument('--no-noise', action='store_true', help='--check: skip the fp16 rerun')
    args = parser.parse_args()
    off = import_official(args.checkout)
    for preset in args.make:
        fx = make_fixture(off, preset)
        path = os.path.join(args.out_dir, f'cass_tiny_{preset}.pt')
        torch.save(fx, path)
        print(f'wrote {path} ({os.path.getsize(path) / 1e6:.2f} MB)')
    failed = [p for p in args.check
              if check(off, p, args.omega_from_fixture, not args.no_noise) != 0.0]
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
