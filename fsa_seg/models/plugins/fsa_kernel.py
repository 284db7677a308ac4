"""FSA's pruning and sharpening as one fused Triton kernel per block of rows (CUDA).

The torch device path makes a block of A_new in about a dozen kernels over block×N buffers (the
similarity, a segmented sort with indices, softmax, cumulative sum, a scatter of the kept sorted
positions, the sharpening, a masked softmax). On an H100 at N = 1764 that sort-based chain is most
of FSA's time. Here one program per row reads the KL row once, keeps the row in registers and
writes its row of A_new once, in the dtype of the values:

    sim = 1 / (1 + max(KL, 0))                         (or the similarity row as it is)
    sorted = sort(sim, descending); mass = cumsum(softmax(sorted))
    k = max(1, #{mass ≤ top_p})                        the kept sorted positions are a prefix
    keep the k largest: every sim above the k-th value t, and of the entries equal to t the ones
        of lowest index (the order of the stable sort CUDA's ``torch.sort`` uses for such rows)
    A_new = softmax over the kept entries of sim·exp(λ·sim)

This is the official selection, as a definition: the kernel finds the cut by a bisection over
the bit patterns of the similarities, without sorting (:mod:`._fsa_triton`). Only the summation
order of the softmax and the cumulative mass differs from torch's kernels (a top-p cut moves only
where a row's cumulative mass lies within rounding of ``top_p``). The op is a torch custom op
with a shape-only fake implementation, so the host-synchronisation checks on fake CUDA tensors
see through it. On CPU the same kernel runs in Triton's interpreter (TRITON_INTERPRET=1): slow,
for the tests only.
"""
import contextlib
import functools
import importlib.util
from typing import Optional

import numpy as np
import torch
from torch import Tensor

MAX_FUSED_TOKENS = 4096  # one row lives in one program's registers: N ≤ 4096 (SAM's 64×64 grid)
MAX_BLOCK_ENTRIES = 2 ** 20  # Triton's largest block (TRITON_MAX_TENSOR_NUMEL)
_FLOAT_TYPES = (torch.float32, torch.float64)


def fused_pruning_available(device: torch.device, num_tokens: int) -> bool:
    """Whether the fused kernel can run rows of ``num_tokens`` on ``device``: a CUDA GPU that
    Triton compiles for."""
    return device.type == 'cuda' and num_tokens <= MAX_FUSED_TOKENS and \
        _kernel_runs_on(device.index)


@functools.lru_cache(maxsize=None)
def _kernel_runs_on(index: Optional[int]) -> bool:
    """Triton is installed and the GPU is an Ampere or newer (compute capability ≥ 8.0; Triton's
    support of older ones is partial)."""
    if importlib.util.find_spec('triton') is None:
        return False
    return torch.cuda.get_device_capability(index) >= (8, 0)


def fused_prune_and_sharpen(rows: Tensor, lamda: float, top_p: float, from_kl: bool,
                            out_dtype: torch.dtype) -> Tensor:
    """A_new for each row of ``rows`` (..., N), fp32 or fp64: the KL divergences when
    ``from_kl`` (the similarity 1 / (1 + max(KL, 0)) is made in the kernel), else the similarities.
    Returns a new tensor of the same shape in ``out_dtype``."""
    if rows.dtype not in _FLOAT_TYPES:
        raise TypeError(f'the fused FSA pruning works in float32 or float64, got {rows.dtype}')
    if rows.shape[-1] > MAX_FUSED_TOKENS:
        raise ValueError(f'the fused FSA pruning takes rows of at most {MAX_FUSED_TOKENS} '
                         f'tokens, got {rows.shape[-1]}')
    return torch.ops.fsa_seg.prune_and_sharpen(rows, lamda, top_p, from_kl, out_dtype)


@torch.library.custom_op('fsa_seg::prune_and_sharpen', mutates_args=())
def _prune_and_sharpen_op(rows: Tensor, lamda: float, top_p: float, from_kl: bool,
                          out_dtype: torch.dtype) -> Tensor:
    rows = rows.contiguous()
    out = torch.empty(rows.shape, dtype=out_dtype, device=rows.device)
    if rows.numel() == 0:
        return out
    run_kernel(rows, out, hyperparameters(rows, lamda, top_p), from_kl)
    return out


def run_kernel(rows: Tensor, out: Tensor, hyper: Tensor, from_kl: bool,
               rows_per_program: Optional[int] = None, num_warps: Optional[int] = None) -> None:
    """Launch the kernel on contiguous ``rows`` (..., N), writing ``out`` (the same shape). By
    default the GPU runs a row a program with :func:`_num_warps` warps, and the interpreter, whose
    cost is per program, as many rows in one as Triton's largest block (2^20 entries) holds;
    ``rows_per_program`` and ``num_warps`` set others (:mod:`fsa_seg.analysis.kernel_benchmark`
    times them)."""
    size = rows.shape[-1]
    num_rows = rows.numel() // size
    block = max(16, 1 << (size - 1).bit_length())
    if rows_per_program is None:
        rows_per_program = 1 if rows.is_cuda else min(1 << (num_rows - 1).bit_length(),
                                                      max(1, MAX_BLOCK_ENTRIES // block))
    launch = _kernel(rows.device)[(-(-num_rows // rows_per_program),)]
    # Triton launches on the current device; the interpreter's padding rows (beyond num_rows,
    # never stored) divide 0 by 0 in numpy.
    on_device = torch.cuda.device(rows.device) if rows.is_cuda else contextlib.nullcontext()
    with on_device, np.errstate(invalid='ignore', divide='ignore'):
        launch(rows, out, hyper, num_rows, size, FROM_KL=from_kl, KEY_BITS=8 * rows.element_size(),
               ROWS=rows_per_program, BLOCK=block, num_warps=num_warps or _num_warps(block))


def hyperparameters(rows: Tensor, lamda: float, top_p: float) -> Tensor:
    """[λ, top_p] on the rows' device in their dtype, as torch's scalar arithmetic on such rows
    uses them (a Triton float argument is fp32). Filled by kernels: ``hyper[0] = lamda`` would
    copy a CPU scalar to the device, a host synchronisation that a CUDA graph cannot capture."""
    hyper = rows.new_full((2,), top_p)
    hyper[:1].fill_(lamda)
    return hyper


@_prune_and_sharpen_op.register_fake
def _(rows, lamda, top_p, from_kl, out_dtype):
    return rows.new_empty(rows.shape, dtype=out_dtype)


def _num_warps(block: int) -> int:
    """Enough threads that a row is a few registers per thread (4 to 16 warps)."""
    return min(16, max(4, block // 256))


def _kernel(device: torch.device):
    """The Triton kernel: compiled for CUDA; for CPU tensors only when Triton runs its interpreter
    (TRITON_INTERPRET=1 before Triton is imported, as the tests do without a GPU)."""
    from ._fsa_triton import prune_and_sharpen_rows  # imports Triton: only when first used
    if device.type == 'cpu':
        from triton.runtime.interpreter import InterpretedFunction
        if not isinstance(prune_and_sharpen_rows, InterpretedFunction):
            raise RuntimeError('the fused FSA pruning runs on CUDA; on CPU only in Triton\'s '
                               'interpreter (TRITON_INTERPRET=1 set before Triton is imported)')
    return prune_and_sharpen_rows
