"""ProxyCLIP (Lan et al., ECCV 2024): CLIP values under a vision foundation model's attention."""
from typing import Optional

import torch
import torch.nn.functional as F
from mmseg.registry import MODELS
from torch import Tensor

from ..layout import aligned_row_length, with_padding, zero_padded
from ..plugins.base import split_heads
from .base import TrainingFreeSegmentor, upsample_bilinear


def proxy_attention(vfm_features: Tensor, beta: float, gamma: float,
                    aligned_rows: Optional[bool] = None) -> Tensor:
    """A = row-softmax(γ·(S − β·mean(S))) with negative entries masked, S the cosine similarity
    of the VFM features (B, C, h, w); returns (B, 1, N, N), shared by the heads.

    The official code takes mean(S) over the whole batch; it is taken per image here (identical
    at batch size 1, and a batch never changes an image's result). With ``aligned_rows`` (by
    default on CUDA) A's rows start at multiples of 16 bytes (:mod:`fsa_seg.models.layout`) and
    their padding holds zeros (the logits are made in rows padded with −inf, which the softmax
    turns into 0), so that A·V runs over the aligned length (:func:`attend_over_padding`)."""
    features = F.normalize(vfm_features.flatten(2).transpose(1, 2), dim=-1)
    batch, num_tokens = features.shape[:2]
    if aligned_rows is None:
        aligned_rows = features.is_cuda
    width = aligned_row_length(num_tokens, features.dtype) if aligned_rows else num_tokens
    logits = features.new_empty((batch, num_tokens, width))
    similarity = torch.matmul(features, features.transpose(1, 2), out=logits[..., :num_tokens])
    mean = similarity.mean(dim=(1, 2), keepdim=True)
    logits = logits.sub_(beta * mean).mul_(gamma)     # γ·(S − β·mean(S)), on whole rows (faster)
    logits[..., num_tokens:] = float('-inf')         # the padding (left out of the mean)
    attn = logits.masked_fill_(logits < 0, float('-inf')).softmax(dim=-1)
    return attn[..., :num_tokens].unsqueeze(1)


def attend_over_padding(attn: Tensor, merged_values: Tensor, heads: int) -> Tensor:
    """A·V (B, H, N, d) for a shared attention (B, 1, N, N) of :func:`proxy_attention`, from the
    values' merged heads (B, N', H·d) of :meth:`ProxyCLIP.merged_values_on_grid`, N' the
    attention's row stride: with padded rows, whose padding holds zeros, and as many rows of
    values, zeros last, the product is contracted over the padded length. On an H100 in fp16 at
    N = 1764, 1764 × 1764 · 1764 × 768 takes 34.1 µs, over 1768 entries 9.9 µs: its fast GEMM
    kernels want a contracted length of a multiple of 8."""
    return split_heads(torch.matmul(with_padding(attn[:, 0]), merged_values), heads)


@MODELS.register_module()
class ProxyCLIP(TrainingFreeSegmentor):
    """The last block keeps its attention path alone (no residual, no FFN, no class token); its
    values, resized from the CLIP grid to the VFM grid, are mixed by the proxy attention.
    Outputs are at the VFM grid's resolution.

    Args:
        vfm: config of the vision foundation model (e.g. ``dict(type='TimmVFM', ...)``); it is
            given ``input_size``, the slide crop size, unless it sets one (MAE is built at it).
        beta, gamma: normalisation of the proxy attention.
    """

    component_types = dict(TrainingFreeSegmentor.component_types, vfm='TimmVFM')

    def __init__(self, *args, vfm: dict, beta: float = 1.2, gamma: float = 3.0, **kwargs):
        super().__init__(*args, **kwargs)
        if self.test_cfg.mode == 'slide':  # VFMs built at the crop size (MAE) read it from here
            vfm = dict(dict(input_size=tuple(self.test_cfg.crop_size)), **vfm)
        self.vfm = self.build_component('vfm', vfm)
        self.beta, self.gamma = float(beta), float(gamma)

    def undefined_probabilities_cause(self) -> str:
        return ('ProxyCLIP\'s proxy attention masks every entry of a crop, and is undefined, '
                f'when the mean cosine similarity of its VFM features exceeds 1/beta = '
                f'{1 / self.beta:.3g} (nearly uniform crops), as in the official code')

    def encode_crops(self, crops: Tensor) -> Tensor:
        tokens, grid = self.output_tokens(crops)
        return F.normalize(tokens, dim=-1).transpose(1, 2).unflatten(2, grid)

    def output_tokens(self, crops: Tensor):
        """``ln_post(out_proj(A·V)) @ proj`` per VFM-grid patch (B, N, D), and the grid."""
        vfm_features = self.vfm(crops)
        grid = tuple(vfm_features.shape[-2:])
        attn = proxy_attention(vfm_features.to(self.clip.dtype), self.beta, self.gamma)
        merged = self.merged_values_on_grid(crops, grid, rows=attn.stride(-2))
        heads = self.clip.num_heads
        values = split_heads(merged[:, :attn.shape[-1]], heads)
        attended = self.apply_plugin(attn, values, attend_over_padding(attn, merged, heads), grid,
                                     padding_holds_zeros=True)
        return self.clip.head(self.clip.out_proj(attended)), grid

    def merged_values_on_grid(self, crops: Tensor, grid, rows: Optional[int] = None) -> Tensor:
        """The values of the patch tokens bilinearly resized to ``grid``, heads merged
        (B, rows, H·d), the rows beyond h·w zeros (h·w rows by default). Laid out token by token
        (one copy of the resized channels): the per-head values, a view, are then read a token
        at a time by the products, copies and means of a plug-in too."""
        tokens, clip_grid = self.clip.forward_to_last_block(crops)
        _, _, values = self.clip.qkv(tokens[:, 1:])
        batch, heads, _, head_dim = values.shape
        values = values.transpose(2, 3).reshape(batch, heads * head_dim, *clip_grid)
        values = upsample_bilinear(values, grid).flatten(2)                   # (B, H·d, h·w)
        num_tokens = values.shape[-1]
        merged = zero_padded(values, (batch, rows or num_tokens, heads * head_dim), num_tokens)
        merged[:, :num_tokens] = values.transpose(1, 2)
        return merged
