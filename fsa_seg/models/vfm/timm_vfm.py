"""Vision foundation models (DINO, DINOv2, SAM, MAE) as dense feature extractors, built on timm.

ProxyCLIP takes its proxy attention from a VFM's patch features. The official code builds each VFM
from its own repository and adds a forward hook per crop that is never removed; here every VFM is
one timm model, built once, frozen, run through its public modules (``patch_embed``, ``cls_token``,
``reg_token``, ``pos_embed``, ``blocks``, ``norm``) with no hooks at all.

What timm does not do as the official codes do is the position embedding at other crop sizes
(timm resizes to the target size, antialiased, in float32); so each preset names the official rule
(:mod:`fsa_seg.models.pos_embed`) and the tokens are assembled here with it:

- DINO ViT-B/8, B/16 — per crop, DINO's ``interpolate_pos_encoding`` (scale factors
  (n + 0.1)/n0, no antialias, in the model's dtype), non-square crops included;
- DINOv2 ViT-B/14 with registers — per crop, DINOv2's ``interpolate_pos_encoding`` as its hub
  model ``dinov2_vitb14_reg`` is built (to the size, antialiased, in float32);
- MAE — built at the (square) slide crop, its checkpoint's embedding resampled once as MAE's
  ``interpolate_pos_embed`` does, every crop resized to the crop size (ProxyCLIP);
- SAM — every crop resized to 1024 (ProxyCLIP), nothing resampled: timm's forward as is.

Images arrive in CLIP normalisation (the segmentor's data preprocessor); the VFM wants its own, read
from the timm pretrained config of the chosen weights, so :meth:`TimmVFM.renormalize` maps one to
the other with a single per-channel affine map.
"""
import os
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import timm
import torch
import torch.nn.functional as F
from mmseg.registry import MODELS
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from timm.models.vision_transformer import checkpoint_filter_fn as vit_checkpoint_filter
from timm.models.vision_transformer_sam import checkpoint_filter_fn as sam_checkpoint_filter
from torch import Tensor, nn

from ..components import DownloadableWeights, WeightedComponent
from ..hub import hub_offline_if_unreachable, unreachable_hub_note
from ..pos_embed import (
    DINO_RESAMPLING,
    DINOV2_REG_RESAMPLING,
    MAE_RESAMPLING,
    PosEmbedResampling,
    ResampledCache,
    needs_resampling,
)
from ..weights import (
    CHECKPOINT_ERRORS,
    DOWNLOAD_ERRORS,
    WeightsError,
    is_local_path,
    load_state_dict_strict,
    read_state_dict,
    require_weights,
)

Size = Union[int, Sequence[int]]
StateDict = Dict[str, Tensor]


@dataclass(frozen=True)
class VFMPreset:
    """How one VFM is built from timm and read out.

    Attributes:
        arch: timm architecture name.
        tag: timm pretrained tag of the weights ProxyCLIP uses.
        convert: timm's converter of official checkpoints (DINO/DINOv2/MAE, SAM) to its keys.
        features: ``'tokens'`` — final-norm patch tokens, prefix (cls, register) tokens dropped;
            ``'map'`` — timm's ``forward_features`` is already a (B, C, h, w) map (SAM's neck).
        resampling: the official rule that resamples the position embedding to each crop's grid;
            None — the model only runs at its own grid.
        resize_to_model: resize every crop to the model's ``img_size`` (SAM at 1024, MAE at the
            slide crop size) instead of using it at its own size.
        checkpoint_resampling: build the model at the ``input_size`` constructor argument and
            resample the checkpoint's position embedding once, with this rule (MAE).
        dynamic_img_size: timm's ViT option that lets the patch embedding take any input size;
            SAM's timm model does not take it.
    """
    arch: str
    tag: str
    convert: Callable[[StateDict, nn.Module], StateDict] = vit_checkpoint_filter
    features: str = 'tokens'
    resampling: Optional[PosEmbedResampling] = None
    resize_to_model: bool = False
    checkpoint_resampling: Optional[PosEmbedResampling] = None
    dynamic_img_size: bool = True

    @property
    def img_size_from_input(self) -> bool:
        return self.checkpoint_resampling is not None


DEFAULT_PRESET = 'dino_vitb8'
VFM_PRESETS: Dict[str, VFMPreset] = {
    'dino_vitb8': VFMPreset('vit_base_patch8_224', 'dino', resampling=DINO_RESAMPLING),
    'dino_vitb16': VFMPreset('vit_base_patch16_224', 'dino', resampling=DINO_RESAMPLING),
    'dinov2_vitb14_reg': VFMPreset('vit_base_patch14_reg4_dinov2', 'lvd142m',
                                   resampling=DINOV2_REG_RESAMPLING),
    'sam_vitb': VFMPreset('samvit_base_patch16', 'sa1b', convert=sam_checkpoint_filter,
                          features='map', resize_to_model=True, dynamic_img_size=False),
    'mae_vitb16': VFMPreset('vit_base_patch16_224', 'mae', resize_to_model=True,
                            checkpoint_resampling=MAE_RESAMPLING),
}


def _pair(size: Size) -> Tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, int) else tuple(int(s) for s in size)


def _timm_kwargs(preset: VFMPreset, overrides: Optional[dict]) -> dict:
    """timm constructor arguments: no classifier head, the preset's size rule, then overrides."""
    kwargs = dict(num_classes=0)
    if preset.dynamic_img_size:
        kwargs['dynamic_img_size'] = True
    kwargs.update(overrides or {})
    return kwargs


def _check_patch_kernel(state: StateDict, model: nn.Module, source: str) -> None:
    """Refuse another patch size: timm's filter would silently resample the patch embedding."""
    own = tuple(model.patch_embed.proj.weight.shape[-2:])
    for key, value in state.items():
        if key.endswith('patch_embed.proj.weight') and value.ndim == 4 \
                and tuple(value.shape[-2:]) != own:
            raise WeightsError(f'checkpoint {source} does not match {type(model).__name__}: '
                               f'{key} has patch size {tuple(value.shape[-2:])}, model {own}')


def _resample_checkpoint_pos_embed(state: StateDict, model: nn.Module,
                                   resampling: PosEmbedResampling) -> StateDict:
    """MAE's ``interpolate_pos_embed``: the checkpoint's square grid of patch positions to the
    model's, prefix (cls) positions kept; before timm's filter, which would resample otherwise."""
    pos = state.get('pos_embed')
    if pos is None:
        return state
    extra = model.pos_embed.shape[-2] - model.patch_embed.num_patches
    old, new = int((pos.shape[-2] - extra) ** 0.5), int(model.patch_embed.num_patches ** 0.5)
    if old == new:
        return state
    patch_pos = resampling(pos[:, extra:], (old, old), (new, new))
    return dict(state, pos_embed=torch.cat([pos[:, :extra], patch_pos], dim=1))


def load_state(model: nn.Module, state: StateDict, source: str, preset: VFMPreset) -> None:
    """Load a state dict (official or timm keys) into a timm model: all weights or none."""
    _check_patch_kernel(state, model, source)
    if preset.checkpoint_resampling is not None:
        state = _resample_checkpoint_pos_embed(state, model, preset.checkpoint_resampling)
    try:
        state = preset.convert(state, model)
    except CHECKPOINT_ERRORS as error:  # a file timm cannot convert is a file that does not fit
        raise WeightsError(f'checkpoint {source} cannot be converted for '
                           f'{type(model).__name__}: {type(error).__name__}: {error}') from error
    load_state_dict_strict(model, state, source)


def load_local_weights(model: nn.Module, path: str, preset: VFMPreset,
                       trust: bool = False) -> None:
    """Load a local checkpoint (timm's file or an official release) into a preset's timm model;
    ``trust`` unpickles it fully (see :mod:`..weights`)."""
    state = read_state_dict(path, strip_prefixes=('module.', 'model.'), trust=trust)
    load_state(model, state, path, preset)


def timm_pretrained_cfg(full_name: str):
    """timm's pretrained config of ``arch.tag``, or None where timm knows no such tag."""
    try:
        return timm.models.get_pretrained_cfg(full_name)
    except RuntimeError:
        return None


def _fetch_pretrained(name: str, arch: str, tag: str, kwargs: dict) -> nn.Module:
    """Build with timm's own pretrained download; a failed download names the weights and the
    way out. Other errors (out of memory, a version mismatch) propagate as they are."""
    full_name = f'{arch}.{tag}'
    cfg = timm_pretrained_cfg(full_name)
    if cfg is None:
        known = ', '.join(n.split('.', 1)[1] for n in timm.list_pretrained(f'{arch}.*'))
        raise WeightsError(f'VFM {name!r}: {tag!r} is neither a local file nor a timm pretrained '
                           f'tag of {arch} (tags: {known}).')
    with hub_offline_if_unreachable() as unreachable:
        try:
            return timm.create_model(full_name, pretrained=True, **kwargs)
        except DOWNLOAD_ERRORS as error:
            hub = cfg.hf_hub_id and f'https://huggingface.co/{cfg.hf_hub_id}'
            source = ' or '.join(s for s in (hub, cfg.url) if s)
            raise WeightsError(
                f'VFM {name!r}: could not download or load timm weights {full_name!r} '
                f'({type(error).__name__}: {error}){unreachable_hub_note(unreachable)}. '
                f'Without network, fetch them elsewhere ({source}) and pass '
                'pretrained="/path/to/checkpoint.pth" (timm files and the official '
                'DINO/DINOv2/SAM/MAE checkpoints both load).') from error


@MODELS.register_module()
class TimmVFM(WeightedComponent, nn.Module):
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
        input_size: slide crop size; MAE is built at it (square, as the official code) and every
            crop is resized to it.
        model_kwargs: overrides of the timm architecture (tests build tiny models with them).
        trust_checkpoint: unpickle a local checkpoint fully (see :mod:`..weights`).
    """

    weights_argument = 'vfm_weights'

    def __init__(self, name: str = DEFAULT_PRESET, pretrained: Union[bool, str, None] = True,
                 random_init: bool = False, input_size: Optional[Size] = None,
                 model_kwargs: Optional[dict] = None, trust_checkpoint: bool = False):
        super().__init__()
        self.trust_checkpoint = trust_checkpoint
        if name not in VFM_PRESETS:
            raise ValueError(f'unknown VFM {name!r}; presets: {", ".join(VFM_PRESETS)}')
        preset = VFM_PRESETS[name]
        if random_init and pretrained is True:
            pretrained = None
        if pretrained is True:
            pretrained = preset.tag
        require_weights(f'VFM {name!r}', pretrained or None, random_init)
        self.name, self.preset = name, preset
        self.model = self._build(pretrained, random_init, _timm_kwargs(preset, model_kwargs),
                                 self._crop_size_kwargs(input_size))
        self.model.eval().requires_grad_(False)
        cfg = self.model.pretrained_cfg
        self.mean = tuple(cfg.get('mean', IMAGENET_DEFAULT_MEAN))
        self.std = tuple(cfg.get('std', IMAGENET_DEFAULT_STD))
        self._renorm = {}  # (dtype, device) → the affine map of renormalize, made once
        self._pos_embeds = ResampledCache()  # per grid, made once (slow on GPUs)

    @classmethod
    def downloadable_weights(cls, cfg: dict) -> Optional[DownloadableWeights]:
        preset = VFM_PRESETS.get(cfg.get('name', DEFAULT_PRESET))
        pretrained = cfg.get('pretrained', True)
        if preset is None or cfg.get('random_init'):
            return None
        if pretrained is True:
            pretrained = preset.tag
        if not isinstance(pretrained, str) or is_local_path(pretrained) \
                or os.path.isfile(pretrained):
            return None
        full_name = f'{preset.arch}.{pretrained}'
        pretrained_cfg = timm_pretrained_cfg(full_name)
        sources = []
        if pretrained_cfg is not None and pretrained_cfg.hf_hub_id:
            sources.append(f'https://huggingface.co/{pretrained_cfg.hf_hub_id} (model.safetensors)')
        if pretrained_cfg is not None and pretrained_cfg.url:
            sources.append(pretrained_cfg.url)
        return DownloadableWeights('VFM', cls.weights_argument, f'timm {full_name}',
                                   tuple(sources))

    def _crop_size_kwargs(self, input_size: Optional[Size]) -> dict:
        """MAE's constructor size: the slide crop, square as in the official code (every crop is
        resized to ``slide_crop × slide_crop`` and the embedding resampled to a square grid)."""
        if not self.preset.img_size_from_input:
            return {}
        if input_size is None:
            raise ValueError(f'VFM {self.name!r} is built at the slide crop size: pass input_size.')
        size = _pair(input_size)
        if size[0] != size[1]:
            raise ValueError(f'VFM {self.name!r} is built at a square crop, as the official code '
                             f'(every crop resized to slide_crop × slide_crop); got {size}.')
        return dict(img_size=size)

    def _build(self, pretrained: Optional[str], random_init: bool, kwargs: dict,
               crop_kwargs: dict) -> nn.Module:
        full_name = f'{self.preset.arch}.{self.preset.tag}'
        local = bool(pretrained) and (is_local_path(pretrained) or os.path.isfile(pretrained))
        if random_init or local:
            model = timm.create_model(full_name, pretrained=False, **dict(crop_kwargs, **kwargs))
            if local:
                load_local_weights(model, pretrained, self.preset, self.trust_checkpoint)
            return model
        model = _fetch_pretrained(self.name, self.preset.arch, pretrained, kwargs)
        if crop_kwargs:  # timm's weights at their own size, then resampled the official way
            native, model = model, timm.create_model(full_name, pretrained=False,
                                                     **dict(crop_kwargs, **kwargs))
            load_state(model, native.state_dict(), f'timm {self.preset.arch}.{pretrained}',
                       self.preset)
        return model

    @property
    def patch_size(self) -> Tuple[int, int]:
        return tuple(self.model.patch_embed.patch_size)

    @property
    def out_channels(self) -> int:
        """Channels of the feature map (the ViT width, or SAM's neck width)."""
        return self.model.num_features

    @property
    def dtype(self) -> torch.dtype:
        return self.model.patch_embed.proj.weight.dtype

    def grid_size(self, height: int, width: int) -> Tuple[int, int]:
        """Feature grid for an (height, width) crop."""
        if self.preset.resize_to_model:
            height, width = self.model.patch_embed.img_size
        return height // self.patch_size[0], width // self.patch_size[1]

    def renormalize(self, images: Tensor) -> Tensor:
        """CLIP normalisation → the VFM's: one per-channel affine map, in the images' dtype."""
        key = (images.dtype, images.device)
        if key not in self._renorm:  # once per dtype and device: no host→device copy per crop
            mean, std = (torch.tensor(v, dtype=torch.float64) for v in (self.mean, self.std))
            clip_mean, clip_std = (torch.tensor(v, dtype=torch.float64)
                                   for v in (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD))
            self._renorm[key] = tuple(t.view(1, -1, 1, 1).to(images.device, images.dtype)
                                      for t in (clip_std / std, (clip_mean - mean) / std))
        scale, shift = self._renorm[key]
        return images * scale + shift

    def prepare(self, images: Tensor) -> Tensor:
        """Resize to the model's size (SAM, MAE; bilinear, as ProxyCLIP) or crop to whole patches
        (a convolutional patchify floors anyway)."""
        if self.preset.resize_to_model:
            size = tuple(self.model.patch_embed.img_size)
            if tuple(images.shape[-2:]) != size:
                images = F.interpolate(images, size=size, mode='bilinear', align_corners=False)
            return images
        grid_h, grid_w = self.grid_size(*images.shape[-2:])
        return images[..., :grid_h * self.patch_size[0], :grid_w * self.patch_size[1]]

    # ------------------------------------------------------------------ token ViTs
    def embed(self, x: Tensor) -> Tuple[Tensor, Tuple[int, int]]:
        """VFM-normalised, prepared input (B, 3, H, W) of whole patches → the tokens entering the
        first block, (B, prefix + h·w, C) — prefix (cls, registers) tokens first, the position
        embedding resampled to the grid by the preset's official rule, then ``norm_pre`` — and
        the grid (h, w)."""
        model = self._token_model()
        x = x.to(self.dtype)
        patches = model.patch_embed(x)
        if patches.ndim == 4:  # (B, h, w, C): timm's patch embedding with dynamic_img_size
            grid = tuple(patches.shape[1:3])
            patches = patches.flatten(1, 2)
        else:
            grid = tuple(model.patch_embed.dynamic_feat_size(x.shape[-2:]))
        pos = self._pos_embed(grid, square_input=x.shape[-2] == x.shape[-1])
        prefix = [token.expand(len(x), -1, -1) for token in (model.cls_token, model.reg_token)
                  if token is not None]
        if model.no_embed_class:  # DINOv2: patches only carry a position, prefix tokens do not
            tokens = torch.cat(prefix + [patches + pos], dim=1)
        else:
            tokens = torch.cat(prefix + [patches], dim=1) + pos
        tokens = model.patch_drop(model.pos_drop(tokens))
        return model.norm_pre(tokens), grid

    def last_block_input(self, x: Tensor) -> Tuple[Tensor, Tuple[int, int]]:
        """The tokens entering the last block (all blocks but the last run), and the grid; the
        input as for :meth:`embed`."""
        tokens, grid = self.embed(x)
        for block in self.model.blocks[:-1]:
            tokens = block(tokens)
        return tokens, grid

    def _token_model(self) -> nn.Module:
        if self.preset.features != 'tokens':
            raise ValueError(f'VFM {self.name!r} is not a token ViT (its encoder works on '
                             'windowed maps): embed/last_block_input do not apply.')
        return self.model

    def _pos_embed(self, grid: Tuple[int, int], square_input: bool) -> Tensor:
        """The position embedding for the grid, prefix positions (where the model has any) kept."""
        model = self.model
        slots = 0 if model.no_embed_class else model.num_prefix_tokens
        prefix_pos, patch_pos = model.pos_embed[:, :slots], model.pos_embed[:, slots:]
        native = tuple(model.patch_embed.grid_size)
        if not needs_resampling(grid, native, square_input):
            return model.pos_embed
        if self.preset.resampling is None:
            raise ValueError(f'VFM {self.name!r} runs at its own {native} grid only (crops are '
                             f'resized to {tuple(model.patch_embed.img_size)}); got {grid}.')
        return self._pos_embeds(model.pos_embed, (tuple(grid), square_input), lambda: torch.cat(
            [prefix_pos, self.preset.resampling(patch_pos, native, grid)], dim=1))

    # ------------------------------------------------------------------ features
    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) CLIP-normalised → (B, C, h, w) features in the images' dtype."""
        x = self.prepare(self.renormalize(images)).to(self.dtype)
        if self.preset.features == 'map':
            return self.model.forward_features(x).to(images.dtype)
        tokens, (grid_h, grid_w) = self.embed(x)
        tokens = self.model.norm(self.model.blocks(tokens))[:, self.model.num_prefix_tokens:]
        features = tokens.reshape(len(x), grid_h, grid_w, -1).permute(0, 3, 1, 2)
        return features.to(images.dtype)

    def train(self, mode: bool = True) -> 'TimmVFM':
        """Stay in eval mode whatever the segmentor asks: a frozen feature extractor."""
        return super().train(False)
