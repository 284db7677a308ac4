"""The contract between a segmentor and an attention plug-in.

A segmentor computes its last attention ``A`` over some tokens and the per-head values ``V`` of
those tokens; a plug-in may replace the attention output ``A·V`` before the segmentor's output
projection. What the plug-in receives:

* ``attn`` — ``A``, (B, H, N, N) per head or (B, 1, N, N) shared by the heads; None for identity
  attention (every token attends to itself: MaskCLIP);
* ``values`` — ``V``, (B, H, N, d);
* ``attended`` — ``A·V`` as the segmentor computed it, (B, H, N, d);
* ``logits_fn`` — per-head attention outputs (B, H, n, d) → cosine similarities (B, n, Q) with the
  segmentor's text queries, through the rest of the segmentor's head (the feedback signal);
* ``grid`` — the (h, w) patch grid of the patch tokens;
* ``num_prefix`` — how many leading tokens of N are not patches (CLIP's class token).

and it returns the new attention output, (B, H, N, d). A plug-in that declares
:attr:`AttentionPlugin.reads_padding` may get ``attn`` with its row padding, (…, N, N') for
N' ≥ N: where the segmentor's attention has rows padded to an aligned length
(:func:`~fsa_seg.models.layout.padded_rows`) that hold zeros beyond N (NaN only in a row that
is NaN throughout), so that the plug-in's products contract over N', which GPU GEMMs run
faster (:mod:`fsa_seg.models.layout`); every other plug-in gets (…, N, N).

Which tokens a plug-in works on is its declaration (:attr:`AttentionPlugin.tokens`):
``'patches'`` — the segmentor drops the prefix tokens before the last attention (``num_prefix``
is then 0); ``'all'`` — the segmentor keeps its prefix tokens (``num_prefix`` says how many).
Segmentors without prefix tokens in their last attention (ProxyCLIP, CASS) pass patches in
either case. A segmentor never looks inside a plug-in.
"""
from typing import Callable, Optional, Tuple

from torch import Tensor, nn

LogitsFn = Callable[[Tensor], Tensor]
PLUGIN_TOKENS = ('patches', 'all')


class AttentionPlugin(nn.Module):
    """Base of every attention plug-in (see the module docstring for the contract)."""

    #: which tokens the plug-in acts on: 'patches' (prefix tokens dropped) or 'all'
    tokens: str = 'patches'
    #: whether the plug-in takes a padded attention with its zero padding (…, N, N')
    reads_padding: bool = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.tokens not in PLUGIN_TOKENS:
            raise TypeError(f'{cls.__name__}.tokens must be one of {PLUGIN_TOKENS}, '
                            f'got {cls.tokens!r}')

    def forward(self, attn: Optional[Tensor], values: Tensor, logits_fn: LogitsFn,
                attended: Optional[Tensor] = None, grid: Optional[Tuple[int, int]] = None,
                num_prefix: int = 0) -> Tensor:
        """The new attention output (B, H, N, d); ``attended`` is ``attn · values``."""
        raise NotImplementedError


def merge_heads(x: Tensor) -> Tensor:
    """(B, H, N, d) → (B, N, H·d); a view where the heads already lie side by side in memory."""
    return x.transpose(1, 2).flatten(2)


def split_heads(x: Tensor, heads: int) -> Tensor:
    """(B, N, H·d) → (B, H, N, d), a view."""
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)


def attend(attn: Tensor, values: Tensor) -> Tensor:
    """``attn · values`` (B, H, N, d) for an attention per head (B, H, N, N) or shared by the
    heads (B, 1, N, N). A shared one is applied to the merged heads in one product, which reads
    the N×N matrix once instead of once per head (one wide GEMM on a GPU, not H narrow ones)."""
    heads = values.shape[1]
    if attn.shape[1] == 1 and heads > 1:
        return split_heads(attn[:, 0] @ merge_heads(values), heads)
    return attn @ values
