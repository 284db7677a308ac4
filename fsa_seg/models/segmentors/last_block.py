"""Baselines as small descriptions of CLIP's last block.

Training-free CLIP segmentors differ only in the last block of the visual trunk: which attention
it uses, and whether its residual connection and FFN are kept. An attention is a function
``(q, k, grid, num_prefix) -> attention weights (B, H, T, T)`` or None for identity attention
(the value path alone); :func:`register_attention` adds one under a name.
"""
from dataclasses import dataclass, replace
from typing import Callable, Dict, Optional, Tuple

import torch
from torch import Tensor

AttentionFn = Callable[..., Optional[Tensor]]
ATTENTIONS: Dict[str, AttentionFn] = {}


def register_attention(name: str):
    def register(fn: AttentionFn) -> AttentionFn:
        if name in ATTENTIONS:
            raise KeyError(f'attention {name!r} is already registered')
        ATTENTIONS[name] = fn
        return fn
    return register


def _self_softmax(x: Tensor, y: Tensor) -> Tensor:
    return (x @ y.transpose(-1, -2) * x.shape[-1] ** -0.5).softmax(dim=-1)


@register_attention('q-k')
def qk_attention(q: Tensor, k: Tensor, **_) -> Tensor:
    """CLIP's own attention, softmax(s·q kᵀ)."""
    return _self_softmax(q, k)


@register_attention('identity')
def identity_attention(q: Tensor, k: Tensor, **_) -> None:
    """MaskCLIP: every token attends to itself only."""
    return None


@register_attention('q-q')
def qq_attention(q: Tensor, k: Tensor, **_) -> Tensor:
    """ClearCLIP: softmax(s·q qᵀ)."""
    return _self_softmax(q, q)


@register_attention('q-q+k-k')
def correlative_attention(q: Tensor, k: Tensor, **_) -> Tensor:
    """SCLIP: softmax(s·q qᵀ) + softmax(s·k kᵀ); rows sum to 2."""
    return _self_softmax(q, q) + _self_softmax(k, k)


def gaussian_window(grid: Tuple[int, int], sigma: float, dtype=torch.float32,
                    device=None) -> Tensor:
    """Ω_ij = exp(−‖p_i − p_j‖² / (2σ²)) over patch-grid coordinates, (h·w, h·w)."""
    ys, xs = torch.meshgrid(torch.arange(grid[0], dtype=dtype, device=device),
                            torch.arange(grid[1], dtype=dtype, device=device), indexing='ij')
    coords = torch.stack([ys.flatten(), xs.flatten()], dim=-1)
    return torch.exp(-torch.cdist(coords, coords).square() / (2 * sigma ** 2))


@register_attention('k-k+neighbourhood')
def neighbourhood_attention(q: Tensor, k: Tensor, grid: Tuple[int, int], num_prefix: int,
                            sigma: float = 5.0, **_) -> Tensor:
    """NACLIP: softmax(s·k kᵀ + Ω), the Gaussian window added between patch tokens only."""
    logits = k @ k.transpose(-1, -2) * k.shape[-1] ** -0.5
    window = gaussian_window(grid, sigma, dtype=logits.dtype, device=logits.device)
    logits[..., num_prefix:, num_prefix:] += window
    return logits.softmax(dim=-1)


@dataclass(frozen=True)
class LastBlock:
    """What a baseline does in CLIP's last block."""
    attention: str
    residual: bool = True
    ffn: bool = True
    attention_kwargs: Tuple[Tuple[str, object], ...] = ()

    def __post_init__(self):
        if self.attention not in ATTENTIONS:
            raise KeyError(f'unknown attention {self.attention!r}; '
                           f'registered: {sorted(ATTENTIONS)}')

    def updated(self, **overrides) -> 'LastBlock':
        """A copy with config overrides (``attention_kwargs`` given as a dict)."""
        if isinstance(overrides.get('attention_kwargs'), dict):
            overrides['attention_kwargs'] = tuple(sorted(overrides['attention_kwargs'].items()))
        return replace(self, **overrides)

    def attention_weights(self, q: Tensor, k: Tensor, grid: Tuple[int, int],
                          num_prefix: int) -> Optional[Tensor]:
        return ATTENTIONS[self.attention](q, k, grid=grid, num_prefix=num_prefix,
                                          **dict(self.attention_kwargs))
