"""FSA: feedback-driven self-adaptive attention (Chi et al., ICCV 2025, arXiv 2508.20265).

The plug-in turns the output-level patch predictions of a training-free CLIP segmentor back into an
attention over patches and ensembles it with the baseline's own attention:

1. attention isolation: P = s_a·cos(head(A·V), T) (attention branch) and P_u = s_u·cos(head(mean V), T)
   (uniform branch); q = softmax_Q(P − P_u);
2. patch similarity 1 / (1 + KL(q_i ‖ q_j));
3. confidence-based pruning: per row, the most similar patches whose softmax mass stays ≤ top_p
   (the first always kept); sharpening sim·exp(λ·sim); row softmax → A_new;
4. ensemble A_ens = (A_new·A + A·A_new + A_new) / 3, returned as A_ens·V.

Unlike the official code this never builds an N×N×Q tensor (the KL is a matrix product of q with
log q) nor an N×N·N×N product: A_ens·V = A_new·(A·V + V) + A·(A_new·V), three N×N·N×d products
(two when the caller gives A·V), an attention shared by the heads applied to all heads at once;
the uniform branch is the mean of the values. The N×N work reuses its buffers (on CPU a fresh
N×N buffer costs more than the arithmetic on it), and on CPU the rows are ordered by numpy's
vectorised argsort, several times faster than ``torch.sort``; exactly equal similarities in a row
(the official code leaves their order to its sort, which differs between devices) may be ordered
differently.
"""
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from mmseg.registry import MODELS
from torch import Tensor, nn

LogitsFn = Callable[[Tensor], Tensor]


@MODELS.register_module()
class FSA(nn.Module):
    """Feedback self-adaptive attention plug-in.

    Args:
        lamda: sharpening strength λ of sim·exp(λ·sim) (3.0 for ViT-B/16 and L/14, 2.3 for H/14,
            4.5 with the MAE proxy — set by the backbone's or proxy's base config).
        top_p: softmax mass kept per row by the confidence-based pruning.
        logit_scales: scales of the attention branch and the uniform branch.
        eps: added inside the logarithms of the KL, as the official code does.
    """

    def __init__(self, lamda: float = 3.0, top_p: float = 0.45,
                 logit_scales: Sequence[float] = (20.0, 35.0), eps: float = 1e-10):
        super().__init__()
        if len(logit_scales) != 2:
            raise ValueError(f'logit_scales needs two values (attention, uniform), got {logit_scales}')
        self.lamda = float(lamda)
        self.top_p = float(top_p)
        self.logit_scales = tuple(float(s) for s in logit_scales)
        self.eps = eps

    def extra_repr(self) -> str:
        return f'lamda={self.lamda}, top_p={self.top_p}, logit_scales={self.logit_scales}'

    def forward(self, attn: Optional[Tensor], values: Tensor, logits_fn: LogitsFn,
                attended: Optional[Tensor] = None) -> Tensor:
        """Return A_ens · values, (B, H, N, d), before out_proj.

        Args:
            attn: the baseline's attention, (B, H, N, N) per head or (B, 1, N, N) shared by the
                heads; None for identity attention (the ensemble then reduces to A_new).
            values: per-head values of the patch tokens, (B, H, N, d).
            logits_fn: per-head attention outputs (B, H, n, d) → cosine similarities (B, n, Q).
            attended: attn · values if the caller already computed it (saves one product).
        """
        if attended is None:
            attended = values if attn is None else attn @ values
        new_attn = self.feedback_attention(attended, values, logits_fn)  # (B, 1, N, N)
        heads, head_dim = values.shape[1], values.shape[-1]
        if attn is None:
            return _split_heads(new_attn[:, 0] @ _merge_heads(values), heads)
        # (A_new·A + A·A_new + A_new)·V = A_new·(A·V + V) + A·(A_new·V), without any N×N·N×N
        # product; A_new·V and A_new·(A·V + V) as one product over both, all heads at once.
        batch, _, num_tokens, _ = values.shape
        both = values.new_empty(batch, num_tokens, 2, heads, head_dim)
        both[:, :, 0] = values.transpose(1, 2)
        torch.add(attended.transpose(1, 2), values.transpose(1, 2), out=both[:, :, 1])
        both = new_attn[:, 0] @ both.view(batch, num_tokens, 2 * heads * head_dim)
        both = both.view(batch, num_tokens, 2, heads, head_dim)
        new_attended = both[:, :, 0].transpose(1, 2)                         # (B, H, N, d)
        mixed = both[:, :, 1].transpose(1, 2)                                # A_new·(A·V + V)
        if attn.shape[1] == 1:
            out = torch.baddbmm(_merge_heads(mixed), attn[:, 0], _merge_heads(new_attended))
            return _split_heads(out.div_(3), heads)
        return (attn @ new_attended).add_(mixed).div_(3)

    def feedback_attention(self, attended: Tensor, values: Tensor, logits_fn: LogitsFn) -> Tensor:
        """A_new (B, 1, N, N), shared by the heads, in the dtype of ``values``."""
        scale_attn, scale_uniform = self.logit_scales
        logits = scale_attn * logits_fn(attended)                                  # (B, N, Q)
        uniform = scale_uniform * logits_fn(values.mean(dim=2, keepdim=True))      # (B, 1, Q)
        # fp16's smallest normal number is above the 1e-10 of the logarithm: work in ≥ fp32.
        work_dtype = torch.promote_types(values.dtype, torch.float32)
        sim = self.patch_similarity((logits - uniform).to(work_dtype))
        return self._prune_and_sharpen(sim, reuse_input=True).to(values.dtype).unsqueeze(1)

    def patch_similarity(self, isolated_logits: Tensor) -> Tensor:
        """1 / (1 + KL(q_i ‖ q_j)) for q = softmax over queries, as one matrix product."""
        q = isolated_logits.softmax(dim=-1)
        log_q = torch.log(q + self.eps)
        self_term = (q * log_q).sum(dim=-1, keepdim=True)                          # (B, N, 1)
        kl = torch.baddbmm(self_term, q, log_q.transpose(-1, -2), alpha=-1)        # (B, N, N)
        return kl.clamp_min_(0).add_(1).reciprocal_()

    def prune_and_sharpen(self, sim: Tensor) -> Tensor:
        """Keep each row's most similar entries within ``top_p`` softmax mass, sharpen, softmax."""
        return self._prune_and_sharpen(sim, reuse_input=False)

    def _prune_and_sharpen(self, sim: Tensor, reuse_input: bool) -> Tensor:
        """:meth:`prune_and_sharpen`; ``reuse_input`` lets it overwrite ``sim``."""
        order = _argsort_descending(sim, may_modify=reuse_input)
        sorted_sim = sim.gather(-1, order)
        mass = sorted_sim.softmax(dim=-1).cumsum_(dim=-1)
        drop_sorted = mass <= self.top_p
        drop_sorted[..., 0] = True
        drop_sorted.logical_not_()
        drop = torch.empty_like(drop_sorted).scatter_(-1, order, drop_sorted)
        del order, drop_sorted
        sharpened = torch.mul(sim, self.lamda, out=sorted_sim).exp_()              # exp(λ·sim)
        sharpened = sim.mul_(sharpened) if reuse_input else sharpened.mul_(sim)    # sim·exp(λ·sim)
        sharpened.masked_fill_(drop, float('-inf'))
        return torch.softmax(sharpened, dim=-1, out=mass)


def _merge_heads(x: Tensor) -> Tensor:
    """(B, H, N, d) → (B, N, H·d)."""
    return x.transpose(1, 2).flatten(2)


def _split_heads(x: Tensor, heads: int) -> Tensor:
    """(B, N, H·d) → (B, H, N, d), a view."""
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)


def _argsort_descending(x: Tensor, may_modify: bool = False) -> Tensor:
    """Indices that sort each row of ``x`` in descending order. On CPU numpy's vectorised sort
    of −x (with ``may_modify``, x is negated in place and restored exactly, saving a copy)."""
    if x.device.type != 'cpu' or x.dtype not in (torch.float32, torch.float64) \
            or x.requires_grad or not x.is_contiguous():
        return x.argsort(dim=-1, descending=True)
    if not may_modify:
        return torch.from_numpy(np.argsort(np.negative(x.numpy()), axis=-1))
    array = x.neg_().numpy()
    try:
        return torch.from_numpy(np.argsort(array, axis=-1))
    finally:
        x.neg_()
