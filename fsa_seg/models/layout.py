"""Memory layouts that GPU kernels prefer, shared by the segmentors and the plug-ins.

GEMM libraries pick their fastest kernels (on an H100 the sm90 ones) only for operands whose
rows start at multiples of 16 bytes; an N×N attention over N = 1764 tokens (DINO-B/8 at 336) has
rows of 3528 bytes in fp16. A tensor with padded rows keeps its shape and only its row stride
grows. Its padding is read only where its producer wrote zeros there (FSA's A_new): a product
A·B over N = 1764 then runs as one over 1768 entries, B given as many rows with zeros last,
which the aligned kernels take too (the contracted length must be a multiple of 8 in fp16).
"""
from typing import Sequence

import torch
from torch import Tensor

ROW_ALIGNMENT = 16  # bytes


def aligned_row_length(size: int, dtype: torch.dtype) -> int:
    """The row stride (in entries) of ``size`` entries of ``dtype`` rounded up to a multiple of
    ``ROW_ALIGNMENT`` bytes."""
    per_row = max(1, ROW_ALIGNMENT // dtype.itemsize)
    return -(-max(size, 1) // per_row) * per_row


def padded_rows(shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> Tensor:
    """An uninitialised tensor of ``shape`` whose rows (last dimension) start every multiple of
    ``ROW_ALIGNMENT`` bytes, the leading dimensions laid out as in a contiguous tensor."""
    *leading, size = shape
    wide = torch.empty((*leading, aligned_row_length(size, dtype)), dtype=dtype, device=device)
    return wide[..., :size]


def with_padding(rows: Tensor) -> Tensor:
    """``rows`` (…, n) made by :func:`padded_rows`, seen with their padding: (…, row stride)."""
    if rows.dim() < 2 or rows.stride(-1) != 1:
        raise ValueError('with_padding takes rows of padded_rows, with at least two dimensions')
    return rows.as_strided((*rows.shape[:-1], rows.stride(-2)), rows.stride())
