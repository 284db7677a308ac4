"""Resampling of absolute position embeddings, exactly as the official codes do it.

Each official code resamples the (h0, w0) grid of patch position embeddings bicubically
(align_corners=False), but they differ in how, and small differences in sampling move features by
up to 0.7 (DINO ViT-B/8 at a 336 crop, timm's rule against DINO's). One :class:`PosEmbedResampling`
says which rule; the prefix (cls, register) embeddings are never resampled.
:class:`ResampledCache` keeps a model's resampled embeddings per grid: they depend on the weights
and the grid only, and torch's bicubic kernel is slow on GPUs (measured on an H100 in fp16: 3.7 ms
a call, DINO-B/8's or CLIP-B/16's at a 336 crop — 58 % of a ProxyCLIP crop's GPU time when it
was made per crop).
"""
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Hashable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .cuda_graphs import hold_during_capture


@dataclass(frozen=True)
class PosEmbedResampling:
    """One official rule for resampling position embeddings from a (h0, w0) grid to (h, w).

    Attributes:
        offset: > 0 — by the scale factors ((h + offset) / h0, (w + offset) / w0), the kludge of
            DINO's ``interpolate_pos_encoding`` (facebookresearch/dino#8) that the CLIP
            segmentation codes copy; 0 — to the size (h, w).
        antialias: torch's antialiased bicubic (DINOv2 with registers).
        float32: resample in float32 and cast back (DINOv2 does so; MAE resamples its float32
            checkpoint); otherwise in the embeddings' own dtype (DINO, CLIP).
    """
    offset: float
    antialias: bool = False
    float32: bool = False

    def __call__(self, patch_pos: Tensor, native_grid: Sequence[int],
                 grid: Sequence[int]) -> Tensor:
        """(..., h0·w0, C) patch position embeddings → (..., h·w, C), in their dtype."""
        dim = patch_pos.shape[-1]
        x = patch_pos.reshape(1, *native_grid, dim).permute(0, 3, 1, 2)
        if self.offset:
            scale = tuple((size + self.offset) / native for size, native in zip(grid, native_grid))
            x = _bicubic(x, self.float32, self.antialias, scale_factor=scale)
        else:
            x = _bicubic(x, self.float32, self.antialias, size=tuple(grid))
        if tuple(x.shape[-2:]) != tuple(grid):  # DINO asserts the same; a scale can floor short
            raise ValueError(f'resampling {tuple(native_grid)} to {tuple(grid)} gave '
                             f'{tuple(x.shape[-2:])}')
        return x.permute(0, 2, 3, 1).reshape(*patch_pos.shape[:-2], -1, dim)


def _bicubic(x: Tensor, float32: bool, antialias: bool, **target) -> Tensor:
    if float32:
        return _interpolate(x.float(), antialias, **target).to(x.dtype)
    try:
        return _interpolate(x, antialias, **target)
    except NotImplementedError:
        # torch lacks a bicubic kernel for some dtypes on some devices (half on CPU before
        # torch 2.1, antialiased half/bfloat16 on CPU): the nearest we can do is float32.
        return _interpolate(x.float(), antialias, **target).to(x.dtype)


def _interpolate(x: Tensor, antialias: bool, **target) -> Tensor:
    return F.interpolate(x, mode='bicubic', align_corners=False, antialias=antialias, **target)


def needs_resampling(grid: Sequence[int], native_grid: Sequence[int], square_input: bool) -> bool:
    """The official test ``npatch == N and w == h``: a non-square input is resampled even when its
    (floored) grid is the native one, since DINO's scale factors then differ from 1."""
    return tuple(grid) != tuple(native_grid) or not square_input


# facebookresearch/dino vision_transformer.py VisionTransformer.interpolate_pos_encoding, in the
# model's dtype; SCLIP, ClearCLIP, NACLIP, ProxyCLIP and CASS resample CLIP's the same way.
DINO_RESAMPLING = PosEmbedResampling(offset=0.1)
# facebookresearch/dinov2 DinoVisionTransformer.interpolate_pos_encoding with the arguments of
# its hub model dinov2_vitb14_reg (interpolate_offset=0.0, interpolate_antialias=True): to the
# size, antialiased, in float32.
DINOV2_REG_RESAMPLING = PosEmbedResampling(offset=0.0, antialias=True, float32=True)
# facebookresearch/mae util/pos_embed.py interpolate_pos_embed (as ProxyCLIP's mae/pos_embed.py):
# once, on the float32 checkpoint, to the square grid of the model's image size.
MAE_RESAMPLING = PosEmbedResampling(offset=0.0, float32=True)


class ResampledCache:
    """A model's resampled position embeddings for its most recently used grids.

    ``cache(source, key, compute)`` returns ``compute()``, made once per ``key`` for as long as
    ``source`` (the embedding parameter it is made from) is the same tensor with the same data: the
    same object, storage, dtype, device and version (any in-place change, ``load_state_dict``
    included, bumps the version), so changed weights are never served stale. While autograd
    records through ``source`` nothing is cached. At most ``capacity`` grids are kept (whole-image
    inference meets a new grid with each image size); a copy of the model starts empty. A CUDA
    graph captured while an entry was served keeps that entry's tensor alive (it reads it at its
    address), also once the cache has dropped it.
    """

    def __init__(self, capacity: int = 8):
        self.capacity = capacity
        self._entries: 'OrderedDict[Hashable, tuple]' = OrderedDict()

    def __call__(self, source: Tensor, key: Hashable, compute: Callable[[], Tensor]) -> Tensor:
        if torch.is_grad_enabled() and source.requires_grad:
            return compute()
        state = (source.data_ptr(), source.dtype, source.device, source._version)
        entry = self._entries.get(key)
        if entry is not None and entry[0]() is source and entry[1] == state:
            self._entries.move_to_end(key)
            return hold_during_capture(entry[2])
        value = compute()
        self._entries[key] = (weakref.ref(source), state, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)
        return hold_during_capture(value)

    def __len__(self) -> int:
        return len(self._entries)

    def __deepcopy__(self, memo) -> 'ResampledCache':
        return ResampledCache(self.capacity)

    def __getstate__(self) -> dict:  # pickling (torch.save of a whole model) keeps no entries
        return dict(capacity=self.capacity)

    def __setstate__(self, state: dict) -> None:
        self.__init__(state['capacity'])
