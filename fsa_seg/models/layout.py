"""Memory layouts that GPU kernels prefer, shared by the segmentors and the plug-ins.

A tensor with padded rows keeps its shape; only its row stride grows to a multiple of 16 bytes
(an N×N attention over N = 1764 tokens, DINO-B/8 at 336, has rows of 3528 bytes in fp16). The
stride alone gives a GEMM nothing (measured on an H100 in fp16: 1764×1764·1764×1536 takes
66.6 µs with contiguous or with padded rows): its fast kernels want a contracted length that is
a multiple of 8. The padding supplies one where its producer wrote zeros there (FSA's A_new,
ProxyCLIP's proxy attention): A·B over N = 1764 then runs as one over 1768 entries, B given as
many rows with zeros last (16.5 µs). A padding is read by its producer, and by a consumer only
where the producer says it holds zeros: ProxyCLIP passes its attention so to a plug-in that
reads padding (:mod:`fsa_seg.models.plugins.base`), FSA's ensemble product A·(A_new·V) then
contracts over 1768 entries too (37.4 µs over 1764, 14.8 µs over 1768).
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


def zero_padded(like: Tensor, shape: Sequence[int], size: int) -> Tensor:
    """An uninitialised tensor like ``like`` of ``shape`` whose rows (dimension 1) from ``size``
    on are zeros: an operand, or the output, of a product over the aligned length, whose rows
    beyond N meet a padding of zeros."""
    out = like.new_empty(shape)
    if shape[1] > size:
        out[:, size:].zero_()
    return out


def with_aligned_row_count(x: Tensor) -> Tensor:
    """``x`` (n, …) with zero rows appended up to the aligned n of fp16 (a multiple of 8): the
    operand, such as the query embeddings, whose product with it (…, n) has aligned rows,
    which its fast GEMM kernels want on a GPU; the product's first n columns are the same."""
    size = x.shape[0]
    return torch.nn.functional.pad(x, (0, 0) * (x.dim() - 1)
                                   + (0, aligned_row_length(size, torch.float16) - size))


def with_padding(rows: Tensor) -> Tensor:
    """``rows`` (…, n) made by :func:`padded_rows`, seen with their padding: (…, row stride)."""
    if rows.dim() < 2 or rows.stride(-1) != 1:
        raise ValueError('with_padding takes rows of padded_rows, with at least two dimensions')
    return rows.as_strided((*rows.shape[:-1], rows.stride(-2)), rows.stride())
