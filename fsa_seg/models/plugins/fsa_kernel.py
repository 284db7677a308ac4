"""FSA's KL terms and its pruning and sharpening as fused Triton kernels (CUDA), and the
operand of its ensemble product with its branch tokens.

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

Before it, one kernel turns the two branches' similarities into the terms of the KL,
q = softmax(s_a·P − s_u·P_u), log(q + ε) and Σ q·log(q + ε), in place of about ten small
torch kernels; the KL rows then come from one matrix product q·log(q + ε)ᵀ, subtracted from the
self terms in the pruning kernel. A_new's rows are written with a row stride of a multiple of 16
bytes (N = 1764 tokens of fp16 are 3528 bytes) and zeros in the padding, so that A_new's product
runs over the aligned length, which the fast fp16 GEMM kernels take (:mod:`..layout`). q's and
log q's rows are padded too (Q = 171 of fp32 are 684 bytes), which their fp32 product does not
need (on an H100: 35.6 µs over 171 entries, 35.4 µs over 176), and so are their token rows:
N' rows, the aligned N, zeros beyond N, so that q·log qᵀ (N × N') has aligned rows too (on an
H100 the fp16 halves' product at N = 1764 takes 10.1 µs against log q's 1768 rows, 25.0 µs in
an ``align2`` kernel against its 1764). For a half-precision model the kernel writes q and
log q as fp16 halves instead (high and low parts, zeros from Q to an aligned 176), whose one
product on tensor cores, with fp32 sums, is q·log qᵀ but for the low·low term. Against the
fp64 product of the same q and log q, at N = 1764: on an H100 the halves 5.3e-5 off
(0.010 ms) where fp32's product is 1.1e-5 off (0.035 ms; at N = 4096 0.045 against 0.154 ms);
emulated exactly on CPU 1.0e-5 against 5.1e-6 (tensor cores' fp32 sums round less closely);
fp16 inputs alone 6.7e-4. The model's own fp16 similarities already put 7.9e-5 into the KL
(CPU, fp64). fp32 models keep the fp32 product.

This is the official selection, as a definition: the kernel finds the cut by a bisection over
the bit patterns of the similarities, without sorting (:mod:`._fsa_triton`). Only roundings
differ from torch's kernels, so that a top-p cut moves only where a row's cumulative mass lies
within rounding of ``top_p``: the order of the sums; the masses compared in units of the
row's exps (against top_p·Σ exp, the softmax's division left out); and on the GPU, in fp32,
the hardware's exp2 and reciprocal (ex2.approx, within 2 ulps; results below 2^-126, A_new's
entries of less than 1e-38 included, flushed to zero). Both kernels are torch custom
ops with shape-only fake implementations, so the host-synchronisation checks on fake CUDA
tensors and ``torch.compile`` see through them; a plain eager call skips the dispatcher
(:func:`_through_dispatcher`). On CPU the same kernels run in Triton's interpreter
(TRITON_INTERPRET=1): slow, for the tests only.
"""
import functools
import importlib.util
import struct
from typing import NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor
from torch.utils._python_dispatch import is_in_torch_dispatch_mode

from ..layout import aligned_row_length, padded_rows

MAX_FUSED_TOKENS = 4096  # one row lives in one program's registers: N ≤ 4096 (SAM's 64×64 grid)
MAX_FUSED_QUERIES = 4096  # and one token's Q similarities in the KL terms' kernel
MAX_BLOCK_ENTRIES = 2 ** 20  # Triton's largest block (TRITON_MAX_TENSOR_NUMEL)
# a KL terms program's entries on the GPU: 4 tokens of Q ≤ 256, 52 registers a thread for the
# fp16 halves and 884 programs for a batch of 2 crops at N = 1764 (an H100 has 132 SMs), where
# 16 tokens took 167 registers in 221 programs, too few to keep loads in flight (sm_90 SASS
# read on CPU; untimed: ``benchmark.py kernel`` times 2 to 16 tokens a program)
KL_TERMS_ENTRIES = 1024
SOURCES = ('similarity', 'kl', 'dots')  # what the pruning kernel's rows hold
_FLOAT_TYPES = (torch.float32, torch.float64)
MAX_WARPS = 32  # a CUDA block's 1024 threads
NEVER = 1 << 30  # halvings before a snap that never comes (float64 rows: ~40 bits more to halve)


class PruningLaunch(NamedTuple):
    """How the pruning kernel is launched: ``rows`` rows a program and ``warps`` warps a program
    (0: :func:`run_kernel`'s defaults), the ``parts`` the interval of the top-p cut is cut
    into a step (2: halving; more, for fp32 rows only: fewer steps, each with more sums), and,
    halving fp32 rows, the halvings after which the interval first shrinks to the keys it holds
    (``snap``, then every 2 halvings; 0: never; see :mod:`._fsa_triton`). Every launch selects
    the same entries; the sums of its softmax may round differently."""
    rows: int = 0
    warps: int = 0
    parts: int = 2
    snap: int = 13

    @classmethod
    def checked(cls, **fields: int) -> 'PruningLaunch':
        """The launch of ``fields`` (rows, warps, parts, snap), or a ValueError naming what is
        wrong: an unknown field; rows, warps or parts not a power of two (a Triton block's sizes
        are), rows and warps 0 for the default, at most 32 warps, parts ≥ 2; snap not an integer
        ≥ 0."""
        unknown = set(fields) - set(cls._fields)
        if unknown:
            raise ValueError(f'pruning_launch takes {", ".join(cls._fields)}; got '
                             f'{", ".join(sorted(unknown))}')
        launch = cls(**fields)
        if not (all(isinstance(value, int) and (value == 0 or _power_of_two(value))
                    for value in launch[:3]) and launch.warps <= MAX_WARPS and launch.parts >= 2
                and isinstance(launch.snap, int) and launch.snap >= 0):
            raise ValueError('the pruning launch takes rows and warps a program (0: the default) '
                             f'and parts ≥ 2, all powers of two, at most {MAX_WARPS} warps, and '
                             f'snap ≥ 0; got {launch._asdict()}')
        return launch

    @property
    def split_bits(self) -> int:
        return self.parts.bit_length() - 1


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


def fused_kl_terms(branches: Tensor, logit_scales: Tuple[float, float], eps: float,
                   split: bool = False,
                   tokens_per_program: int = 0) -> Tuple[Tensor, Tensor, Tensor]:
    """From ``branches`` (B, N + 1, Q), the attention branch's cosine similarities P and, last,
    the uniform branch's P_u: q = softmax_Q(s_a·P − s_u·P_u) (B, N', Q), log(q + ε) (B, N', Q)
    and Σ_c q·log(q + ε) (B, N), in at least fp32, q and log q with aligned rows, and N' ≥ N
    rows, zeros beyond N, N' the aligned N (:func:`~fsa_seg.models.layout.aligned_row_length`):
    their product q·log qᵀ then has aligned rows too. With ``split`` (fp32 work only), q and
    log q as their fp16 halves (B, N', 3·K), K the aligned Q, whose product
    :func:`kl_dot_products` is q·log qᵀ on tensor cores. ``branches`` may have padded rows (a
    view of wider ones). ``tokens_per_program``, a power of two, launches the kernel with as
    many tokens a program (0: as many as ``KL_TERMS_ENTRIES`` entries hold), for tuning
    (``benchmark.py kernel``); each token's terms are the same."""
    if not (tokens_per_program == 0 or _power_of_two(tokens_per_program)):
        raise ValueError(f'tokens_per_program must be 0 or a power of two, got '
                         f'{tokens_per_program}')
    if branches.shape[-1] > MAX_FUSED_QUERIES:
        raise ValueError(f'the fused FSA KL terms take at most {MAX_FUSED_QUERIES} queries, got '
                         f'{branches.shape[-1]}')
    if split and branches.dtype == torch.float64:
        raise ValueError('the fp16 halves of q and log q are for fp32 work, not float64')
    kl_terms = torch.ops.fsa_seg.kl_terms if _through_dispatcher(branches) else _kl_terms
    return kl_terms(branches, list(logit_scales), eps, split, tokens_per_program)


def kl_dot_products(q: Tensor, log_q_t: Tensor) -> Tensor:
    """q·log(q + ε)ᵀ (B, n, N) in at least fp32 from :func:`fused_kl_terms`' q (B, n, ·) and
    transposed log q. Of the fp16 halves (``split``): one fp16 product with fp32 accumulation
    of [q_hi, q_hi, q_lo] and [l_hi, l_lo, l_hi], on tensor cores, where an fp32 product runs
    on CUDA cores (on an H100 at N = 1764, Q = 171: 10 µs and 5.3e-5 off against 35 µs and
    1.1e-5 off; fp16 inputs alone: 6.7e-4); on CPU (the tests) the same products, exact in
    fp32, with fp32 sums."""
    if q.dtype != torch.float16:
        return torch.bmm(q, log_q_t)
    if q.is_cuda:
        return torch.bmm(q, log_q_t, out_dtype=torch.float32)
    return torch.bmm(q.float(), log_q_t.float())


def _kl_terms_outputs(branches: Tensor, split: bool) -> Tuple[Tensor, Tensor, Tensor]:
    batch, tokens, queries = branches.shape[0], branches.shape[1] - 1, branches.shape[2]
    dtype = torch.promote_types(branches.dtype, torch.float32)
    if split:
        width = 3 * aligned_row_length(queries, torch.float16)
        rows = aligned_row_length(tokens, torch.float16)
        q, log_q = (branches.new_empty((batch, rows, width), dtype=torch.float16)
                    for _ in range(2))
    else:
        rows = aligned_row_length(tokens, dtype)
        q, log_q = (padded_rows((batch, rows, queries), dtype, branches.device)
                    for _ in range(2))
    return q, log_q, branches.new_empty((batch, tokens), dtype=dtype)


def _through_dispatcher(*tensors: Optional[Tensor]) -> bool:
    """Whether a fused kernel is called as its custom op: while compiling, under a dispatch mode
    (fake tensors), for tensor subclasses and where autograd records. A plain eager call runs
    it directly: the op's dispatch costs about 35 µs of host time a call (measured on CPU), host
    time that an eager plug-in on a GPU waits for."""
    return (torch.compiler.is_compiling() or is_in_torch_dispatch_mode()
            or any(type(tensor) is not Tensor
                   or (tensor.requires_grad and torch.is_grad_enabled())
                   for tensor in tensors if tensor is not None))


def _kl_terms(branches: Tensor, logit_scales: Sequence[float], eps: float, split: bool,
              tokens_per_program: int) -> Tuple[Tensor, Tensor, Tensor]:
    branches = strided_rows(branches)
    q, log_q, self_terms = _kl_terms_outputs(branches, split)
    batch, tokens = self_terms.shape
    token_rows = q.shape[1]
    if q.numel() == 0:
        return q, log_q, self_terms
    from ._fsa_triton import kl_terms_rows
    queries = branches.shape[-1]
    block = max(16, 1 << (queries - 1).bit_length())
    rows = tokens_per_program or _rows_a_program(
        token_rows, block, KL_TERMS_ENTRIES if q.is_cuda else MAX_BLOCK_ENTRIES)
    grid = (-(-token_rows // rows), batch)
    with _launching_on(q.device):
        _kernel(kl_terms_rows, q.device)[grid](
            branches, q, log_q, self_terms, tokens, token_rows, queries, branches.stride(1),
            q.stride(1), aligned_row_length(queries, torch.float16),
            *map(_bits, (*logit_scales, eps)), ROWS=rows, BLOCK=block, SPLIT=split,
            num_warps=_num_warps(block))
    return q, log_q, self_terms


_kl_terms_op = torch.library.custom_op('fsa_seg::kl_terms', _kl_terms, mutates_args=())


@_kl_terms_op.register_fake
def _(branches, logit_scales, eps, split, tokens_per_program):
    return _kl_terms_outputs(branches, split)


def fused_operand_and_tokens(values: Tensor, attended: Tensor) -> Tuple[Tensor, Tensor]:
    """From the per-head values V and A·V (B, H, N, d), each head's entries contiguous, FSA's
    ensemble operand [V, A·V + V] of all heads (B, N', 2·H·d), N' the aligned N
    (:func:`~fsa_seg.models.layout.aligned_row_length`), zeros beyond N, and the attention
    branch's tokens (B, N + 1, H·d), A·V with the heads side by side and a last row left
    uninitialised (the uniform branch's): one kernel, which reads V and A·V once."""
    if values.shape != attended.shape or values.dtype != attended.dtype:
        raise ValueError(f'values and attended differ: {tuple(values.shape)} {values.dtype}, '
                         f'{tuple(attended.shape)} {attended.dtype}')
    operand_and_tokens = (torch.ops.fsa_seg.operand_and_tokens
                          if _through_dispatcher(values, attended) else _operand_and_tokens)
    return operand_and_tokens(values, attended)


def _operand_and_tokens_outputs(values: Tensor) -> Tuple[Tensor, Tensor]:
    batch, heads, tokens, head_dim = values.shape
    rows = aligned_row_length(tokens, values.dtype)
    return (values.new_empty((batch, rows, 2 * heads * head_dim)),
            values.new_empty((batch, tokens + 1, heads * head_dim)))


def _operand_and_tokens(values: Tensor, attended: Tensor) -> Tuple[Tensor, Tensor]:
    values, attended = (x if x.stride(-1) == 1 else x.contiguous() for x in (values, attended))
    operand, tokens = _operand_and_tokens_outputs(values)
    batch, heads, num_tokens, head_dim = values.shape
    channels = heads * head_dim
    if operand.numel() == 0:
        return operand, tokens
    from ._fsa_triton import operand_and_tokens_rows
    operand_rows = operand.shape[1]
    rows, block = _operand_launch(operand_rows, channels, values.is_cuda)
    grid = (-(-operand_rows // rows), -(-channels // block), batch)
    with _launching_on(values.device):
        _kernel(operand_and_tokens_rows, values.device)[grid](
            values, attended, operand, tokens, num_tokens, operand_rows,
            *values.stride()[:3], *attended.stride()[:3], CHANNELS=channels, HEAD_DIM=head_dim,
            ROWS=rows, BLOCK=block, num_warps=4)
    return operand, tokens


def _operand_launch(operand_rows: int, channels: int, cuda: bool) -> Tuple[int, int]:
    """Tokens and channels a program of the operand's kernel. GPU: 8 tokens of 256 channels,
    whole 16-byte vectors and no idle lanes for the widths of 256·k (768, 1024, 1280); the
    interpreter, whose cost is per program: as many tokens in one as a block holds."""
    block = 1 << (channels - 1).bit_length()
    if cuda:
        return 8, min(block, 256)
    return _rows_a_program(operand_rows, block), block


_operand_and_tokens_op = torch.library.custom_op('fsa_seg::operand_and_tokens',
                                                 _operand_and_tokens, mutates_args=())


@_operand_and_tokens_op.register_fake
def _(values, attended):
    return _operand_and_tokens_outputs(values)


def fused_prune_and_sharpen(rows: Tensor, lamda: float, top_p: float, source: str,
                            out_dtype: torch.dtype, self_terms: Optional[Tensor] = None,
                            launch: PruningLaunch = PruningLaunch()) -> Tensor:
    """A_new for each row of ``rows`` (..., N), fp32 or fp64, holding (``source``) the
    similarities, the KL divergences (the similarity 1 / (1 + max(KL, 0)) is made in the
    kernel), or the dot products q_i·log(q_j + ε), the KL being ``self_terms`` (...,) minus them.
    Returns a new tensor of the same shape in ``out_dtype``, with aligned rows whose padding
    holds zeros (:func:`~fsa_seg.models.layout.with_padding`), the kernel launched as ``launch``
    says."""
    if rows.dtype not in _FLOAT_TYPES:
        raise TypeError(f'the fused FSA pruning works in float32 or float64, got {rows.dtype}')
    if rows.shape[-1] > MAX_FUSED_TOKENS:
        raise ValueError(f'the fused FSA pruning takes rows of at most {MAX_FUSED_TOKENS} '
                         f'tokens, got {rows.shape[-1]}')
    if source not in SOURCES or (source == 'dots') != (self_terms is not None):
        raise ValueError(f'source must be one of {SOURCES}, with self_terms exactly for '
                         f"'dots'; got {source!r}")
    prune_and_sharpen = (torch.ops.fsa_seg.prune_and_sharpen
                         if _through_dispatcher(rows, self_terms) else _prune_and_sharpen)
    return prune_and_sharpen(rows, self_terms, lamda, top_p, source, out_dtype, list(launch))


def _prune_and_sharpen(rows: Tensor, self_terms: Optional[Tensor], lamda: float, top_p: float,
                       source: str, out_dtype: torch.dtype, launch: Sequence[int]) -> Tensor:
    rows = strided_rows(rows)
    out = padded_rows(rows.shape, out_dtype, rows.device)
    if rows.numel() == 0:
        return out
    run_kernel(rows, out, lamda, top_p, source,
               None if self_terms is None else self_terms.to(rows.dtype).contiguous(),
               PruningLaunch(*launch), zero_padding=True)
    return out


_prune_and_sharpen_op = torch.library.custom_op('fsa_seg::prune_and_sharpen',
                                                _prune_and_sharpen, mutates_args=())


@_prune_and_sharpen_op.register_fake
def _(rows, self_terms, lamda, top_p, source, out_dtype, launch):
    return padded_rows(rows.shape, out_dtype, rows.device)


def strided_rows(rows: Tensor) -> Tensor:
    """``rows`` (…, n) as they are where the kernels read them in place, rows of n contiguous
    entries a stride apart (a contiguous tensor, or a view of wider rows as ``x[..., :n]``),
    else a contiguous copy."""
    sizes, strides = rows.shape, rows.stride()
    in_place = rows.dim() >= 2 and strides[-1] == 1 and strides[-2] >= sizes[-1] and all(
        strides[d] == strides[d + 1] * sizes[d + 1] for d in range(rows.dim() - 2))
    return rows if in_place else rows.contiguous()


def run_kernel(rows: Tensor, out: Tensor, lamda: float, top_p: float, source: str = 'kl',
               self_terms: Optional[Tensor] = None, launch: PruningLaunch = PruningLaunch(),
               zero_padding: bool = False) -> None:
    """Launch the pruning kernel on ``rows`` (..., N) of :func:`strided_rows`, writing ``out``
    (the same shape, rows of any stride; with ``zero_padding`` zeros from N to its row stride). By
    default the GPU runs a row a program with :func:`_num_warps` warps, and the interpreter,
    whose cost is per program, as many rows in one as Triton's largest block (2^20 entries)
    holds, both halving the interval of the top-p cut a step; ``launch`` sets others
    (:mod:`fsa_seg.analysis.kernel_benchmark` times them)."""
    from ._fsa_triton import prune_and_sharpen_rows
    size = rows.shape[-1]
    num_rows = rows.numel() // size
    block = max(16, 1 << (size - 1).bit_length())
    rows_per_program = launch.rows or (1 if rows.is_cuda else _rows_a_program(num_rows, block))
    in_stride = rows.stride(-2) if rows.dim() > 1 else size
    out_stride = out.stride(-2) if out.dim() > 1 else size
    if zero_padding and out_stride > block:
        raise ValueError(f'a row stride of {out_stride} is beyond the kernel\'s block of {block}')
    kernel = _kernel(prune_and_sharpen_rows, rows.device)[(-(-num_rows // rows_per_program),)]
    with _launching_on(rows.device):
        kernel(rows, rows if self_terms is None else self_terms, out, num_rows, size, in_stride,
               out_stride, out_stride if zero_padding else size, _bits(lamda), _bits(top_p),
               SOURCE=SOURCES.index(source), KEY_BITS=8 * rows.element_size(),
               ROWS=rows_per_program, BLOCK=block, SPLIT_BITS=launch.split_bits,
               SNAP_AFTER=launch.snap if launch.snap and rows.element_size() == 4 else NEVER,
               FAST_MATH=rows.is_cuda, num_warps=launch.warps or _num_warps(block))


def _rows_a_program(num_rows: int, block: int, entries: int = MAX_BLOCK_ENTRIES) -> int:
    """The rows of ``block`` entries a program takes: as many as ``entries`` hold (at least one),
    no more than there are, a power of two. The interpreter's cost is per program, so there
    as many as Triton's largest block holds."""
    return max(1, min(1 << (num_rows - 1).bit_length(), entries // block))


def _power_of_two(value: int) -> bool:
    return value >= 1 and value & (value - 1) == 0


def _bits(value: float) -> int:
    """The bit pattern of the double ``value`` as a signed integer (see :mod:`._fsa_triton`)."""
    return struct.unpack('<q', struct.pack('<d', float(value)))[0]


def _launching_on(device: torch.device):
    """Triton launches on the current device; the interpreter's padding rows (never stored)
    divide 0 by 0 in numpy."""
    if device.type == 'cuda':
        return torch.cuda.device(device)
    return np.errstate(invalid='ignore', divide='ignore', over='ignore')


def _num_warps(block: int) -> int:
    """4 warps up to blocks of 2048 entries, 8 for 4096 (a row is then 16 registers a thread):
    fastest on an H100 (``benchmark.py kernel``, N = 1764: 4 and 8 warps alike, 16 slower;
    N = 4096: 8 warps 1.15x faster than 16), and none spills (the AOT compile test)."""
    return min(16, max(4, block // 512))


def _kernel(kernel, device: torch.device):
    """``kernel`` compiled for CUDA; for CPU tensors only when Triton runs its interpreter
    (TRITON_INTERPRET=1 before Triton is imported, as the tests do without a GPU)."""
    if device.type == 'cpu':
        from triton.runtime.interpreter import InterpretedFunction
        if not isinstance(kernel, InterpretedFunction):
            raise RuntimeError('the fused FSA kernels run on CUDA; on CPU only in Triton\'s '
                               'interpreter (TRITON_INTERPRET=1 set before Triton is imported)')
    return kernel
