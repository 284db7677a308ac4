"""Every VFM preset against a reference written plainly from the official code it stands for.

Read for these references (file, function, commit):
- DINO: facebookresearch/dino@7c446df ``vision_transformer.py``
  ``VisionTransformer.interpolate_pos_encoding`` / ``prepare_tokens`` / ``get_intermediate_layers``
  (CASS vendors the same file, MICV-yonsei/CASS@228ecdd ``dino/vision_transformer.py``);
- DINOv2: facebookresearch/dinov2@b8931f7 ``dinov2/models/vision_transformer.py``
  ``DinoVisionTransformer.interpolate_pos_encoding`` / ``prepare_tokens_with_masks``, built as
  ``dinov2/hub/backbones.py`` ``dinov2_vitb14_reg`` builds it (img_size 518, 4 registers,
  ``interpolate_antialias=True``, ``interpolate_offset=0.0``);
- MAE and SAM as ProxyCLIP builds and calls them: mc-lan/ProxyCLIP@e7b767f
  ``proxyclip_segmentor.py`` (``__init__``, ``forward_feature``), ``mae/pos_embed.py``
  ``interpolate_pos_embed``, ``mae/models_vit.py`` ``forward_features``.

The transformer blocks are timm's in both paths (they are the official blocks, key for key); what
is checked is the embedding: patchify, prefix tokens, and the position embedding at each crop.
"""
import dataclasses
import math

import pytest
import timm
import torch
import torch.nn.functional as F
from mmseg.registry import MODELS
from torch import nn

from fsa_seg.models.vfm import TimmVFM

from doubles import TINY_VFM
from references import official_interpolate_pos_encoding

SIZES = [(224, 224), (336, 336), (448, 448), (224, 336)]
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def channels(values, like):
    return torch.tensor(values, dtype=like.dtype).view(1, 3, 1, 1)


def to_clip_normalised(x):
    """An ImageNet-normalised input as the segmentor hands it to the VFM (CLIP normalisation)."""
    pixels = x * channels(IMAGENET_STD, x) + channels(IMAGENET_MEAN, x)
    return (pixels - channels(CLIP_MEAN, x)) / channels(CLIP_STD, x)


def randomise_embeddings(model, seed=0):
    """Random-init timm zeroes or smooths some embeddings; make them all informative."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in ('pos_embed', 'cls_token', 'reg_token'):
            param = getattr(model, name, None)
            if param is not None:
                param.copy_(torch.randn(param.shape, generator=generator, dtype=param.dtype))


# ---------------------------------------------------------------- DINO (facebookresearch/dino)
def dino_prepare_tokens(model, x):
    B, nc, w, h = x.shape
    proj = model.patch_embed.proj
    x = F.conv2d(x, proj.weight, proj.bias, stride=proj.stride).flatten(2).transpose(1, 2)
    x = torch.cat((model.cls_token.expand(B, -1, -1), x), dim=1)
    return x + official_interpolate_pos_encoding(model.pos_embed, proj.stride[0], x, w, h)


def dino_features(model, x):
    """``get_intermediate_layers(x)[0]`` patch tokens, as ProxyCLIP reads them, (B, C, h, w)."""
    tokens = dino_prepare_tokens(model, x)
    for block in model.blocks:
        tokens = block(tokens)
    patch = model.patch_embed.proj.stride[0]
    return model.norm(tokens)[:, 1:].reshape(len(x), x.shape[2] // patch, x.shape[3] // patch,
                                             -1).permute(0, 3, 1, 2)


def tiny_dino(name, dtype=torch.float64):
    torch.manual_seed(0)
    vfm = TimmVFM(name, random_init=True, model_kwargs=TINY_VFM)
    randomise_embeddings(vfm.model)
    return vfm.to(dtype)


@pytest.mark.parametrize('size', SIZES, ids=lambda s: f'{s[0]}x{s[1]}')
@pytest.mark.parametrize('name', ['dino_vitb8', 'dino_vitb16'])
def test_dino_equals_the_official_dino_code(name, size):
    vfm = tiny_dino(name)
    x = torch.randn(1, 3, *size, dtype=torch.float64)
    tokens, grid = vfm.embed(x)
    patch = vfm.patch_size[0]
    assert grid == (size[0] // patch, size[1] // patch)
    assert (tokens - dino_prepare_tokens(vfm.model, x)).abs().max() <= 1e-12
    features = vfm(to_clip_normalised(x))
    assert (features - dino_features(vfm.model, x)).abs().max() <= 1e-12
    if size != (224, 224):  # timm's own rule (to the size, antialiased) is another number
        timm_features = vfm.model.forward_features(x)[:, 1:].transpose(1, 2).reshape(
            features.shape)
        assert (timm_features - features).abs().max() > 1e-3


def test_dino_half_precision_resamples_in_half_as_the_official_code():
    vfm = tiny_dino('dino_vitb16', dtype=torch.float16)
    x = torch.randn(1, 3, 336, 336, dtype=torch.float16)
    tokens, _ = vfm.embed(x)
    assert tokens.dtype == torch.float16
    assert torch.equal(tokens, dino_prepare_tokens(vfm.model, x))


# ---------------------------------------------------------------- DINOv2 (facebookresearch/dinov2)
def dinov2_interpolate_pos_encoding(pos_embed, patch_size, x, w, h,
                                    interpolate_offset=0.0, interpolate_antialias=True):
    previous_dtype = x.dtype
    npatch = x.shape[1] - 1
    N = pos_embed.shape[1] - 1
    if npatch == N and w == h:
        return pos_embed
    pos_embed = pos_embed.float()
    class_pos_embed = pos_embed[:, 0]
    patch_pos_embed = pos_embed[:, 1:]
    dim = x.shape[-1]
    w0 = w // patch_size
    h0 = h // patch_size
    M = int(math.sqrt(N))
    assert N == M * M
    kwargs = {}
    if interpolate_offset:
        sx = float(w0 + interpolate_offset) / M
        sy = float(h0 + interpolate_offset) / M
        kwargs['scale_factor'] = (sx, sy)
    else:
        kwargs['size'] = (w0, h0)
    patch_pos_embed = F.interpolate(
        patch_pos_embed.reshape(1, M, M, dim).permute(0, 3, 1, 2),
        mode='bicubic',
        antialias=interpolate_antialias,
        **kwargs,
    )
    assert (w0, h0) == patch_pos_embed.shape[-2:]
    patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).view(1, -1, dim)
    return torch.cat((class_pos_embed.unsqueeze(0), patch_pos_embed), dim=1).to(previous_dtype)


def official_dinov2_embeddings(model, generator):
    """The official layout of timm's DINOv2 weights: pos_embed with a cls slot, cls_token
    without it (timm folds the cls position into cls_token), register_tokens."""
    cls_pos = torch.randn(1, 1, model.embed_dim, generator=generator, dtype=model.pos_embed.dtype)
    return dict(pos_embed=torch.cat([cls_pos, model.pos_embed], dim=1),
                cls_token=model.cls_token - cls_pos, register_tokens=model.reg_token)


def dinov2_prepare_tokens(model, official, x):
    B, nc, w, h = x.shape
    proj = model.patch_embed.proj
    x = F.conv2d(x, proj.weight, proj.bias, stride=proj.stride).flatten(2).transpose(1, 2)
    x = torch.cat((official['cls_token'].expand(x.shape[0], -1, -1), x), dim=1)
    x = x + dinov2_interpolate_pos_encoding(official['pos_embed'], proj.stride[0], x, w, h)
    return torch.cat((x[:, :1], official['register_tokens'].expand(x.shape[0], -1, -1), x[:, 1:]),
                     dim=1)


@pytest.mark.parametrize('size', SIZES + [(518, 518)], ids=lambda s: f'{s[0]}x{s[1]}')
def test_dinov2_reg_equals_the_official_dinov2_code(size):
    torch.manual_seed(0)
    # the hub model's own 518 input: a 37×37 grid, so 224/336/448 crops are downsampled
    vfm = TimmVFM('dinov2_vitb14_reg', random_init=True, model_kwargs=dict(TINY_VFM, img_size=518))
    randomise_embeddings(vfm.model)
    vfm.double()
    official = official_dinov2_embeddings(vfm.model, torch.Generator().manual_seed(1))
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    tokens, grid = vfm.embed(x)
    reference = dinov2_prepare_tokens(vfm.model, official, x)
    assert grid == (size[0] // 14, size[1] // 14) and tokens.shape == reference.shape
    # patch and register tokens: the same float32 resampling, bit for bit
    assert (tokens[:, 1:] - reference[:, 1:]).abs().max() <= 1e-12
    # the official code also rounds the cls position to float32 (pos_embed.float()); timm folded
    # it into cls_token in full precision: float32 precision there
    assert (tokens[:, 0] - reference[:, 0]).abs().max() <= 1e-6
    blocks_out = reference
    for block in vfm.model.blocks:
        blocks_out = block(blocks_out)
    expected = vfm.model.norm(blocks_out)[:, 5:].transpose(1, 2).reshape(2, -1, *grid)
    assert (vfm(to_clip_normalised(x)) - expected).abs().max() <= 1e-6


# ---------------------------------------------------------------- MAE (ProxyCLIP's build)
def mae_interpolate_pos_embed(model, checkpoint_model):
    """mae/pos_embed.py interpolate_pos_embed, on the checkpoint dict (model = the timm model)."""
    if 'pos_embed' in checkpoint_model:
        pos_embed_checkpoint = checkpoint_model['pos_embed']
        embedding_size = pos_embed_checkpoint.shape[-1]
        num_patches = model.patch_embed.num_patches
        num_extra_tokens = model.pos_embed.shape[-2] - num_patches
        orig_size = int((pos_embed_checkpoint.shape[-2] - num_extra_tokens) ** 0.5)
        new_size = int(num_patches ** 0.5)
        if orig_size != new_size:
            extra_tokens = pos_embed_checkpoint[:, :num_extra_tokens]
            pos_tokens = pos_embed_checkpoint[:, num_extra_tokens:]
            pos_tokens = pos_tokens.reshape(-1, orig_size, orig_size,
                                            embedding_size).permute(0, 3, 1, 2)
            pos_tokens = F.interpolate(pos_tokens, size=(new_size, new_size), mode='bicubic',
                                       align_corners=False)
            pos_tokens = pos_tokens.permute(0, 2, 3, 1).flatten(1, 2)
            checkpoint_model['pos_embed'] = torch.cat((extra_tokens, pos_tokens), dim=1)


def mae_features(weights, pos_embed, x, crop):
    """ProxyCLIP's MAE branch: resize to slide_crop², models_vit forward_features (no pool)."""
    x = F.interpolate(x, size=(crop, crop), mode='bilinear', align_corners=False)
    proj = weights.patch_embed.proj
    tokens = F.conv2d(x, proj.weight, proj.bias, stride=proj.stride).flatten(2).transpose(1, 2)
    tokens = torch.cat((weights.cls_token.expand(len(x), -1, -1), tokens), dim=1) + pos_embed
    for block in weights.blocks:
        tokens = block(tokens)
    grid = crop // 16
    return weights.norm(tokens[:, 1:]).transpose(1, 2).reshape(len(x), -1, grid, grid)


@pytest.fixture(scope='module')
def mae_checkpoint(tmp_path_factory):
    """A tiny official-format MAE release: at 224 (14×14 positions), wrapped under 'model'."""
    torch.manual_seed(0)
    native = TimmVFM('mae_vitb16', random_init=True, input_size=224, model_kwargs=TINY_VFM)
    randomise_embeddings(native.model)
    path = tmp_path_factory.mktemp('mae') / 'mae_pretrain_vit_base.pth'
    torch.save({'model': native.model.state_dict()}, path)
    return path


@pytest.mark.parametrize('crop', [224, 336, 448])
def test_mae_is_resampled_once_at_build_as_proxyclip_builds_it(mae_checkpoint, crop):
    vfm = TimmVFM('mae_vitb16', pretrained=str(mae_checkpoint), input_size=crop,
                  model_kwargs=TINY_VFM)
    checkpoint = torch.load(mae_checkpoint, weights_only=False)['model']
    mae_interpolate_pos_embed(vfm.model, checkpoint)          # float32, as the official file
    assert torch.equal(vfm.model.pos_embed, checkpoint['pos_embed'])
    vfm.double()
    for size in [(224, 336), (448, 448)]:  # every crop, non-square too, is resized to crop²
        x = torch.randn(1, 3, *size, dtype=torch.float64)
        expected = mae_features(vfm.model, checkpoint['pos_embed'].double(), x, crop)
        assert (vfm(to_clip_normalised(x)) - expected).abs().max() <= 1e-12


def test_mae_from_timm_weights_is_resampled_the_official_way(monkeypatch, mae_checkpoint):
    # the timm tag path: timm's weights at their own 224, then MAE's resampling (not timm's)
    source = torch.load(mae_checkpoint, weights_only=False)['model']
    real_create = timm.create_model

    def from_cache(name, pretrained=False, **kwargs):  # stands in for timm's download
        model = real_create(name, pretrained=False, **kwargs)
        if pretrained:
            model.load_state_dict(source)
        return model
    monkeypatch.setattr(timm, 'create_model', from_cache)
    vfm = TimmVFM('mae_vitb16', input_size=336, model_kwargs=TINY_VFM)
    checkpoint = dict(source)
    mae_interpolate_pos_embed(vfm.model, checkpoint)
    assert torch.equal(vfm.model.pos_embed, checkpoint['pos_embed'])
    assert torch.equal(vfm.model.blocks[0].attn.qkv.weight, source['blocks.0.attn.qkv.weight'])


def test_mae_refuses_a_non_square_crop():
    with pytest.raises(ValueError, match='square crop.*224, 336'):
        TimmVFM('mae_vitb16', random_init=True, input_size=(224, 336), model_kwargs=TINY_VFM)


# ---------------------------------------------------------------- SAM (ProxyCLIP's call)
@pytest.mark.parametrize('size', SIZES, ids=lambda s: f'{s[0]}x{s[1]}')
def test_sam_resizes_every_crop_to_its_size_and_resamples_nothing(size):
    torch.manual_seed(0)
    vfm = TimmVFM('sam_vitb', random_init=True,
                  model_kwargs=dict(TINY_VFM, img_size=64, window_size=2, global_attn_indexes=(1,)))
    randomise_embeddings(vfm.model)
    vfm.double()
    x = torch.randn(1, 3, *size, dtype=torch.float64)
    # ProxyCLIP: F.interpolate(imgs_norm, size=(1024, 1024), mode='bilinear', align_corners=False)
    # then image_encoder (64 here: the tiny model's own size, so its embedding is used as is)
    resized = F.interpolate(x, size=(64, 64), mode='bilinear', align_corners=False)
    proj = vfm.model.patch_embed.proj
    expected_tokens = F.conv2d(resized, proj.weight, proj.bias, stride=16).permute(0, 2, 3, 1) \
        + vfm.model.pos_embed
    tokens = expected_tokens
    for block in vfm.model.blocks:
        tokens = block(tokens)
    expected = vfm.model.neck(tokens.permute(0, 3, 1, 2))
    assert (vfm(to_clip_normalised(x)) - expected).abs().max() <= 1e-12
    with pytest.raises(ValueError, match='sam_vitb.*not a token ViT'):
        vfm.embed(resized)


# ---------------------------------------------------------------- the public token API
@pytest.mark.parametrize('name', ['dino_vitb8', 'dino_vitb16', 'dinov2_vitb14_reg', 'mae_vitb16'])
def test_tokens_equal_timm_forward_features_at_the_native_grid(name):
    torch.manual_seed(0)
    extra = dict(input_size=224) if name == 'mae_vitb16' else {}
    kwargs = dict(TINY_VFM, img_size=224) if name == 'dinov2_vitb14_reg' else TINY_VFM
    vfm = TimmVFM(name, random_init=True, model_kwargs=kwargs, **extra)
    randomise_embeddings(vfm.model)
    vfm.double()
    x = torch.randn(2, 3, 224, 224, dtype=torch.float64)
    tokens, grid = vfm.embed(x)
    assert grid == (224 // vfm.patch_size[0],) * 2
    out = vfm.model.norm(vfm.model.blocks(tokens))
    assert (out - vfm.model.forward_features(x)).abs().max() <= 1e-12


def test_last_block_input_runs_all_blocks_but_the_last():
    torch.manual_seed(0)
    vfm = TimmVFM('dino_vitb8', random_init=True, model_kwargs=dict(TINY_VFM, depth=3))
    randomise_embeddings(vfm.model)
    vfm.double()
    x = torch.randn(1, 3, 224, 336, dtype=torch.float64)
    tokens, grid = vfm.last_block_input(x)
    expected = dino_prepare_tokens(vfm.model, x)
    for block in vfm.model.blocks[:2]:
        expected = block(expected)
    assert grid == (28, 42) and tokens.shape == (1, 1 + 28 * 42, 32)
    assert (tokens - expected).abs().max() <= 1e-12
    final = vfm.model.norm(vfm.model.blocks[-1](tokens))[:, 1:]
    final = final.transpose(1, 2).reshape(1, 32, *grid)
    assert (final - dino_features(vfm.model, x)).abs().max() <= 1e-12


# ---------------------------------------------------------------- ProxyCLIP (± FSA) with our DINO
class OfficialDINO(nn.Module):
    """ProxyCLIP's DINO branch: ``norm(unnorm(img))`` then ``get_intermediate_layers``."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, img):
        pixels = img * channels(CLIP_STD, img) + channels(CLIP_MEAN, img)
        x = (pixels - channels(IMAGENET_MEAN, img)) / channels(IMAGENET_STD, img)
        return dino_features(self.model, x)


@pytest.mark.parametrize('plugin,size', [(None, (336, 336)), (None, (112, 176)),
                                         (dict(type='FSA'), (112, 176))],
                         ids=['proxyclip-336x336', 'proxyclip-112x176', 'fsa-112x176'])
def test_proxyclip_with_our_dino_equals_the_official_dino_pipeline(tiny_clip, plugin, size):
    torch.manual_seed(0)
    model = MODELS.build(dict(
        type='ProxyCLIP', clip=tiny_clip, plugin=plugin, vocabulary=['a', 'b', 'c'],
        templates='plain',
        vfm=dict(type='TimmVFM', name='dino_vitb8', random_init=True, model_kwargs=TINY_VFM)))
    randomise_embeddings(model.vfm.model)
    model.vfm.double()
    model.set_query_embeddings(F.normalize(torch.randn(3, 32, dtype=torch.float64), dim=-1))
    crops = torch.randn(1, 3, *size, dtype=torch.float64)
    ours = model.encode_crops(crops)
    ours_vfm = model.vfm
    model.vfm = OfficialDINO(ours_vfm.model)
    expected = model.encode_crops(crops)
    assert ours.shape == (1, 32, size[0] // 8, size[1] // 8)
    assert (ours - expected).abs().max() <= 1e-12
    if plugin is None:  # the same pipeline with timm's own resampling is measurably different
        model.vfm = TimmForwardFeatures(ours_vfm)
        assert (model.encode_crops(crops) - expected).abs().max() > 1e-4


class TimmForwardFeatures(nn.Module):
    """The VFM as it was before the official rules: timm's forward_features at every crop."""

    def __init__(self, vfm):
        super().__init__()
        self.vfm = vfm

    def forward(self, images):
        x = self.vfm.prepare(self.vfm.renormalize(images))
        tokens = self.vfm.model.forward_features(x)[:, 1:]
        grid = self.vfm.grid_size(*x.shape[-2:])
        return tokens.transpose(1, 2).reshape(len(x), -1, *grid)


@pytest.mark.parametrize('name', ['dino_vitb8', 'dino_vitb16'])
def test_the_resampled_embedding_is_made_once_per_grid_and_follows_new_weights(name):
    vfm = tiny_dino(name)
    calls = []
    rule = vfm.preset.resampling
    vfm.preset = dataclasses.replace(
        vfm.preset, resampling=lambda *args: calls.append(args[2]) or rule(*args))
    x = torch.randn(1, 3, 336, 336, dtype=torch.float64)
    with torch.no_grad():
        for _ in range(3):
            tokens, grid = vfm.embed(x)
        assert calls == [grid]
        assert (tokens - dino_prepare_tokens(vfm.model, x)).abs().max() <= 1e-12
        randomise_embeddings(vfm.model, seed=1)   # in place, as loading weights
        tokens, _ = vfm.embed(x)
        assert calls == [grid] * 2
        assert (tokens - dino_prepare_tokens(vfm.model, x)).abs().max() <= 1e-12
