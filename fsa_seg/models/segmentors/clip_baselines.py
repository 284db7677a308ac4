"""CLIP-only training-free baselines: vanilla CLIP, MaskCLIP, SCLIP, ClearCLIP, NACLIP.

Each is a :class:`CLIPSegmentor` with its own :class:`LastBlock` description; a config may override
the description's fields (``last_block=dict(residual=False)``).
"""
from typing import Optional, Tuple

import torch.nn.functional as F
from mmseg.registry import MODELS
from torch import Tensor

from .base import TrainingFreeSegmentor
from .last_block import LastBlock


@MODELS.register_module()
class CLIPSegmentor(TrainingFreeSegmentor):
    """Dense CLIP features from a modified last block.

    With a plug-in that acts on patches (FSA: its attention is an attention over patches) the
    last block works on the patch tokens alone: the class token is dropped before q, k, v.
    """
    default_last_block = LastBlock('q-k')

    def __init__(self, *args, last_block: Optional[dict] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.last_block = self.default_last_block.updated(**(last_block or {}))

    def encode_crops(self, crops: Tensor) -> Tensor:
        tokens, grid = self.clip.forward_to_last_block(crops)
        features = self.clip.head(self.last_block_tokens(tokens, grid))
        features = F.normalize(features, dim=-1)
        return features.transpose(1, 2).unflatten(2, grid)

    def last_block_tokens(self, tokens: Tensor, grid: Tuple[int, int]) -> Tensor:
        """Patch-token outputs (B, N, C) of the last block as the baseline describes it."""
        num_prefix = 1 if self.plugin_keeps_prefix else 0
        tokens = tokens[:, 1 - num_prefix:]
        q, k, v = self.clip.qkv(tokens)
        attended = self.last_block.attend(q, k, v, grid, num_prefix)  # fused: no T×T weights
        if self.plugin is not None:  # the plug-in needs the weights themselves
            attn = self.last_block.attention_weights(q, k, grid, num_prefix)
            attended = self.apply_plugin(attn, v, attended, grid, num_prefix)
        block = self.clip.last_block
        x = block.ls_1(self.clip.out_proj(attended))
        if self.last_block.residual:
            x = tokens + x
        if self.last_block.ffn:
            x = x + block.ls_2(block.mlp(block.ln_2(x)))
        return x[:, num_prefix:]


@MODELS.register_module()
class VanillaCLIP(CLIPSegmentor):
    """CLIP's patch tokens as they are."""
    default_last_block = LastBlock('q-k', residual=True, ffn=True)


@MODELS.register_module()
class MaskCLIP(CLIPSegmentor):
    """MaskCLIP (Zhou et al., ECCV 2022): the value path of the last block."""
    default_last_block = LastBlock('identity', residual=True, ffn=True)


@MODELS.register_module()
class SCLIP(CLIPSegmentor):
    """SCLIP (Wang et al., ECCV 2024): correlative self-attention q-q + k-k (rows sum to 2;
    FSA takes this attention as SCLIP defines it)."""
    default_last_block = LastBlock('q-q+k-k', residual=True, ffn=True)


@MODELS.register_module()
class ClearCLIP(CLIPSegmentor):
    """ClearCLIP (Lan et al., ECCV 2024): q-q attention, no residual, no FFN."""
    default_last_block = LastBlock('q-q', residual=False, ffn=False)


@MODELS.register_module()
class NACLIP(CLIPSegmentor):
    """NACLIP (Hajimiri et al., WACV 2025): k-k attention plus a Gaussian neighbourhood window
    (σ = 5 patches; computed in float32 as NACLIP's code does, then in the model's dtype), no
    residual, no FFN."""
    default_last_block = LastBlock('k-k+neighbourhood', residual=False, ffn=False,
                                   attention_kwargs=(('sigma', 5.0),))
