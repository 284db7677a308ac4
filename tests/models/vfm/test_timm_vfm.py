"""TimmVFM: shapes, re-normalisation, weight loading and parity with timm, on tiny random models."""
import pytest
import timm
import torch
import torch.nn.functional as F
from mmengine.model import BaseModule
from mmseg.registry import MODELS

from fsa_seg.models.vfm import VFM_PRESETS, TimmVFM
from fsa_seg.models.weights import WeightsError

from doubles import TINY_SAM, TINY_VFM

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

MAE_INPUT = 112
KWARGS = {
    'dino_vitb8': dict(model_kwargs=TINY_VFM),
    'dino_vitb16': dict(model_kwargs=TINY_VFM),
    'dinov2_vitb14_reg': dict(model_kwargs=dict(TINY_VFM, img_size=224)),
    'sam_vitb': dict(model_kwargs=TINY_SAM),
    'mae_vitb16': dict(model_kwargs=TINY_VFM, input_size=MAE_INPUT),
}
# expected (grid_h, grid_w) per crop size (224², 336², 224×336), written out by hand
GRIDS = {
    'dino_vitb8': [(28, 28), (42, 42), (28, 42)],
    'dino_vitb16': [(14, 14), (21, 21), (14, 21)],
    'dinov2_vitb14_reg': [(16, 16), (24, 24), (16, 24)],
    'sam_vitb': [(4, 4)] * 3,                  # every crop resized to the tiny img_size 64
    'mae_vitb16': [(7, 7)] * 3,                # every crop resized to input_size 112
}
CROPS = [(224, 224), (336, 336), (224, 336)]


def tiny(name, **extra):
    torch.manual_seed(0)
    return TimmVFM(name, random_init=True, **{**KWARGS[name], **extra})


def clip_normalise(pixels):
    mean = torch.tensor(CLIP_MEAN, dtype=pixels.dtype).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=pixels.dtype).view(1, 3, 1, 1)
    return (pixels - mean) / std


def timm_reference(vfm, images):
    """Independent expectation: undo CLIP, ImageNet-normalise, resize, timm forward_features."""
    pixels = images * torch.tensor(CLIP_STD, dtype=images.dtype).view(1, 3, 1, 1) \
        + torch.tensor(CLIP_MEAN, dtype=images.dtype).view(1, 3, 1, 1)
    x = (pixels - torch.tensor(IMAGENET_MEAN, dtype=images.dtype).view(1, 3, 1, 1)) \
        / torch.tensor(IMAGENET_STD, dtype=images.dtype).view(1, 3, 1, 1)
    model = vfm.model
    if vfm.name == 'sam_vitb':
        return model.forward_features(F.interpolate(x, size=(64, 64), mode='bilinear'))
    if vfm.name == 'mae_vitb16':
        x = F.interpolate(x, size=(MAE_INPUT, MAE_INPUT), mode='bilinear')
    p = model.patch_embed.patch_size[0]
    tokens = model.forward_features(x)[:, model.num_prefix_tokens:]
    return tokens.reshape(len(x), x.shape[2] // p, x.shape[3] // p, -1).permute(0, 3, 1, 2)


@pytest.mark.parametrize('name', list(VFM_PRESETS))
def test_output_shapes_and_grids(name):
    vfm = tiny(name)
    channels = 256 if name == 'sam_vitb' else 32   # SAM: neck width 256
    for (h, w), grid in zip(CROPS, GRIDS[name]):
        out = vfm(torch.randn(1, 3, h, w))
        assert out.shape == (1, channels, *grid)
        assert vfm.grid_size(h, w) == grid
    assert vfm.out_channels == channels


def test_dino_floors_partial_patches():
    vfm = tiny('dino_vitb8')
    images = torch.randn(1, 3, 230, 341)
    out = vfm(images)
    assert out.shape[-2:] == (28, 42)
    torch.testing.assert_close(out, vfm(images[..., :224, :336]), rtol=0, atol=0)


def test_real_sam_and_mae_resize_targets():
    narrow = dict(embed_dim=32, depth=1, num_heads=2)
    sam = TimmVFM('sam_vitb', random_init=True, model_kwargs=narrow)
    assert tuple(sam.model.patch_embed.img_size) == (1024, 1024)
    assert sam.grid_size(224, 336) == (64, 64)
    mae = TimmVFM('mae_vitb16', random_init=True, input_size=336, model_kwargs=narrow)
    assert mae(torch.randn(1, 3, 224, 336)).shape == (1, 32, 21, 21)


@pytest.mark.parametrize('name', list(VFM_PRESETS))
def test_renormalize_constant_image(name):
    vfm = tiny(name)
    pixels = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64).view(1, 3, 1, 1).expand(2, 3, 4, 5)
    out = vfm.renormalize(clip_normalise(pixels))
    # by hand: (pixel - ImageNet mean) / ImageNet std; SAM's pixel mean/std (123.675, 116.28,
    # 103.53) / (58.395, 57.12, 57.375) on the 0..255 scale are the same numbers
    expected = torch.tensor([(0.2 - 0.485) / 0.229, (0.5 - 0.456) / 0.224, (0.9 - 0.406) / 0.225],
                            dtype=torch.float64)
    if name == 'sam_vitb':
        expected_sam = torch.tensor([(0.2 * 255 - 123.675) / 58.395, (0.5 * 255 - 116.28) / 57.12,
                                     (0.9 * 255 - 103.53) / 57.375], dtype=torch.float64)
        torch.testing.assert_close(expected_sam, expected)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, expected.view(1, 3, 1, 1).expand(2, 3, 4, 5),
                               rtol=0, atol=1e-12)


@pytest.mark.parametrize('name', list(VFM_PRESETS))
def test_features_equal_timm_forward_features_at_the_native_grid(name):
    # At the native grid (224² for these tiny models; SAM and MAE resize every crop to theirs)
    # nothing is resampled, so timm's forward_features is the reference. At other grids timm
    # resamples its own way, not the official codes' (tests/models/vfm/test_official_pos_embed.py).
    vfm = tiny(name).double()
    images = torch.randn(2, 3, 224, 224, dtype=torch.float64)
    out = vfm(images)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, timm_reference(vfm, images), rtol=0, atol=1e-12)


def test_dtype_follows_input_and_model():
    vfm = tiny('dino_vitb16')
    images = torch.randn(1, 3, 64, 96)
    reference = vfm(images)
    vfm.to(torch.bfloat16)
    out = vfm(images)                     # float32 images, bfloat16 model
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, reference, rtol=0.1, atol=0.1)


def test_frozen_eval_and_no_hooks_accumulate():
    vfm = tiny('dino_vitb8')
    vfm.train()
    assert not vfm.training and not vfm.model.training
    assert not any(p.requires_grad for p in vfm.parameters())

    def hook_count():
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in vfm.modules())
    before = hook_count()
    images = torch.randn(1, 3, 32, 48, requires_grad=True)
    for _ in range(10):
        out = vfm(images)
    assert hook_count() == before == 0
    assert not out.requires_grad


def test_parent_init_weights_keeps_weights():
    class Parent(BaseModule):
        def __init__(self):
            super().__init__()
            self.vfm = tiny('dino_vitb16')
    parent = Parent()
    images = torch.randn(1, 3, 32, 32)
    before = parent.vfm(images)
    parent.init_weights()
    torch.testing.assert_close(parent.vfm(images), before, rtol=0, atol=0)


def test_registry_build():
    vfm = MODELS.build(dict(type='TimmVFM', name='dino_vitb16', random_init=True,
                            model_kwargs=TINY_VFM))
    assert isinstance(vfm, TimmVFM) and vfm(torch.randn(1, 3, 32, 32)).shape == (1, 32, 2, 2)


# ---------------------------------------------------------------- weights
def assert_same_outputs(a, b, size=(48, 64)):
    images = torch.randn(1, 3, *size)
    torch.testing.assert_close(a(images), b(images), rtol=0, atol=0)


def test_local_file_loads_and_strips_module_prefix(tmp_path):
    source = tiny('dino_vitb8')
    plain, wrapped = tmp_path / 'tiny.pth', tmp_path / 'ddp.pth'
    torch.save(source.model.state_dict(), plain)
    torch.save({'state_dict': {f'module.{k}': v for k, v in source.model.state_dict().items()}},
               wrapped)
    torch.manual_seed(1)
    for path in (plain, wrapped):
        loaded = TimmVFM('dino_vitb8', pretrained=str(path), model_kwargs=TINY_VFM)
        assert_same_outputs(source, loaded)


def test_mismatched_file_names_file_and_keys(tmp_path):
    path = tmp_path / 'shallow.pth'
    torch.save(tiny('dino_vitb8').model.state_dict(), path)
    with pytest.raises(WeightsError, match='shallow.pth') as info:
        TimmVFM('dino_vitb8', pretrained=str(path), model_kwargs=dict(TINY_VFM, depth=3))
    assert 'blocks.2' in str(info.value) and 'missing keys' in str(info.value)
    with pytest.raises(WeightsError, match='shallow.pth.*shape mismatches'):
        TimmVFM('dino_vitb8', pretrained=str(path), model_kwargs=dict(TINY_VFM, embed_dim=64))


def test_other_patch_size_is_refused_not_resampled(tmp_path):
    path = tmp_path / 'b16.pth'
    torch.save(tiny('dino_vitb16').model.state_dict(), path)
    with pytest.raises(WeightsError, match='b16.pth.*patch size'):
        TimmVFM('dino_vitb8', pretrained=str(path), model_kwargs=TINY_VFM)


def test_official_dino_and_mae_checkpoints_load(tmp_path):
    # official DINO: a bare dict with timm's key names; official MAE: wrapped under 'model'
    dino = tiny('dino_vitb16')
    torch.save(dict(dino.model.state_dict()), tmp_path / 'dino_vitbase16_pretrain.pth')
    assert_same_outputs(dino, TimmVFM('dino_vitb16', model_kwargs=TINY_VFM,
                                      pretrained=str(tmp_path / 'dino_vitbase16_pretrain.pth')))
    mae = tiny('mae_vitb16')
    torch.save({'model': mae.model.state_dict()}, tmp_path / 'mae_pretrain_vit_base.pth')
    assert_same_outputs(mae, TimmVFM('mae_vitb16', **KWARGS['mae_vitb16'],
                                     pretrained=str(tmp_path / 'mae_pretrain_vit_base.pth')))


def test_official_dinov2_checkpoint_is_converted(tmp_path):
    # official DINOv2: register_tokens, mask_token, and a pos_embed with a cls slot (+ cls_token)
    vfm = tiny('dinov2_vitb14_reg')
    state = dict(vfm.model.state_dict())
    width = state['cls_token'].shape[-1]
    cls_pos = torch.randn(1, 1, width)
    official = {k: v for k, v in state.items() if k not in ('reg_token', 'cls_token', 'pos_embed')}
    official.update(register_tokens=state['reg_token'], mask_token=torch.zeros(1, width),
                    pos_embed=torch.cat([cls_pos, state['pos_embed']], 1),
                    cls_token=state['cls_token'] - cls_pos)
    torch.save(official, tmp_path / 'dinov2_vitb14_reg4_pretrain.pth')
    loaded = TimmVFM('dinov2_vitb14_reg', **KWARGS['dinov2_vitb14_reg'],
                     pretrained=str(tmp_path / 'dinov2_vitb14_reg4_pretrain.pth'))
    images = torch.randn(1, 3, 56, 70)
    torch.testing.assert_close(loaded(images), vfm(images), rtol=0, atol=1e-6)


def test_official_sam_checkpoint_is_converted(tmp_path):
    # official SAM: image_encoder.* with mlp.lin1/lin2, next to prompt encoder and mask decoder
    vfm = tiny('sam_vitb')
    official = {f'image_encoder.{k}'.replace('mlp.fc', 'mlp.lin'): v
                for k, v in vfm.model.state_dict().items()}
    official['prompt_encoder.pe_layer.positional_encoding_gaussian_matrix'] = torch.randn(2, 128)
    official['mask_decoder.iou_token.weight'] = torch.randn(1, 256)
    torch.save(official, tmp_path / 'sam_vit_b_01ec64.pth')
    loaded = TimmVFM('sam_vitb', **KWARGS['sam_vitb'],
                     pretrained=str(tmp_path / 'sam_vit_b_01ec64.pth'))
    assert_same_outputs(vfm, loaded)


def test_no_weights_is_an_error():
    with pytest.raises(WeightsError, match='random_init'):
        TimmVFM('dino_vitb8', pretrained=None, model_kwargs=TINY_VFM)
    with pytest.raises(ValueError, match='not both'):
        TimmVFM('dino_vitb8', pretrained='dino', random_init=True, model_kwargs=TINY_VFM)


def test_missing_local_file_is_an_error(tmp_path):
    with pytest.raises(WeightsError, match='not found.*nowhere.pth'):
        TimmVFM('dino_vitb8', pretrained=str(tmp_path / 'nowhere.pth'), model_kwargs=TINY_VFM)


def test_download_failure_names_weights_and_local_option(monkeypatch):
    calls = []

    def offline(name, pretrained=False, **kwargs):
        calls.append((name, pretrained))
        raise OSError('We could not connect to huggingface.co')
    monkeypatch.setattr(timm, 'create_model', offline)
    with pytest.raises(WeightsError) as info:
        TimmVFM('dino_vitb8', model_kwargs=TINY_VFM)          # default: the preset's tag
    message = str(info.value)
    assert calls == [('vit_base_patch8_224.dino', True)]
    assert "'vit_base_patch8_224.dino'" in message and 'could not connect' in message
    assert 'pretrained="/path/to/checkpoint.pth"' in message
    assert 'dino_vitbase8_pretrain.pth' in message            # where to fetch it by hand


def test_without_network_a_download_fails_at_once_and_says_why(tmp_path, monkeypatch,
                                                               unresolvable_names):
    from huggingface_hub import constants
    monkeypatch.setattr(constants, 'HF_HUB_CACHE', str(tmp_path))    # nothing cached
    with pytest.raises(WeightsError, match=r"'vit_base_patch8_224.dino'.*huggingface.co cannot "
                                           r"be reached.*only the local cache"):
        TimmVFM('dino_vitb8', model_kwargs=TINY_VFM)
    assert unresolvable_names.count('huggingface.co') == 1   # the probe: no retried requests


def test_unknown_tag_and_preset():
    with pytest.raises(WeightsError, match="'nope'.*tags: .*dino"):
        TimmVFM('dino_vitb8', pretrained='nope', model_kwargs=TINY_VFM)
    with pytest.raises(ValueError, match='unknown VFM.*dino_vitb8'):
        TimmVFM('dino_vitl99', random_init=True)
    with pytest.raises(ValueError, match='input_size'):
        TimmVFM('mae_vitb16', random_init=True, model_kwargs=TINY_VFM)


def test_errors_other_than_download_errors_propagate_as_they_are(monkeypatch):
    # an out-of-memory RuntimeError or a TypeError of a version mismatch is not "could not
    # download": it reaches the caller unchanged
    for error in (TypeError("create_model() got an unexpected keyword argument 'x'"),
                  RuntimeError('CUDA out of memory')):
        def failing(name, pretrained=False, error=error, **kwargs):
            raise error
        monkeypatch.setattr(timm, 'create_model', failing)
        with pytest.raises(type(error)) as info:
            TimmVFM('dino_vitb8', model_kwargs=TINY_VFM)
        assert info.value is error


def test_converter_errors_become_weights_errors_and_others_propagate(tmp_path, monkeypatch):
    import dataclasses
    path = tmp_path / 'tiny.pth'
    torch.save(tiny('dino_vitb8').model.state_dict(), path)
    preset = VFM_PRESETS['dino_vitb8']
    for error, expected in ((KeyError('pos_embed'), WeightsError), (TypeError('api'), TypeError)):
        def convert(state, model, error=error):
            raise error
        monkeypatch.setitem(VFM_PRESETS, 'dino_vitb8', dataclasses.replace(preset, convert=convert))
        with pytest.raises(expected, match="tiny.pth cannot be converted.*KeyError|api"):
            TimmVFM('dino_vitb8', pretrained=str(path), model_kwargs=TINY_VFM)
