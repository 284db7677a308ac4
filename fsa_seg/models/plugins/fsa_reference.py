"""The official FSA formulation, written plainly: an independent reference for tests and benchmarks.

This follows the official code step by step and builds what it builds: the (B, N, N, Q) tensor of
the KL divergences, an explicit uniform attention, and the N×N·N×N attention products of the
ensemble for every head (a shared attention is repeated per head, as the official code does). It
is slow and memory-hungry by design: :class:`~.fsa.FSA` is the implementation to use; this one
exists to check it (tests) and to measure it against (``tools/analysis/benchmark.py``). It is not
registered as a plug-in.
"""
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

LogitsFn = Callable[[Tensor], Tensor]


def official_fsa(attn: Optional[Tensor], values: Tensor, logits_fn: LogitsFn, lamda: float,
                 top_p: float, logit_scales: Sequence[float], eps: float = 1e-10,
                 stable: bool = False) -> Tensor:
    """A_ens · V (B, H, N, d) computed the way the official code does.

    Same contract as :meth:`FSA.forward <fsa_seg.models.plugins.fsa.FSA.forward>`: ``attn`` is
    (B, H, N, N) per head, (B, 1, N, N) shared by the heads, or None for identity attention;
    ``values`` (B, H, N, d); ``logits_fn`` maps per-head outputs (B, H, n, d) to cosine
    similarities (B, n, Q). Everything is computed in the dtype of ``values``. ``stable``: equal
    similarities in the order CUDA's sort gives them (see :func:`official_prune_and_sharpen`).
    """
    attn = _per_head(attn, values)
    new_attn = official_new_attention(attn, values, logits_fn, lamda, top_p, logit_scales, eps,
                                      stable)
    # 4. ensemble of the N×N attention matrices of every head, applied to the values.
    ensemble = (new_attn @ attn + attn @ new_attn + new_attn) / 3               # (B, H, N, N)
    return ensemble @ values


def official_new_attention(attn: Optional[Tensor], values: Tensor, logits_fn: LogitsFn,
                           lamda: float, top_p: float, logit_scales: Sequence[float],
                           eps: float = 1e-10, stable: bool = False) -> Tensor:
    """A_new (B, H, N, N), repeated for every head, as the official code makes it (steps 1-3)."""
    attn = _per_head(attn, values)
    heads = values.shape[1]
    scale_attn, scale_uniform = logit_scales

    # 1. attention isolation: attention branch minus uniform branch, softmax over the queries;
    #    the uniform branch is an explicit uniform attention (softmax of ones), per head.
    attended = attn @ values                                                   # (B, H, N, d)
    logits = scale_attn * logits_fn(attended)                                  # (B, N, Q)
    uniform_attn = torch.ones_like(attn).softmax(dim=-1)
    uniform = scale_uniform * logits_fn(uniform_attn @ values)                 # (B, N, Q)
    q = (logits - uniform).softmax(dim=-1)                                     # (B, N, Q)

    # 2. patch similarity 1 / (1 + KL(q_i || q_j)) through the (B, N, N, Q) tensor.
    q_i = q.unsqueeze(2)                                                       # (B, N, 1, Q)
    q_j = q.unsqueeze(1)                                                       # (B, 1, N, Q)
    kl = (q_i * (torch.log(q_i + eps) - torch.log(q_j + eps))).sum(dim=-1)     # (B, N, N)
    sim = 1.0 / (1.0 + kl.clamp(min=0))

    # 3. confidence-based pruning, sharpening, row softmax per head.
    return official_prune_and_sharpen(sim.unsqueeze(1).repeat(1, heads, 1, 1), lamda, top_p,
                                      stable)


def official_prune_and_sharpen(sim: Tensor, lamda: float, top_p: float,
                               stable: bool = False) -> Tensor:
    """Step 3 on similarity rows: sort, keep while the cumulative softmax mass of the sorted row
    is ≤ top_p (the first always), scatter back, sharpen sim·exp(λ·sim), row softmax.
    ``stable``: equal values in the order of their indices, which is the order CUDA's sort gives
    rows longer than 32 (the official code's default sort on CPU orders them otherwise)."""
    sorted_sim, order = torch.sort(sim, dim=-1, descending=True, stable=stable)
    cumulative = torch.cumsum(torch.softmax(sorted_sim, dim=-1), dim=-1)
    keep_sorted = cumulative <= top_p
    keep_sorted[..., 0] = True
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    sharpened = sim * torch.exp(lamda * sim)
    sharpened = torch.where(keep, sharpened, torch.full_like(sharpened, float('-inf')))
    return torch.softmax(sharpened, dim=-1)


def _per_head(attn: Optional[Tensor], values: Tensor) -> Tensor:
    """The attention as the official code holds it: identity materialised, a shared attention
    repeated for every head."""
    batch, heads, num_tokens, _ = values.shape
    if attn is None:
        attn = torch.eye(num_tokens, dtype=values.dtype, device=values.device)
    return attn.expand(batch, heads, num_tokens, num_tokens).contiguous()
