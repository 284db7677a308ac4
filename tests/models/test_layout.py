"""fsa_seg/models/layout.py: the aligned row count of an operand (the layouts of padded rows are
tested with the kernels that write them, tests/models/plugins/test_fsa_kernel.py)."""
import torch

from fsa_seg.models.layout import with_aligned_row_count


def test_an_operand_gets_zero_rows_up_to_a_multiple_of_8():
    """171 query embeddings become 176 rows, the last 5 zeros; a product with them has rows of
    176 entries whose first 171 are the product with the 171; 8 rows stay 8."""
    text = torch.randn(171, 12, dtype=torch.float64)
    aligned = with_aligned_row_count(text)
    assert aligned.shape == (176, 12) and torch.equal(aligned[:171], text)
    assert not aligned[171:].any()
    features = torch.randn(3, 12, dtype=torch.float64)
    torch.testing.assert_close((features @ aligned.t())[:, :171], features @ text.t(), rtol=0,
                               atol=1e-15)
    assert with_aligned_row_count(torch.ones(8, 2)).shape == (8, 2)
    assert with_aligned_row_count(torch.ones(3, 2, 5)).shape == (8, 2, 5)
