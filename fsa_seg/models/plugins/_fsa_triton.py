"""The Triton kernels behind :mod:`.fsa_kernel` (imported only when the fused path first runs).

Constants (λ, top_p, the logit scales, ε) arrive as the bit patterns of Python's doubles, as
integers, and are cast in the kernel to the dtype of the work, as torch casts a Python scalar:
Triton's float arguments are fp32, which would change ε in float64, and a tensor of them would
have to be filled on the device first."""
import triton
import triton.language as tl
from triton.language.extra import libdevice

LOG2E = tl.constexpr(1.4426950408889634)  # log2(e): exp(x) = 2^(x·log2 e)


@triton.jit
def _from_bits(bits, dtype: tl.constexpr):
    """The double whose bit pattern is ``bits``, rounded to ``dtype``."""
    return bits.to(tl.int64).to(tl.float64, bitcast=True).to(dtype)


@triton.jit
def _halves(x):
    """``x`` as two fp16 numbers, high + low = x to about 22 bits (fp16 subnormals aside)."""
    high = x.to(tl.float16)
    return high, (x - high.to(x.dtype)).to(tl.float16)


@triton.jit
def _exp(x, scale, shift):
    """exp(scale·x − shift) for a row's scalars ``scale`` and ``shift``. fp32 as
    2^(x·(scale·log2 e) − shift·log2 e): one FFMA and the GPU's ex2 (which flushes results below
    2^-126 to zero), where ``tl.exp`` adds a multiply and the rescaling of subnormal results;
    float64 as it reads."""
    if x.dtype == tl.float32:
        return tl.math.exp2(x * (scale * LOG2E) - shift * LOG2E)
    return tl.exp(scale * x - shift)


@triton.jit
def _similarity(kl, FAST: tl.constexpr):
    """1 / (1 + max(KL, 0)); with FAST (fp32 on a GPU, not in the interpreter) the GPU's
    approximate reciprocal, without a full division's range checks (of no use for 1 ≤ x)."""
    if FAST:
        return libdevice.fast_dividef(1.0, 1.0 + tl.maximum(kl, 0.0))
    return 1.0 / (1.0 + tl.maximum(kl, 0.0))


@triton.jit(do_not_specialize=['num_tokens', 'token_rows', 'scale_attn_bits',
                               'scale_uniform_bits', 'eps_bits'])
def kl_terms_rows(both_ptr, q_ptr, log_q_ptr, self_ptr, num_tokens, token_rows, num_queries,
                  both_stride, q_stride, segment, scale_attn_bits, scale_uniform_bits, eps_bits,
                  ROWS: tl.constexpr, BLOCK: tl.constexpr, SPLIT: tl.constexpr):
    """ROWS tokens of one image a program (grid: token blocks × images). ``both`` (B, N + 1, Q),
    rows of ``both_stride``, holds the attention branch's cosine similarities and, last, the
    uniform branch's; writes q = softmax(s_a·P − s_u·P_u) and log(q + ε), ``token_rows`` ≥ N
    rows an image (zeros beyond N) of ``q_stride``, and Σ q·log(q + ε) (B, N), in the dtype of
    ``self``. With SPLIT, in place of q and log q, their fp16 halves [q_hi, q_hi, q_lo] and
    [l_hi, l_lo, l_hi], each ``segment`` entries wide with zeros beyond Q: one product of the
    two with fp32 accumulation is q·log qᵀ but for q_lo·l_lo."""
    dtype: tl.constexpr = self_ptr.dtype.element_ty
    image = tl.program_id(1).to(tl.int64)
    tokens = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)[:, None]
    queries = tl.arange(0, BLOCK)[None, :]
    in_row = queries < num_queries
    real = tokens < num_tokens
    valid = real & in_row
    rows_ptr = both_ptr + image * (num_tokens + 1) * both_stride
    attention = tl.load(rows_ptr + tokens * both_stride + queries, mask=valid, other=0.0)
    uniform = tl.load(rows_ptr + num_tokens * both_stride + queries, mask=in_row, other=0.0)
    isolated = (_from_bits(scale_attn_bits, dtype) * attention.to(dtype)
                - _from_bits(scale_uniform_bits, dtype) * uniform.to(dtype))
    isolated = tl.where(valid, isolated, -float('inf'))
    weights = tl.exp(isolated - tl.max(isolated, axis=1)[:, None])
    q = weights / tl.sum(weights, axis=1)[:, None]
    log_q = tl.log(q + _from_bits(eps_bits, dtype))
    self_ptr += image * num_tokens + tokens
    offsets = (image * token_rows + tokens) * q_stride + queries
    stored = tokens < token_rows                                  # zeros from N to token_rows
    if SPLIT:  # the self terms, one operand, then the other: fewer values live at once
        _store_self_terms(self_ptr, q, log_q, valid, real)
        stored = stored & (queries < segment)                     # zeros from Q to the segment
        high, low = _halves(tl.where(valid, q, 0.0))
        tl.store(q_ptr + offsets, high, mask=stored)
        tl.store(q_ptr + offsets + segment, high, mask=stored)
        tl.store(q_ptr + offsets + 2 * segment, low, mask=stored)
        high, low = _halves(tl.where(valid, log_q, 0.0))
        tl.store(log_q_ptr + offsets, high, mask=stored)
        tl.store(log_q_ptr + offsets + segment, low, mask=stored)
        tl.store(log_q_ptr + offsets + 2 * segment, high, mask=stored)
    else:  # the self terms first: fewer values live at once (float64 spills otherwise)
        _store_self_terms(self_ptr, q, log_q, valid, real)
        stored = stored & in_row
        tl.store(q_ptr + offsets, tl.where(real, q, 0.0), mask=stored)
        tl.store(log_q_ptr + offsets, tl.where(real, log_q, 0.0), mask=stored)


@triton.jit
def _store_self_terms(self_ptr, q, log_q, valid, stored):
    """Σ q·log(q + ε) of each row."""
    tl.store(self_ptr, tl.sum(tl.where(valid, q * log_q, 0.0), axis=1)[:, None], mask=stored)


@triton.jit(do_not_specialize=['num_tokens', 'operand_rows'])
def operand_and_tokens_rows(values_ptr, attended_ptr, operand_ptr, tokens_ptr, num_tokens,
                            operand_rows, values_image, values_head, values_token,
                            attended_image, attended_head, attended_token,
                            CHANNELS: tl.constexpr, HEAD_DIM: tl.constexpr, ROWS: tl.constexpr,
                            BLOCK: tl.constexpr):
    """ROWS tokens × BLOCK channels of one image a program (grid: token blocks × channel blocks
    × images). From the per-head values V and A·V (B, H, N, d) of any strides (entries of a
    head contiguous), writes FSA's ensemble operand [V, A·V + V] (B, ``operand_rows``, 2, H·d),
    zeros beyond N, and the attention branch's tokens A·V (B, N + 1, H·d), heads side by side
    (its last row, the uniform branch's, is left to the caller): both read once, where torch
    would copy each of them into place and add them in three strided passes."""
    image = tl.program_id(2).to(tl.int64)
    tokens = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)[:, None]
    channels = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)[None, :]
    heads = channels // HEAD_DIM
    within = channels % HEAD_DIM
    in_row = channels < CHANNELS
    real = (tokens < num_tokens) & in_row
    values = tl.load(values_ptr + image * values_image + heads * values_head
                     + tokens * values_token + within, mask=real, other=0.0)
    attended = tl.load(attended_ptr + image * attended_image + heads * attended_head
                       + tokens * attended_token + within, mask=real, other=0.0)
    tl.store(tokens_ptr + (image * (num_tokens + 1) + tokens) * CHANNELS + channels, attended,
             mask=real)
    operand = operand_ptr + (image * operand_rows + tokens) * (2 * CHANNELS) + channels
    stored = (tokens < operand_rows) & in_row                   # zeros from N to operand_rows
    tl.store(operand, values, mask=stored)
    tl.store(operand + CHANNELS, _sum(attended, values), mask=stored)


@triton.jit
def _sum(a, b):
    """a + b; fp16 and bf16 summed in fp32 and rounded once to their type, which is torch's sum
    and, on a GPU, the native one bit for bit (the fp32 sum's rounding is innocuous: 24 ≥ 2·11 +
    2 bits). Triton's interpreter has no bf16 arithmetic (it would add bit patterns), and rounds
    its fp32 → bf16 casts toward zero: there bf16 sums are within one unit of the last place."""
    if a.dtype == tl.float16 or a.dtype == tl.bfloat16:
        return (a.to(tl.float32) + b.to(tl.float32)).to(a.dtype)
    return a + b


@triton.jit
def _order_keys(x, valid, smallest, KEY_BITS: tl.constexpr, SIGNED: tl.constexpr):
    """Integers of KEY_BITS bits in the order of the floats ``x`` (sign-magnitude → two's
    complement), -0.0 and 0.0 one key, entries outside ``valid`` ``smallest``. Without SIGNED
    (``x`` positive or −inf: similarities made from the KL, −inf where not ``valid``) the bit
    patterns as they are, which are in that order already."""
    if not SIGNED:
        return x.to(tl.int32 if KEY_BITS == 32 else tl.int64, bitcast=True)
    x = tl.where(x == 0.0, 0.0, x)
    if KEY_BITS == 32:
        bits = x.to(tl.int32, bitcast=True)
        keys = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    else:
        bits = x.to(tl.int64, bitcast=True)
        keys = bits ^ ((bits >> 63) & 0x7FFFFFFFFFFFFFFF)
    return tl.where(valid, keys, smallest)


@triton.jit
def _midpoint(low, high):
    """⌊(low + high) / 2⌋ without overflow."""
    return (low >> 1) + (high >> 1) + (low & high & 1)


@triton.jit
def _bisection(keys, weights, low, high, mass_high, budget, smallest, largest,
               SNAP_AFTER: tl.constexpr, SNAP_EVERY: tl.constexpr):
    """Halve [low, high) until high = low + 1, keeping G(low) > budget ≥ G(high) (per row), and
    G(high) as ``mass_high``; G(b) sums ``weights`` over the keys ≥ b, ``budget`` is top_p in
    their unit.

    After SNAP_AFTER halvings, and every SNAP_EVERY after that, [low, high) shrinks to the keys
    it holds instead, [its smallest, its largest + 1) (no key leaves it: G is the same at both
    ends): the halvings cut the interval down to about one key of the row (a similarity key
    has ~25 bits, N = 1764 keys ~11), and the rest of them would halve the empty gap to its
    neighbours; the snap ends there, at a cost of two reductions, with the same cut."""
    middle = _midpoint(low, high)
    halvings = 0
    due = SNAP_AFTER
    # middle > low exactly while high − low > 1 (a difference that 32-bit keys could overflow);
    # at most KEY_BITS halvings, about 25 for similarities
    while tl.max((middle > low).to(tl.int32)) > 0:
        if halvings == due:  # rows of more than one entry (finished ones, kept as they are)
            inside = (keys >= low) & (keys < high)
            open_row = middle > low
            low = tl.where(open_row, tl.min(tl.where(inside, keys, largest), axis=1)[:, None],
                           low)
            high = tl.where(open_row,
                            tl.max(tl.where(inside, keys, smallest), axis=1)[:, None] + 1, high)
            halvings = 0
            due = SNAP_EVERY
        else:
            mass = tl.sum(tl.where(keys >= middle, weights, 0.0), axis=1)[:, None]
            fits = mass <= budget
            high = tl.where(fits, middle, high)     # a finished row: middle = low, kept as is
            mass_high = tl.where(fits, mass, mass_high)
            low = tl.where(fits, low, middle)
            halvings += 1
        middle = _midpoint(low, high)
    return low, high, mass_high


@triton.jit
def _split_search(keys, weights, low, high, budget, SPLIT_BITS: tl.constexpr):
    """:func:`_bisection` for 32-bit keys, cutting [low, high) at the 2^SPLIT_BITS points
    c_j = low + ⌊j·(high − low) / 2^SPLIT_BITS⌋ (in 64 bits) a step: with m the number of cuts
    of G(c_j) > budget (c_0 = low is one), [c_(m−1), c_m) is the next interval (c_(2^s) = high).
    A finished row (high − low ≤ 1) stays as it is."""
    parts = tl.arange(0, 1 << SPLIT_BITS)[None, :, None].to(tl.int64)
    low = low.to(tl.int64)
    high = high.to(tl.int64)
    while tl.max(high - low) > 1:
        width = high - low
        cuts = low[:, :, None] + ((width[:, :, None] * parts) >> SPLIT_BITS)   # (ROWS, 2^s, 1)
        masses = tl.sum(tl.where(keys[:, None, :] >= cuts, weights[:, None, :], 0.0), axis=2)
        beyond = tl.sum((masses > budget).to(tl.int64), axis=1)[:, None]
        high = low + ((width * beyond) >> SPLIT_BITS)
        low = low + ((width * (beyond - 1)) >> SPLIT_BITS)
    return low.to(tl.int32), high.to(tl.int32)


@triton.jit(do_not_specialize=['lamda_bits', 'top_p_bits'])
def prune_and_sharpen_rows(rows_ptr, self_ptr, out_ptr, num_rows, size, in_stride, out_stride,
                           out_size, lamda_bits, top_p_bits, SOURCE: tl.constexpr,
                           KEY_BITS: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr,
                           SPLIT_BITS: tl.constexpr, SNAP_AFTER: tl.constexpr,
                           FAST_MATH: tl.constexpr):
    """ROWS rows of ``size`` entries a program (one on the GPU): A_new's rows, written with row
    stride ``out_stride`` and zeros from ``size`` to ``out_size`` (≤ BLOCK), from rows (of
    stride ``in_stride``) of similarities (SOURCE 0), of KL divergences (1), or of dot products
    q_i·log(q_j + ε), the KL being ``self`` minus them (2).

    With p = softmax(row) and G(b) = Σ p over the entries of key ≥ b (the cumulative mass at the
    end of a group of equal values in the sorted row), a bisection over the keys finds the
    smallest b with G(b) ≤ top_p: the entries from b up are kept whole; of the next group of
    equal values, the ones of lowest index while the mass stays ≤ top_p; at least the row's
    first maximum. This is the stable descending sort's selection, without sorting. The masses
    are summed in units of the row's exps w = exp(x − max x), against top_p·Σw (the softmax's
    division left out). With SPLIT_BITS > 1 (32-bit keys) each step cuts the interval in
    2^SPLIT_BITS parts instead of halving it: fewer steps, each with more (independent) sums.
    Halving, after SNAP_AFTER steps the interval shrinks to the keys it holds
    (:func:`_bisection`). FAST_MATH: the GPU's approximate reciprocal for fp32 similarities
    (libdevice, which the interpreter lacks)."""
    dtype: tl.constexpr = rows_ptr.dtype.element_ty
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)[:, None]
    offsets = tl.arange(0, BLOCK)[None, :]
    valid = (offsets < size) & (rows < num_rows)
    x = tl.load(rows_ptr + rows * in_stride + offsets, mask=valid, other=0.0)
    lamda = _from_bits(lamda_bits, dtype)
    top_p = _from_bits(top_p_bits, dtype)
    if SOURCE == 2:
        x = tl.load(self_ptr + rows, mask=rows < num_rows, other=0.0) - x
    if SOURCE != 0:
        x = _similarity(x, FAST_MATH and KEY_BITS == 32)
    # −inf beyond the row: no weight in any softmax, and (SOURCE ≠ 0) keys below the row's
    x = tl.where(valid, x, -float('inf'))
    top = tl.max(x, axis=1)[:, None]
    weights = _exp(x, 1.0, top)
    whole = tl.sum(weights, axis=1)[:, None]                        # G(the smallest key)
    budget = top_p * whole                                          # top_p in units of weights
    if KEY_BITS == 32:  # the keys' smallest and largest values
        smallest = -0x7FFFFFFF - 1
        largest = 0x7FFFFFFF
    else:
        smallest = -0x7FFFFFFFFFFFFFFF - 1
        largest = 0x7FFFFFFFFFFFFFFF
    keys = _order_keys(x, valid, smallest, KEY_BITS, SIGNED=SOURCE == 0)
    top_key = _order_keys(top, rows < num_rows, smallest, KEY_BITS, SIGNED=SOURCE == 0)
    low = tl.min(tl.where(valid, keys, largest), axis=1)[:, None]          # G(low) > top_p
    high = top_key + 1                                                      # G(high) = 0
    # top_p ≥ the whole mass: every entry kept, the cut below the smallest key (no group there)
    fits = whole <= budget
    high = tl.where(fits, low, high)
    low = tl.where(fits, low - 1, low)
    mass_above = tl.where(fits, whole, 0.0)                                     # G(high)
    if KEY_BITS == 32 and SPLIT_BITS > 1:
        low, high = _split_search(keys, weights, low, high, budget, SPLIT_BITS)
        mass_above = tl.sum(tl.where(keys >= high, weights, 0.0), axis=1)[:, None]
    else:
        low, high, mass_above = _bisection(keys, weights, low, high, mass_above, budget,
                                           smallest, largest, SNAP_AFTER, SNAP_EVERY=2)
    # the entries from high up are kept whole; the cut's group, of key low: G(low) > top_p ≥
    # G(low + 1) = G(high), so it has entries (none where the whole row fits)
    tied = keys == low
    # of its entries, those of lowest index while the mass fits, which needs a cumulative sum
    # where it has several (rare; fp64 rows, the tests' on CUDA, always: ptxas spills the
    # branch). One entry's mass is G(low) > top_p: none is kept, unless nothing is above the
    # cut: then the group is the row's maxima, and its first is kept
    if KEY_BITS == 64 or tl.max(tl.sum(tied.to(tl.int32), axis=1)) > 1:
        mass = mass_above + tl.cumsum(tl.where(tied, weights, 0.0), axis=1)
        first_tied = offsets == tl.min(tl.where(tied, offsets, BLOCK), axis=1)[:, None]
        keep = (keys >= high) | (tied & ((mass <= budget) | (first_tied & (high > top_key))))
    else:
        keep = keys >= tl.where(high > top_key, low, high)
    sharpened = tl.where(keep, x * _exp(x, lamda, 0.0), -float('inf'))
    if SOURCE == 0:
        shift = tl.max(sharpened, axis=1)[:, None]
    else:  # x > 0 and the row's maximum kept: sharpened's maximum, where λ ≥ −1 (x·e^(λx)
        # then grows with x), and within 1/e of it otherwise
        shift = top * _exp(top, lamda, 0.0)
    weights = _exp(sharpened, 1.0, shift)
    new_rows = weights * (1.0 / tl.sum(weights, axis=1)[:, None])
    # beyond ``size`` nothing is kept: the entries there are exp(−inf) / sum = 0
    tl.store(out_ptr + rows * out_stride + offsets, new_rows.to(out_ptr.dtype.element_ty),
             mask=(offsets < out_size) & (rows < num_rows))
