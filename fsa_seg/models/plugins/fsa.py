"""FSA: feedback-driven self-adaptive attention (Chi et al., ICCV 2025, arXiv 2508.20265).

The plug-in turns the output-level patch predictions of a training-free CLIP segmentor back into an
attention over patches and ensembles it with the baseline's own attention:

1. attention isolation: P = s_a·cos(head(A·V), T) (attention branch) and
   P_u = s_u·cos(head(mean V), T) (uniform branch); q = softmax_Q(P − P_u);
2. patch similarity 1 / (1 + KL(q_i ‖ q_j));
3. confidence-based pruning: per row, the most similar patches whose softmax mass stays ≤ top_p
   (the first always kept); sharpening sim·exp(λ·sim); row softmax → A_new;
4. ensemble A_ens = (A_new·A + A·A_new + A_new) / 3, returned as A_ens·V.

Unlike the official code this never builds an N×N×Q tensor (the KL is a matrix product of q with
log q) nor an N×N·N×N product: A_ens·V = A_new·(A·V + V) + A·(A_new·V), three N×N·N×d products
(two when the caller gives A·V), an attention shared by the heads applied to all heads at once;
the uniform branch is the mean of the values. Without autograd, A_new is made and applied a block
of rows at a time (each step works on rows independently), so that its N×N buffers shrink to
block×N ones and it is never held whole. A CPU and a CUDA path do that, by the device of the inputs:

* CPU: small blocks (2^19 entries) that stay in cache; the pruning needs only each row's sorted
  values (numpy's vectorised sort, several times faster than ``torch.sort``): the kept entries are
  the row's k largest, those at or above the k-th value. Only rows where exactly equal similarities
  straddle the cut are found (a host-side test, free on CPU) and sorted with ``torch.sort``.
* any other device (CUDA): no host synchronisation and no data-dependent Python branch; large
  blocks (2^23 entries, the whole matrix of a batch of two up to N = 2048), sizes from the shapes
  alone. The matrix products run in the dtype of the values (tensor cores in fp16/bf16), the KL,
  similarities and pruning in at least fp32 (in an fp16/bf16 model, the fused path's q·log qᵀ
  from fp16 halves on tensor cores, within 2× of an fp32 product's error). The pruning, one of:

  - 'fused' (CUDA with Triton, N ≤ 4096; the default there): one Triton kernel writes the
    operand [V, A·V + V] and the attention branch's tokens A·V (reading both once), one makes
    the KL's terms from the branches' similarities, and per block one more turns the rows of
    q_i·log q_j (one matrix product) into rows of A_new (:mod:`.fsa_kernel`): no sort, every
    row read and written once; the official selection, up to roundings (the summation order
    of the softmax and cumulative mass, the GPU's fast exp2 and reciprocal in fp32);
  - 'device' (``fused_pruning=False``, or no Triton): every row sorted with ``torch.sort``
    (indices included, which the GPU sort makes anyway) and its kept entries scattered back, as
    the official code does: its selection bit for bit on the same device, in a dozen kernels.

Ties: where exactly equal similarities straddle the top-p cut (a one-query vocabulary, identical
padded patches), which of them are kept is decided by the order of ``torch.sort(descending=True)``
on the row, as in the official code; the CPU and the torch.sort paths call that very sort on the
device of the inputs, so they keep what the official code keeps there. On CUDA that sort is
stable for rows longer than 32 (merge and radix sorts), i.e. the equal entries of lowest index
are kept, which is what the fused kernel keeps; on CPU its order among equal values is the
(deterministic, unspecified) order of ``std::sort``.
"""
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from mmseg.registry import MODELS
from torch import Tensor

from ..layout import with_padding, zero_padded
from .base import AttentionPlugin, LogitsFn, attend, merge_heads, split_heads
from .fsa_kernel import (
    MAX_FUSED_QUERIES,
    PruningLaunch,
    fused_kl_terms,
    fused_operand_and_tokens,
    fused_prune_and_sharpen,
    fused_pruning_available,
    kl_dot_products,
)

BLOCK_ELEMENTS = 2 ** 19  # CPU path: rows of A_new made at once, about this many entries (2 MB)
DEVICE_BLOCK_ELEMENTS = 2 ** 23  # device path: at most this many entries at once (32 MB in fp32)
PATHS = ('cpu', 'device', 'fused')


@MODELS.register_module()
class FSA(AttentionPlugin):
    """Feedback self-adaptive attention plug-in; acts on patch tokens only (its attention is an
    attention over patches).

    Args:
        lamda: sharpening strength λ of sim·exp(λ·sim) (3.0 for ViT-B/16 and L/14, 2.3 for H/14,
            4.5 with the MAE proxy — set by the backbone's or proxy's base config).
        top_p: softmax mass kept per row by the confidence-based pruning.
        logit_scales: scales of the attention branch and the uniform branch.
        eps: added inside the logarithms of the KL, as the official code does.
        fused_pruning: on CUDA, prune and sharpen in one Triton kernel when Triton is there and
            N ≤ 4096 (see the module's docstring); False keeps ``torch.sort``'s chain, which
            reproduces the official code's selection bit for bit on the same device.
        pruning_launch: how the fused path launches its pruning kernel, for tuning on a GPU
            (``tools/analysis/benchmark.py kernel`` times launches): ``dict(rows=, warps=,
            parts=, snap=)``, rows and warps a program, the parts the top-p cut's interval is
            cut into a step, the halvings before the interval first shrinks to the keys it
            holds (see :class:`.fsa_kernel.PruningLaunch`); None: the defaults.
    """

    tokens = 'patches'
    reads_padding = True  # the ensemble product contracts over a padded attention's length

    def __init__(self, lamda: float = 3.0, top_p: float = 0.45,
                 logit_scales: Sequence[float] = (20.0, 35.0), eps: float = 1e-10,
                 fused_pruning: bool = True, pruning_launch: Optional[dict] = None):
        super().__init__()
        if len(logit_scales) != 2:
            raise ValueError('logit_scales needs two values (attention, uniform), '
                             f'got {logit_scales}')
        self.lamda = float(lamda)
        self.top_p = float(top_p)
        self.logit_scales = tuple(float(s) for s in logit_scales)
        self.eps = eps
        self.fused_pruning = bool(fused_pruning)
        self.pruning_launch = PruningLaunch.checked(**(pruning_launch or {}))

    def extra_repr(self) -> str:
        launch = ('' if self.pruning_launch == PruningLaunch()
                  else f', pruning_launch={self.pruning_launch._asdict()}')
        return (f'lamda={self.lamda}, top_p={self.top_p}, logit_scales={self.logit_scales}, '
                f'eps={self.eps}, fused_pruning={self.fused_pruning}{launch}')

    def forward(self, attn: Optional[Tensor], values: Tensor, logits_fn: LogitsFn,
                attended: Optional[Tensor] = None, grid: Optional[Tuple[int, int]] = None,
                num_prefix: int = 0) -> Tensor:
        """Return A_ens · values, (B, H, N, d), before out_proj.

        Args:
            attn: the baseline's attention, (B, H, N, N) per head or (B, 1, N, N) shared by the
                heads, or (…, N, N') with its row padding, zeros beyond N (``reads_padding``);
                None for identity attention (the ensemble then reduces to A_new).
            values: per-head values of the patch tokens, (B, H, N, d).
            logits_fn: per-head attention outputs (B, H, n, d) → cosine similarities (B, n, Q).
            attended: attn · values if the caller already computed it (saves one product).
            grid, num_prefix: the contract's patch grid and prefix count (unused: FSA works on
                patches only, so ``num_prefix`` is 0).
        """
        return self._forward(attn, values, logits_fn, attended, path=self._path_for(values, -2))

    def _forward(self, attn: Optional[Tensor], values: Tensor, logits_fn: LogitsFn,
                 attended: Optional[Tensor] = None, path: str = 'cpu') -> Tensor:
        """:meth:`forward` on the given path, 'cpu', 'device' or 'fused' (see the module's
        docstring); each runs on CPU too (the fused one in Triton's interpreter), which lets the
        tests check the CUDA paths on CPU."""
        if path not in PATHS:
            raise ValueError(f'path must be one of {PATHS}, got {path!r}')
        heads, num_tokens, head_dim = values.shape[1:]
        if attended is None:
            attended = values if attn is None else attend(attn[..., :num_tokens], values)
        if attn is None:
            return split_heads(self._feedback_product(attended, values, logits_fn,
                                                      merge_heads(values), path), heads)
        # (A_new·A + A·A_new + A_new)·V = A_new·(A·V + V) + A·(A_new·V), without any N×N·N×N
        # product; A_new·V and A_new·(A·V + V) as one product over both, all heads at once.
        # With A's zero padding (N' ≥ N columns, ``reads_padding``) A_new·V gets N' rows, zeros
        # beyond N, so that A·(A_new·V) contracts over N' as well.
        operand, tokens = self._operand_and_tokens(attended, values, path)
        both = self._feedback_product(attended, values, logits_fn, operand, path,
                                      out_rows=attn.shape[-1], tokens=tokens)
        both = both.unflatten(-1, (2, heads, head_dim))
        new_attended = both[:, :, 0].transpose(1, 2)                         # (B, H, N', d)
        mixed = both[:, :num_tokens, 1].transpose(1, 2)                      # A_new·(A·V + V)
        if attn.shape[1] == 1:  # the division by 3 in the product's epilogue
            out = torch.baddbmm(merge_heads(mixed), attn[:, 0], merge_heads(new_attended),
                                beta=1 / 3, alpha=1 / 3)
            return split_heads(out, heads)
        return (attn @ new_attended).add_(mixed).div_(3)

    @staticmethod
    def _operand_and_tokens(attended: Tensor, values: Tensor,
                            path: str) -> Tuple[Tensor, Optional[Tensor]]:
        """[V, A·V + V] of all heads (B, N', 2·H·d), and on the fused path the attention
        branch's tokens of :meth:`_branch_similarities` too (else None), both from one kernel
        that reads V and A·V once. There N' is the row stride of A_new, whose padding the
        pruning kernel fills with zeros, the rows beyond N zeros too: the product over N'
        entries is the one over N, and on a GPU its aligned length takes faster kernels."""
        if path != 'fused' or _records_grad(values) or _records_grad(attended):
            return torch.stack([values.transpose(1, 2), (attended + values).transpose(1, 2)],
                               dim=2).flatten(2), None
        return fused_operand_and_tokens(values, attended)

    def feedback_attention(self, attended: Tensor, values: Tensor, logits_fn: LogitsFn) -> Tensor:
        """A_new (B, 1, N, N), shared by the heads, in the dtype of ``values``."""
        sim = self.patch_similarity(self._isolated_logits(attended, values, logits_fn))
        new_attn = self._prune_and_sharpen(sim, True, self._path_for(sim, -1))
        return new_attn.to(values.dtype).unsqueeze(1)

    def _isolated_logits(self, attended: Tensor, values: Tensor, logits_fn: LogitsFn) -> Tensor:
        """P − P_u (B, N, Q), in at least fp32."""
        return self._isolation(self._branch_similarities(attended, values, logits_fn))

    def _isolation(self, both: Tensor) -> Tensor:
        """s_a·P − s_u·P_u from the branches' similarities (B, N + 1, Q), in at least fp32."""
        # in ≥ fp32 from here (as the fused kernel): fp16 would round the scaled similarities
        # by up to 0.03, and its smallest normal number is above the 1e-10 of the logarithm
        both = both.to(torch.promote_types(both.dtype, torch.float32))
        scale_attn, scale_uniform = self.logit_scales
        return scale_attn * both[:, :-1] - scale_uniform * both[:, -1:]

    @staticmethod
    def _branch_similarities(attended: Tensor, values: Tensor, logits_fn: LogitsFn,
                             tokens: Optional[Tensor] = None) -> Tensor:
        """Cosine similarities (B, N + 1, Q) of the attention branch's tokens and, last, of the
        uniform branch's mean token: both in one call of ``logits_fn``, which on a GPU, where a
        call of a few small kernels costs more host time than device time, halves the calls.
        ``tokens``: the attention branch's tokens already in place, as :meth:`_operand_and_tokens`
        lays them out."""
        batch, heads, num_tokens, head_dim = values.shape
        # tokens laid out with the heads side by side, so that ``logits_fn``'s merge of the heads
        # (before out_proj) is a view, not a copy
        if tokens is None:
            tokens = values.new_empty((batch, num_tokens + 1, heads * head_dim))
            tokens[:, :num_tokens] = merge_heads(attended)
        tokens = split_heads(tokens, heads)                              # (B, H, N + 1, d)
        if _records_grad(values) or _records_grad(tokens):  # autograd takes no out= argument
            tokens[:, :, num_tokens:] = values.mean(dim=2, keepdim=True)
        elif values.stride(1) == head_dim and values.stride(3) == 1:
            # values laid out token by token (ProxyCLIP's): their mean as (1/N)·1ᵀ·V, one GEMV
            # over the merged heads, where a reduction over the tokens runs on few SMs (on an
            # H100, 1764 tokens of 768 channels: 12 µs)
            ones = values.new_ones((batch, 1, num_tokens))
            merge_heads(tokens)[:, num_tokens:].baddbmm_(ones, merge_heads(values), beta=0,
                                                         alpha=1 / num_tokens)
        else:
            torch.mean(values, dim=2, keepdim=True, out=tokens[:, :, num_tokens:])
        return logits_fn(tokens)

    def _feedback_product(self, attended: Tensor, values: Tensor, logits_fn: LogitsFn,
                          operand: Tensor, path: str, out_rows: Optional[int] = None,
                          tokens: Optional[Tensor] = None) -> Tensor:
        """A_new[:, 0] · operand (B, out_rows, C), zeros beyond row N (N rows by default), for
        operand (B, N', C) in the dtype of ``values``, N' > N on the fused path only, and the
        branch tokens made with it (:meth:`_operand_and_tokens`), if they were.

        Without autograd, A_new is made and applied a block of rows at a time (every step of it
        works on rows independently): its N×N buffers become block×N ones and A_new is never held
        whole. The blocks depend on the shapes only."""
        num_tokens = values.shape[2]
        out_rows = out_rows or num_tokens
        both = self._branch_similarities(attended, values, logits_fn, tokens)
        differentiable = _records_grad(both) or _records_grad(operand)
        if path == 'fused' and both.shape[-1] <= MAX_FUSED_QUERIES and not differentiable:
            return self._fused_feedback_product(both, operand, values.dtype, out_rows)
        isolated = self._isolation(both)
        if differentiable:
            sim = self.patch_similarity(isolated)
            new_attn = self._prune_and_sharpen(sim, True, path).to(values.dtype)
            product = new_attn @ operand[:, :num_tokens]
            return F.pad(product, (0, 0, 0, out_rows - num_tokens))
        q, log_q, self_term = self._kl_terms(isolated)
        log_q_t = log_q.transpose(-1, -2)

        def new_rows(rows: slice) -> Tensor:
            kl = torch.baddbmm(self_term[:, rows], q[:, rows], log_q_t, alpha=-1)  # (B, b, N)
            if path == 'fused':  # the similarity is made in the kernel
                return fused_prune_and_sharpen(kl, self.lamda, self.top_p, 'kl', values.dtype,
                                               launch=self.pruning_launch)
            sim = kl.clamp_min_(0).add_(1).reciprocal_()
            return self._prune_and_sharpen(sim, True, path).to(values.dtype)
        return _blockwise_product(new_rows, operand, num_tokens, path, out_rows)

    def _fused_feedback_product(self, both: Tensor, operand: Tensor, dtype: torch.dtype,
                                out_rows: int) -> Tensor:
        """:meth:`_feedback_product` on the fused path from the branches' similarities: the KL
        terms in one kernel, then per block of rows the dot products q_i·log q_j, which the
        pruning kernel subtracts from the self terms."""
        q, log_q, self_term = fused_kl_terms(both, self.logit_scales, self.eps,
                                             kl_terms_in_halves(dtype))
        num_tokens = self_term.shape[1]
        log_q_t = log_q.transpose(-1, -2)      # N' ≥ N columns, zeros beyond N: aligned rows

        def new_rows(rows: slice) -> Tensor:
            dots = kl_dot_products(q[:, rows], log_q_t)[..., :num_tokens]          # (B, b, N)
            return fused_prune_and_sharpen(dots, self.lamda, self.top_p, 'dots', dtype,
                                           self_terms=self_term[:, rows],
                                           launch=self.pruning_launch)
        return _blockwise_product(new_rows, operand, num_tokens, 'fused', out_rows)

    def _kl_terms(self, isolated_logits: Tensor):
        """q, log(q + eps) and Σ_c q·log(q + eps) per token: KL_ij = self_i − q_i·log q_jᵀ."""
        q = isolated_logits.softmax(dim=-1)
        log_q = torch.log(q + self.eps)
        return q, log_q, (q * log_q).sum(dim=-1, keepdim=True)                    # (B, N, 1)

    def patch_similarity(self, isolated_logits: Tensor) -> Tensor:
        """1 / (1 + KL(q_i ‖ q_j)) for q = softmax over queries, as one matrix product."""
        q, log_q, self_term = self._kl_terms(isolated_logits)
        kl = torch.baddbmm(self_term, q, log_q.transpose(-1, -2), alpha=-1)        # (B, N, N)
        if _records_grad(kl):
            return 1.0 / (1.0 + kl.clamp_min(0))
        return kl.clamp_min_(0).add_(1).reciprocal_()                              # in place

    def prune_and_sharpen(self, sim: Tensor) -> Tensor:
        """Keep each row's most similar entries within ``top_p`` softmax mass, sharpen, softmax."""
        return self._prune_and_sharpen(sim, False, self._path_for(sim, -1))

    def _prune_and_sharpen(self, sim: Tensor, reuse_input: bool, path: str) -> Tensor:
        """:meth:`prune_and_sharpen` on ``path``; ``reuse_input`` lets it overwrite ``sim``."""
        if _records_grad(sim):
            sorted_sim, order = sim.sort(dim=-1, descending=True)
            mass = sorted_sim.softmax(dim=-1).cumsum(dim=-1)
            keep_sorted = mass <= self.top_p
            keep_sorted[..., 0] = True
            keep = torch.empty_like(keep_sorted).scatter_(-1, order, keep_sorted)
            sharpened = sim * torch.exp(self.lamda * sim)
            return sharpened.masked_fill(~keep, float('-inf')).softmax(dim=-1)
        if path == 'fused':
            return fused_prune_and_sharpen(sim, self.lamda, self.top_p, 'similarity', sim.dtype,
                                           launch=self.pruning_launch)
        if path == 'device':
            return self._prune_in_sort_order(sim, reuse_input)
        return self._prune_by_threshold(sim, reuse_input)

    def _prune_in_sort_order(self, sim: Tensor, reuse_input: bool) -> Tensor:
        """The device path's pruning, without autograd: the official selection (sort, cumulative
        mass, kept sorted positions scattered back), with no host synchronisation."""
        sorted_sim, order = sim.sort(dim=-1, descending=True)
        mass = sorted_sim.softmax(dim=-1).cumsum_(dim=-1)
        drop_sorted = mass > self.top_p
        drop_sorted[..., 0] = False                                  # the first is always kept
        drop = torch.empty_like(drop_sorted).scatter_(-1, order, drop_sorted)
        del order, drop_sorted
        return self._sharpen_and_normalise(sim, drop, sorted_sim, mass, reuse_input)

    def _prune_by_threshold(self, sim: Tensor, reuse_input: bool) -> Tensor:
        """The CPU path's pruning, without autograd. The cumulative mass is non-decreasing, so
        the kept sorted positions are a prefix of length k ≥ 1: the k largest entries of the row,
        found from the sorted values alone; rows where equal values straddle the cut follow the
        order of ``torch.sort`` as the official code does."""
        sorted_sim = _sorted_descending(sim)
        mass = sorted_sim.softmax(dim=-1).cumsum_(dim=-1)
        # k = #{mass ≤ top_p}: a binary search per row in the non-decreasing mass
        limit = mass.new_full((*mass.shape[:-1], 1), self.top_p)
        kept = torch.searchsorted(mass, limit, right=True).clamp_(min=1)           # (B, N, 1)
        threshold = sorted_sim.gather(-1, kept - 1)                                # k-th value
        size = sim.shape[-1]
        following = sorted_sim.gather(-1, kept.clamp(max=size - 1))
        straddling = ((kept < size) & (following == threshold)).squeeze(-1)
        # 1.0 where dropped, over the mass (no longer needed): a comparison into floats is
        # vectorised on CPU, a boolean mask is filled entry by entry
        drop = torch.lt(sim, threshold, out=mass)
        if straddling.any():  # equal values across the cut: the sort's order decides, as there
            rows = straddling.nonzero(as_tuple=True)
            order = sim[rows].sort(dim=-1, descending=True).indices
            drop_sorted = (torch.arange(size, device=sim.device) >= kept[rows]).to(drop.dtype)
            drop[rows] = torch.empty_like(drop_sorted).scatter_(-1, order, drop_sorted)
        return self._sharpen_and_normalise(sim, drop, sorted_sim, mass, reuse_input)

    def path_on(self, device: torch.device, num_tokens: int) -> str:
        """The path FSA takes for ``num_tokens`` tokens on ``device`` (see the module's docstring):
        'cpu', 'fused' or 'device'."""
        if device.type == 'cpu':
            return 'cpu'
        fused = self.fused_pruning and fused_pruning_available(device, num_tokens)
        return 'fused' if fused else 'device'

    def _path_for(self, x: Tensor, token_dim: int) -> str:
        """The path for tensors like ``x``, whose dimension ``token_dim`` runs over the tokens."""
        return self.path_on(x.device, x.shape[token_dim])

    def _sharpen_and_normalise(self, sim: Tensor, drop: Tensor, spare: Tensor, out: Tensor,
                               reuse_input: bool) -> Tensor:
        """softmax(sim·exp(λ·sim)) over the entries not dropped, ``drop`` a boolean mask or 1.0
        where dropped (0.0 elsewhere; it may be ``out``); ``spare`` (then ``sim`` if
        ``reuse_input``) is overwritten, the result is written to ``out``."""
        sharpened = torch.mul(sim, self.lamda, out=spare).exp_()                   # exp(λ·sim)
        sharpened = sim.mul_(sharpened) if reuse_input else sharpened.mul_(sim)   # sim·exp(λ·sim)
        if drop.dtype == torch.bool:
            sharpened.masked_fill_(drop, float('-inf'))
        else:  # the lowest float where dropped, kept entries unchanged (+ 0·lowest = −0.0): the
            # softmax's exp gives 0 there, as it does for −inf, and the same result bit for bit
            sharpened.add_(drop, alpha=torch.finfo(drop.dtype).min)
        return torch.softmax(sharpened, dim=-1, out=out)


def kl_terms_in_halves(dtype: torch.dtype) -> bool:
    """Whether the fused path makes q·log qᵀ from fp16 halves for a model in ``dtype``: a
    half-precision model, on tensor cores (5e-5 off on an H100, against its inputs' own 8e-5
    against fp64); fp32 and fp64 work keeps its own precision."""
    return dtype in (torch.float16, torch.bfloat16)


def _records_grad(x: Tensor) -> bool:
    return torch.is_grad_enabled() and x.requires_grad


def _blockwise_product(new_rows: Callable[[slice], Tensor], operand: Tensor, num_tokens: int,
                       path: str, out_rows: int) -> Tensor:
    """A_new · operand (B, out_rows, C), zeros beyond row N, A_new made a block of rows at a
    time by ``new_rows``; an operand of more rows than N (zeros) meets A_new's padding (zeros,
    the fused path's)."""
    batch, padded, channels = operand.shape
    out = zero_padded(operand, (batch, out_rows, channels), num_tokens)
    for rows in _row_blocks(batch, num_tokens, path):
        block = new_rows(rows)
        torch.matmul(block if padded == num_tokens else with_padding(block), operand,
                     out=out[:, rows])
    return out


def _row_blocks(batch: int, num_tokens: int, path: str) -> List[slice]:
    """Rows of A_new made at once. CPU: about ``BLOCK_ELEMENTS`` entries per image, small enough
    to stay in cache. Device: as few blocks as ``DEVICE_BLOCK_ELEMENTS`` allows for the whole
    batch, of equal sizes (few large kernels; the whole matrix of a batch of two, ProxyCLIP's crop
    batch on a GPU, up to N = 2048)."""
    if path == 'cpu':
        rows = max(1, BLOCK_ELEMENTS // num_tokens)
    else:
        blocks = -(-batch * num_tokens * num_tokens // DEVICE_BLOCK_ELEMENTS)
        rows = -(-num_tokens // blocks)
    return [slice(start, min(start + rows, num_tokens)) for start in range(0, num_tokens, rows)]


def _sorted_descending(x: Tensor) -> Tensor:
    """Each row of ``x`` sorted in descending order, values only (a new tensor)."""
    if x.device.type == 'cpu' and x.dtype in (torch.float32, torch.float64) \
            and not x.requires_grad:
        negated = np.negative(x.detach().numpy())   # a copy; negation is exact both ways
        negated.sort(axis=-1)
        return torch.from_numpy(negated).neg_()
    return x.sort(dim=-1, descending=True).values
