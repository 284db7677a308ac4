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
                 top_p: float, logit_scales: Sequence[float], eps: float = 1e-10) -> Tensor:
    """A_ens · V (B, H, N, d) computed the way the official code does.

    Same contract as :meth:`FSA.forward <fsa_seg.models.plugins.fsa.FSA.forward>`: ``attn`` is
    (B, H, N, N) per head, (B, 1, N, N) shared by the heads, or None for identity attention;
    ``values`` (B, H, N, d); ``logits_fn`` maps per-head outputs (B, H, n, d) to cosine
    similarities (B, n, Q). Everything is computed in the dtype of ``values``.
    """
    batch, heads, num_tokens, _ = values.shape
    if attn is None:  # identity attention, materialised like any other attention
        attn = torch.eye(num_tokens, dtype=values.dtype, device=values.device)
    # The official code repeats an attention shared by the heads for every head.
    attn = attn.expand(batch, heads, num_tokens, num_tokens).contiguous()
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

    # 3. confidence-based pruning on the sorted rows, sharpening, row softmax per head.
    sorted_sim, order = torch.sort(sim, dim=-1, descending=True)
    cumulative = torch.cumsum(torch.softmax(sorted_sim, dim=-1), dim=-1)
    keep_sorted = cumulative <= top_p
    keep_sorted[..., 0] = True
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    sharpened = sim * torch.exp(lamda * sim)
    sharpened = torch.where(keep, sharpened, torch.full_like(sharpened, float('-inf')))
    new_attn = torch.softmax(sharpened.unsqueeze(1).repeat(1, heads, 1, 1), dim=-1)  # (B, H, N, N)

    # 4. ensemble of the N×N attention matrices of every head, applied to the values.
    ensemble = (new_attn @ attn + attn @ new_attn + new_attn) / 3               # (B, H, N, N)
    return ensemble @ values
