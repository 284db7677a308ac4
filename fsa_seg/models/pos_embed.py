"""Resampling of absolute position embeddings, exactly as the official codes do it.

Each official code resamples the (h0, w0) grid of patch position embeddings bicubically
(align_corners=False), but they differ in how, and small differences in sampling move features by
up to 0.7 (DINO ViT-B/8 at a 336 crop, timm's rule against DINO's). One :class:`PosEmbedResampling`
says which rule; the prefix (cls, register) embeddings are never resampled.
"""
from dataclasses import dataclass
from typing import Sequence

import torch.nn.functional as F
from torch import Tensor


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
