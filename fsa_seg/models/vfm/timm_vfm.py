"""Vision foundation models (DINO, DINOv2, SAM, MAE) as dense feature extractors, built on timm.

ProxyCLIP takes its proxy attention from a VFM's patch features. The official code builds each VFM
from its own repository and adds a forward hook per crop that is never removed; here every VFM is
one timm model, built once, frozen, read out through ``forward_features`` with no hooks at all.

Images arrive in CLIP normalisation (the segmentor's data preprocessor); the VFM wants its own, read
from the timm pretrained config of the chosen weights, so :meth:`TimmVFM.renormalize` maps one to
the other with a single per-channel affine map.
"""
import os
import sys
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple, Union

import timm
import torch
import torch.nn.functional as F
from mmseg.registry import MODELS
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from torch import Tensor, nn

from ..weights import (
    WeightsError,
    is_local_path,
    load_state_dict_strict,
    read_state_dict,
    require_weights,
)

Size = Union[int, Sequence[int]]


@dataclass(frozen=True)
class VFMPreset:
    """How one VFM is built from timm and read out.

    Attributes:
        arch: timm architecture name.
        tag: timm pretrained tag of the weights ProxyCLIP uses.
        features: ``'tokens'`` — final-norm patch tokens of ``forward_features`` with the
            prefix (cls, register) tokens dropped; ``'map'`` — ``forward_features`` is already a
            (B, C, h, w) map (SAM's image-encoder neck).
        resize_to_model: resize every crop to the model's ``img_size`` (SAM at 1024, MAE at the
            slide crop size) instead of using it at its own size.
        img_size_from_input: build the model at the ``input_size`` constructor argument (MAE, whose
            absolute position embedding is then resampled once at load time, as the official code).
        dynamic_img_size: timm's ViT option that resamples the position embedding to any input grid;
            SAM's timm model always does this and does not take the option.
    """
    arch: str
    tag: str
    features: str = 'tokens'
    resize_to_model: bool = False
    img_size_from_input: bool = False
    dynamic_img_size: bool = True


VFM_PRESETS: Dict[str, VFMPreset] = {
    'dino_vitb8': VFMPreset('vit_base_patch8_224', 'dino'),
    'dino_vitb16': VFMPreset('vit_base_patch16_224', 'dino'),
    'dinov2_vitb14_reg': VFMPreset('vit_base_patch14_reg4_dinov2', 'lvd142m'),
    'sam_vitb': VFMPreset('samvit_base_patch16', 'sa1b', features='map', resize_to_model=True,
                          dynamic_img_size=False),
    'mae_vitb16': VFMPreset('vit_base_patch16_224', 'mae', resize_to_model=True,
                            img_size_from_input=True),
}


def _pair(size: Size) -> Tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, int) else tuple(int(s) for s in size)


def _timm_kwargs(preset: VFMPreset, input_size: Optional[Size],
                 overrides: Optional[dict]) -> dict:
    """timm constructor arguments: no classifier head, the preset's size rule, then overrides."""
    kwargs = dict(num_classes=0)
    if preset.dynamic_img_size:
        kwargs['dynamic_img_size'] = True
    if preset.img_size_from_input:
        kwargs['img_size'] = _pair(input_size)
    kwargs.update(overrides or {})
    return kwargs


def _filter_fn(model: nn.Module):
    """timm's key converter of the model's module (official DINO/DINOv2/MAE/SAM → timm keys)."""
    module = sys.modules[type(model).__module__]
    return getattr(module, 'checkpoint_filter_fn', lambda state, _: state)


def _check_patch_kernel(state: Dict[str, Tensor], model: nn.Module, path: str) -> None:
    """Refuse another patch size: timm's filter would silently resample the patch embedding."""
    own = tuple(model.patch_embed.proj.weight.shape[-2:])
    for key, value in state.items():
        if key.endswith('patch_embed.proj.weight') and value.ndim == 4 \
                and tuple(value.shape[-2:]) != own:
            raise WeightsError(f'checkpoint {path} does not match {type(model).__name__}: '
                               f'{key} has patch size {tuple(value.shape[-2:])}, model {own}')


def load_local_weights(model: nn.Module, path: str, trust: bool = False) -> None:
    """Load a local checkpoint into a timm model: convert keys the timm way, then all-or-nothing."""
    state = read_state_dict(path, strip_prefixes=('module.', 'model.'), trust=trust)
    _check_patch_kernel(state, model, path)
    try:
        state = _filter_fn(model)(state, model)
    except Exception as error:  # a file timm cannot convert is a file that does not fit
        raise WeightsError(f'checkpoint {path} cannot be converted for '
                           f'{type(model).__name__}: {type(error).__name__}: {error}') from error
    load_state_dict_strict(model, state, path)


def timm_pretrained_cfg(full_name: str):
    """timm's pretrained config of ``arch.tag``, or None where timm knows no such tag."""
    try:
        return timm.models.get_pretrained_cfg(full_name)
    except RuntimeError:
        return None


def _fetch_pretrained(name: str, arch: str, tag: str, kwargs: dict) -> nn.Module:
    """Build with timm's own pretrained download; any failure names the weights and the way out."""
    full_name = f'{arch}.{tag}'
    cfg = timm_pretrained_cfg(full_name)
    if cfg is None:
        known = ', '.join(n.split('.', 1)[1] for n in timm.list_pretrained(f'{arch}.*'))
        raise WeightsError(f'VFM {name!r}: {tag!r} is neither a local file nor a timm pretrained '
                           f'tag of {arch} (tags: {known}).')
    try:
        return timm.create_model(full_name, pretrained=True, **kwargs)
    except Exception as error:  # network, hub, cache and fit errors all end the same way
        hub = cfg.hf_hub_id and f'https://huggingface.co/{cfg.hf_hub_id}'
        source = ' or '.join(s for s in (hub, cfg.url) if s)
        raise WeightsError(
            f'VFM {name!r}: could not download or load timm weights {full_name!r} '
            f'({type(error).__name__}: {error}). Without network, fetch them elsewhere '
            f'({source}) and pass pretrained="/path/to/checkpoint.pth" (timm files and the '
            'official DINO/DINOv2/SAM/MAE checkpoints both load).') from error


@MODELS.register_module()
class TimmVFM(nn.Module):
    """A frozen VFM from timm: CLIP-normalised images (B, 3, H, W) → dense features (B, C, h, w).

    Args:
        name: preset name, a key of :data:`VFM_PRESETS` (``dino_vitb8``, ``dino_vitb16``,
            ``dinov2_vitb14_reg``, ``sam_vitb``, ``mae_vitb16``).
        pretrained: ``True`` — the preset's timm tag (downloaded and cached by timm); a string —
            another timm tag of the architecture or a local checkpoint file (timm's files and the
            official releases, converted with timm's ``checkpoint_filter_fn`` and loaded strictly);
            ``None``/``False`` — no weights, an error unless ``random_init``.
        random_init: random weights, the explicit opt-in for tests (the default ``pretrained=True``
            then means nothing).
        input_size: slide crop size; MAE is built at it and every crop is resized to it.
        model_kwargs: overrides of the timm architecture (tests build tiny models with them).
        trust_checkpoint: unpickle a local checkpoint fully (see :mod:`..weights`).
    """

    def __init__(self, name: str = 'dino_vitb8', pretrained: Union[bool, str, None] = True,
                 random_init: bool = False, input_size: Optional[Size] = None,
                 model_kwargs: Optional[dict] = None, trust_checkpoint: bool = False):
        super().__init__()
        self.trust_checkpoint = trust_checkpoint
        if name not in VFM_PRESETS:
            raise ValueError(f'unknown VFM {name!r}; presets: {", ".join(VFM_PRESETS)}')
        preset = VFM_PRESETS[name]
        if preset.img_size_from_input and input_size is None:
            raise ValueError(f'VFM {name!r} is built at the slide crop size: pass input_size.')
        if random_init and pretrained is True:
            pretrained = None
        if pretrained is True:
            pretrained = preset.tag
        require_weights(f'VFM {name!r}', pretrained or None, random_init)
        self.name, self.preset = name, preset
        self.model = self._build(preset, pretrained, random_init,
                                 _timm_kwargs(preset, input_size, model_kwargs))
        self.model.eval().requires_grad_(False)
        cfg = self.model.pretrained_cfg
        self.mean = tuple(cfg.get('mean', IMAGENET_DEFAULT_MEAN))
        self.std = tuple(cfg.get('std', IMAGENET_DEFAULT_STD))

    @classmethod
    def random_weights_config(cls, cfg: dict) -> dict:
        """``cfg`` built with random weights instead of its pretrained ones: how
        ``--random-weights`` (tests, benchmarks, pipeline checks) switches this component."""
        return dict(cfg, pretrained=None, random_init=True)

    def _build(self, preset: VFMPreset, pretrained: Optional[str], random_init: bool,
               kwargs: dict) -> nn.Module:
        local = bool(pretrained) and (is_local_path(pretrained) or os.path.isfile(pretrained))
        if random_init or local:
            model = timm.create_model(f'{preset.arch}.{preset.tag}', pretrained=False, **kwargs)
            if local:
                load_local_weights(model, pretrained, self.trust_checkpoint)
            return model
        return _fetch_pretrained(self.name, preset.arch, pretrained, kwargs)

    @property
    def patch_size(self) -> Tuple[int, int]:
        return tuple(self.model.patch_embed.patch_size)

    @property
    def out_channels(self) -> int:
        """Channels of the feature map (the ViT width, or SAM's neck width)."""
        return self.model.num_features

    def grid_size(self, height: int, width: int) -> Tuple[int, int]:
        """Feature grid for an (height, width) crop."""
        if self.preset.resize_to_model:
            height, width = self.model.patch_embed.img_size
        return height // self.patch_size[0], width // self.patch_size[1]

    def renormalize(self, images: Tensor) -> Tensor:
        """CLIP normalisation → the VFM's: one per-channel affine map, in the images' dtype."""
        def channels(values):
            return images.new_tensor(values).view(1, -1, 1, 1)
        scale = channels(OPENAI_CLIP_STD) / channels(self.std)
        shift = (channels(OPENAI_CLIP_MEAN) - channels(self.mean)) / channels(self.std)
        return images * scale + shift

    def _prepare(self, images: Tensor) -> Tensor:
        """Resize to the model's size (SAM, MAE) or crop to whole patches (conv patchify floors)."""
        if self.preset.resize_to_model:
            size = tuple(self.model.patch_embed.img_size)
            if tuple(images.shape[-2:]) != size:
                images = F.interpolate(images, size=size, mode='bilinear', align_corners=False)
            return images
        grid_h, grid_w = self.grid_size(*images.shape[-2:])
        return images[..., :grid_h * self.patch_size[0], :grid_w * self.patch_size[1]]

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) CLIP-normalised → (B, C, h, w) features in the images' dtype."""
        dtype = next(self.model.parameters()).dtype
        x = self._prepare(self.renormalize(images)).to(dtype)
        features = self.model.forward_features(x)
        if self.preset.features == 'tokens':
            grid_h, grid_w = self.grid_size(*x.shape[-2:])
            tokens = features[:, self.model.num_prefix_tokens:]
            features = tokens.reshape(len(x), grid_h, grid_w, -1).permute(0, 3, 1, 2)
        return features.to(images.dtype)

    def train(self, mode: bool = True) -> 'TimmVFM':
        """Stay in eval mode whatever the segmentor asks: a frozen feature extractor."""
        return super().train(False)
