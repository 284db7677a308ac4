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
log q) nor an N×N·N×N product (A_new·A·V is A_new·(A·V)); an attention shared by the heads is used
once and the uniform branch is the mean of the values.
"""
from typing import Callable, Optional, Sequence

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
        new_attended = new_attn @ values
        if attn is None:
            return new_attended
        # (A_new·A + A·A_new + A_new)·V without any N×N·N×N product.
        return (new_attn @ attended + attn @ new_attended + new_attended) / 3

    def feedback_attention(self, attended: Tensor, values: Tensor, logits_fn: LogitsFn) -> Tensor:
        """A_new (B, 1, N, N), shared by the heads, in the dtype of ``values``."""
        scale_attn, scale_uniform = self.logit_scales
        logits = scale_attn * logits_fn(attended)                                  # (B, N, Q)
        uniform = scale_uniform * logits_fn(values.mean(dim=2, keepdim=True))      # (B, 1, Q)
        # fp16's smallest normal number is above the 1e-10 of the logarithm: work in ≥ fp32.
        work_dtype = torch.promote_types(values.dtype, torch.float32)
        sim = self.patch_similarity((logits - uniform).to(work_dtype))
        return self.prune_and_sharpen(sim).to(values.dtype).unsqueeze(1)

    def patch_similarity(self, isolated_logits: Tensor) -> Tensor:
        """1 / (1 + KL(q_i ‖ q_j)) for q = softmax over queries, as one matrix product."""
        q = isolated_logits.softmax(dim=-1)
        log_q = torch.log(q + self.eps)
        self_term = (q * log_q).sum(dim=-1, keepdim=True)                          # (B, N, 1)
        kl = (self_term - q @ log_q.transpose(-1, -2)).clamp_min(0)                # (B, N, N)
        return 1.0 / (1.0 + kl)

    def prune_and_sharpen(self, sim: Tensor) -> Tensor:
        """Keep each row's most similar entries within ``top_p`` softmax mass, sharpen, softmax."""
        sorted_sim, order = sim.sort(dim=-1, descending=True)
        mass = sorted_sim.softmax(dim=-1).cumsum(dim=-1)
        keep_sorted = mass <= self.top_p
        keep_sorted[..., 0] = True
        keep = torch.empty_like(keep_sorted).scatter_(-1, order, keep_sorted)
        sharpened = sim * torch.exp(self.lamda * sim)
        return sharpened.masked_fill(~keep, float('-inf')).softmax(dim=-1)
