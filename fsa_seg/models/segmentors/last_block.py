"""Baselines as small descriptions of CLIP's last block.

Training-free CLIP segmentors differ only in the last block of the visual trunk: which attention
it uses, and whether its residual connection and FFN are kept. An attention is a function
``(q, k, grid, num_prefix) -> attention weights (B, H, T, T)`` or None for identity attention
(the value path alone); :func:`register_attention` adds one under a name. Where the weights are
not needed (no plug-in), an attention may also have a fused form ``(q, k, v, grid, num_prefix)
-> A·V`` (:func:`register_fused_attention`), through ``scaled_dot_product_attention``: the T×T
weights are then never materialised.
"""
import math
from dataclasses import dataclass, replace
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

AttentionFn = Callable[..., Optional[Tensor]]
ATTENTIONS: Dict[str, AttentionFn] = {}
FUSED_ATTENTIONS: Dict[str, Callable[..., Tensor]] = {}


def register_attention(name: str):
    def register(fn: AttentionFn) -> AttentionFn:
        if name in ATTENTIONS:
            raise KeyError(f'attention {name!r} is already registered')
        ATTENTIONS[name] = fn
        return fn
    return register


def register_fused_attention(name: str):
    """Register the fused form ``(q, k, v, grid, num_prefix, **kwargs) -> A·V`` of a registered
    attention (the same result without the weights)."""
    def register(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        if name not in ATTENTIONS:
            raise KeyError(f'register the attention {name!r} before its fused form')
        FUSED_ATTENTIONS[name] = fn
        return fn
    return register


def _attend(x: Tensor, y: Tensor, v: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """softmax(s·x yᵀ + bias)·v without the weights, s = d^-½ as in :func:`_self_softmax`."""
    return F.scaled_dot_product_attention(x, y, v, attn_mask=bias)


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


@register_fused_attention('q-k')
def fused_qk_attention(q: Tensor, k: Tensor, v: Tensor, **_) -> Tensor:
    return _attend(q, k, v)


@register_fused_attention('identity')
def fused_identity_attention(q: Tensor, k: Tensor, v: Tensor, **_) -> Tensor:
    return v


@register_fused_attention('q-q')
def fused_qq_attention(q: Tensor, k: Tensor, v: Tensor, **_) -> Tensor:
    return _attend(q, q, v)


@register_fused_attention('q-q+k-k')
def fused_correlative_attention(q: Tensor, k: Tensor, v: Tensor, **_) -> Tensor:
    return _attend(q, q, v) + _attend(k, k, v)


def official_neighbourhood(grid: Tuple[int, int], std: float) -> Tensor:
    """NACLIP's Gaussian neighbourhood Ω (N, N), float32, as NACLIP and CASS compute it: a
    (2h−1)×(2w−1) window from float32 ``linspace`` coordinates, Ω[(i,j),(y,x)] its entry at
    offset (i−y, j−x). (The official code convolves one-hot maps with the window, which picks
    exactly these entries; indexing avoids the N×N convolution.)"""
    height, width = grid
    constant = 1 / (std * math.sqrt(2))
    axes = []
    for size in (2 * height - 1, 2 * width - 1):
        start = -(size - 1) / 2.0
        axes.append(torch.linspace(start * constant, (start + (size - 1)) * constant,
                                   steps=size, dtype=torch.float32))
    window = torch.exp(-(torch.stack(torch.meshgrid(*axes, indexing='ij')) ** 2).sum(0))
    rows, cols = torch.arange(height), torch.arange(width)
    dy = rows[:, None] - rows[None, :] + height - 1                     # [i, y]
    dx = cols[:, None] - cols[None, :] + width - 1                      # [j, x]
    return window[dy[:, None, :, None], dx[None, :, None, :]].reshape(height * width, -1)


@register_attention('k-k+neighbourhood')
def neighbourhood_attention(q: Tensor, k: Tensor, grid: Tuple[int, int], num_prefix: int,
                            sigma: float = 5.0, **_) -> Tensor:
    """NACLIP: softmax(s·k kᵀ + Ω), the Gaussian window added between patch tokens only."""
    logits = k @ k.transpose(-1, -2) * k.shape[-1] ** -0.5
    return (logits + _neighbourhood_bias(grid, num_prefix, sigma, logits)).softmax(dim=-1)


@register_fused_attention('k-k+neighbourhood')
def fused_neighbourhood_attention(q: Tensor, k: Tensor, v: Tensor, grid: Tuple[int, int],
                                  num_prefix: int, sigma: float = 5.0, **_) -> Tensor:
    return _attend(k, k, v, _neighbourhood_bias(grid, num_prefix, sigma, k))


def _neighbourhood_bias(grid: Tuple[int, int], num_prefix: int, sigma: float,
                        like: Tensor) -> Tensor:
    """(T, T): the Gaussian window between patch tokens (float32 as NACLIP makes it, then in
    the dtype of ``like``), 0 in the prefix rows and columns."""
    window = official_neighbourhood(grid, sigma).to(like)
    return F.pad(window, (num_prefix, 0, num_prefix, 0))


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

    def attend(self, q: Tensor, k: Tensor, v: Tensor, grid: Tuple[int, int],
               num_prefix: int) -> Tensor:
        """A·V, through the fused form where the attention has one (no T×T weights)."""
        kwargs = dict(grid=grid, num_prefix=num_prefix, **dict(self.attention_kwargs))
        if self.attention in FUSED_ATTENTIONS:
            return FUSED_ATTENTIONS[self.attention](q, k, v, **kwargs)
        attn = ATTENTIONS[self.attention](q, k, **kwargs)
        return v if attn is None else attn @ v
