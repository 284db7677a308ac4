"""The Triton kernel behind :mod:`.fsa_kernel` (imported only when the fused pruning first runs)."""
import triton
import triton.language as tl


@triton.jit
def _order_keys(x, valid, KEY_BITS: tl.constexpr):
    """Integers in the order of the floats ``x`` (sign-magnitude → two's complement), as int64,
    -0.0 and 0.0 one key; entries outside ``valid`` get the smallest key."""
    x = tl.where(x == 0.0, 0.0, x)
    if KEY_BITS == 32:
        bits = x.to(tl.int32, bitcast=True)
        keys = (bits ^ ((bits >> 31) & 0x7FFFFFFF)).to(tl.int64)
    else:
        bits = x.to(tl.int64, bitcast=True)
        keys = bits ^ ((bits >> 63) & 0x7FFFFFFFFFFFFFFF)
    return tl.where(valid, keys, -0x7FFFFFFFFFFFFFFF - 1)


@triton.jit
def prune_and_sharpen_rows(rows_ptr, out_ptr, hyper_ptr, num_rows, size, FROM_KL: tl.constexpr,
                           KEY_BITS: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    """ROWS rows of ``size`` entries a program (one on the GPU): A_new's rows from their KL
    divergences (``FROM_KL``) or similarities; ``hyper`` holds λ and top_p in the rows' dtype.

    With p = softmax(row) and G(b) = Σ p over the entries of key ≥ b (the cumulative mass at the
    end of a group of equal values in the sorted row), a bisection over the keys finds the
    smallest b with G(b) ≤ top_p: the entries from b up are kept whole; of the next group of
    equal values, the ones of lowest index while the mass stays ≤ top_p; at least the row's
    first maximum. This is the stable descending sort's selection, without sorting."""
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)[:, None]
    offsets = tl.arange(0, BLOCK)[None, :]
    valid = (offsets < size) & (rows < num_rows)
    x = tl.load(rows_ptr + rows * size + offsets, mask=valid, other=0.0)
    lamda = tl.load(hyper_ptr)
    top_p = tl.load(hyper_ptr + 1)
    if FROM_KL:
        x = 1.0 / (1.0 + tl.maximum(x, 0.0))
    top = tl.max(tl.where(valid, x, -float('inf')), axis=1)[:, None]
    weights = tl.where(valid, tl.exp(x - top), 0.0)
    p = weights / tl.sum(weights, axis=1)[:, None]
    keys = _order_keys(x, valid, KEY_BITS)
    smallest = -0x7FFFFFFFFFFFFFFF - 1
    low = tl.min(tl.where(valid, keys, 0x7FFFFFFFFFFFFFFF), axis=1)[:, None]   # G(low) > top_p
    high = tl.max(keys, axis=1)[:, None] + 1                                   # G(high) = 0
    low_fits = tl.sum(tl.where(keys >= low, p, 0.0), axis=1)[:, None] <= top_p
    high = tl.where(low_fits, low, high)                      # top_p ≥ the whole mass: keep all
    while tl.max(high - low) > 1:  # at most KEY_BITS halvings; about 25 for similarities
        middle = (low >> 1) + (high >> 1) + (low & high & 1)  # ⌊(low + high) / 2⌋, no overflow
        middle = tl.where(high - low > 1, middle, high)
        fits = tl.sum(tl.where(keys >= middle, p, 0.0), axis=1)[:, None] <= top_p
        high = tl.where(fits, middle, high)
        low = tl.where(fits, low, middle)
    above = keys >= high                                      # kept whole
    mass_above = tl.sum(tl.where(above, p, 0.0), axis=1)[:, None]
    next_key = tl.max(tl.where(above, smallest, keys), axis=1)[:, None]
    tied = valid & (keys == next_key) & ~above
    mass = mass_above + tl.cumsum(tl.where(tied, p, 0.0), axis=1)
    keep = above | (tied & (mass <= top_p))
    first_max = (keys == tl.max(keys, axis=1)[:, None]) & valid
    first_max = first_max & (tl.cumsum(first_max.to(tl.int32), axis=1) == 1)
    keep = keep | (first_max & (tl.sum(keep.to(tl.int32), axis=1)[:, None] == 0))
    sharpened = tl.where(keep, x * tl.exp(lamda * x), -float('inf'))
    weights = tl.exp(sharpened - tl.max(sharpened, axis=1)[:, None])
    new_rows = weights / tl.sum(weights, axis=1)[:, None]
    tl.store(out_ptr + rows * size + offsets, new_rows.to(out_ptr.dtype.element_ty), mask=valid)
