"""fsa_seg/models/layout.py: padded rows seen with their padding, zero rows beyond a size, the
aligned row count of an operand (the rows the kernels write are tested with them,
tests/models/plugins/test_fsa_kernel.py)."""
import pytest
import torch

from fsa_seg.models.layout import padded_rows, with_aligned_row_count, with_padding, zero_padded


def test_an_operand_gets_zero_rows_up_to_a_multiple_of_8():
    """171 query embeddings become 176 rows, the last 5 zeros; a product with them has rows of
    176 entries whose first 171 are the product with the 171; 8 rows stay 8."""
    generator = torch.Generator().manual_seed(0)
    text = torch.randn(171, 12, generator=generator, dtype=torch.float64)
    aligned = with_aligned_row_count(text)
    assert aligned.shape == (176, 12) and torch.equal(aligned[:171], text)
    assert not aligned[171:].any()
    features = torch.randn(3, 12, generator=generator, dtype=torch.float64)
    # the same dot products, up to the BLAS's summation order for either width (12 terms of
    # size ~1: a few 1e-16)
    torch.testing.assert_close((features @ aligned.t())[:, :171], features @ text.t(), rtol=0,
                               atol=1e-13)
    assert with_aligned_row_count(torch.ones(8, 2)).shape == (8, 2)
    assert with_aligned_row_count(torch.ones(3, 2, 5)).shape == (8, 2, 5)


def test_with_padding_takes_rows_of_padded_rows_only():
    rows = padded_rows((2, 3, 5), torch.float16, torch.device('cpu'))
    assert with_padding(rows).shape == (2, 3, 8) and with_padding(rows).stride() == (24, 8, 1)
    with pytest.raises(ValueError, match='rows of padded_rows'):
        with_padding(torch.zeros(4))
    with pytest.raises(ValueError, match='rows of padded_rows'):
        with_padding(torch.zeros(4, 3).t())


def test_zero_padded_holds_zeros_in_the_rows_beyond_the_size():
    like = torch.ones(1, dtype=torch.float16)
    padded = zero_padded(like, (2, 6, 3), 4)
    assert padded.shape == (2, 6, 3) and padded.dtype == torch.float16
    assert torch.equal(padded[:, 4:], torch.zeros(2, 2, 3, dtype=torch.float16))
    assert zero_padded(like, (2, 4, 3), 4).shape == (2, 4, 3)
