"""The official resampling rules, each against torch's interpolation called as the official code
calls it (see tests/models/vfm/test_official_pos_embed.py for the whole embeddings)."""
import copy
import pickle

import pytest
import torch
import torch.nn.functional as F

from fsa_seg.models.pos_embed import (
    DINO_RESAMPLING,
    DINOV2_REG_RESAMPLING,
    MAE_RESAMPLING,
    PosEmbedResampling,
    ResampledCache,
    needs_resampling,
)


def grid_of(tokens, grid):
    """(1, h·w, C) → (1, C, h, w)."""
    return tokens.reshape(1, *grid, -1).permute(0, 3, 1, 2)


def tokens_of(x):
    return x.permute(0, 2, 3, 1).reshape(1, -1, x.shape[1])


@pytest.mark.parametrize('grid', [(21, 21), (28, 28), (14, 21), (7, 10)])
def test_dino_rule_scales_by_n_plus_a_tenth_in_the_embeddings_dtype(grid):
    pos = torch.randn(1, 14 * 14, 6, dtype=torch.float64)
    out = DINO_RESAMPLING(pos, (14, 14), grid)
    expected = F.interpolate(grid_of(pos, (14, 14)), mode='bicubic',
                             scale_factor=((grid[0] + 0.1) / 14, (grid[1] + 0.1) / 14))
    assert out.dtype == torch.float64 and out.shape == (1, grid[0] * grid[1], 6)
    assert torch.equal(out, tokens_of(expected))


@pytest.mark.parametrize('grid', [(16, 16), (24, 24), (32, 32), (16, 24)])
def test_dinov2_rule_resizes_antialiased_in_float32(grid):
    pos = torch.randn(1, 37 * 37, 6, dtype=torch.float64)
    out = DINOV2_REG_RESAMPLING(pos, (37, 37), grid)
    expected = F.interpolate(grid_of(pos, (37, 37)).float(), size=grid, mode='bicubic',
                             antialias=True).double()
    assert out.dtype == torch.float64
    assert torch.equal(out, tokens_of(expected))


def test_mae_rule_resizes_without_antialias_in_float32():
    pos = torch.randn(1, 14 * 14, 6)
    out = MAE_RESAMPLING(pos, (14, 14), (21, 21))
    expected = F.interpolate(grid_of(pos, (14, 14)), size=(21, 21), mode='bicubic',
                             align_corners=False)
    assert torch.equal(out, tokens_of(expected))


def test_a_dtype_without_a_kernel_falls_back_to_float32():
    # antialiased bicubic has no half kernel on CPU: resampled in float32, returned in half
    rule = PosEmbedResampling(offset=0.0, antialias=True)
    pos = torch.randn(1, 8 * 8, 4).half()
    out = rule(pos, (8, 8), (5, 5))
    expected = F.interpolate(grid_of(pos, (8, 8)).float(), size=(5, 5), mode='bicubic',
                             antialias=True).half()
    assert out.dtype == torch.float16 and torch.equal(out, tokens_of(expected))


def test_leading_dimensions_are_kept():
    pos = torch.randn(9, 4, dtype=torch.float64)   # CLIP's (h0·w0, C) without a batch
    assert DINO_RESAMPLING(pos, (3, 3), (5, 4)).shape == (20, 4)


def test_resampling_is_needed_off_the_native_grid_or_for_a_non_square_input():
    assert not needs_resampling((14, 14), (14, 14), square_input=True)
    assert needs_resampling((14, 14), (14, 14), square_input=False)
    assert needs_resampling((14, 21), (14, 14), square_input=False)
    assert needs_resampling((21, 21), (14, 14), square_input=True)


# ---------------------------------------------------------------------------- ResampledCache
class Counting:
    """compute() for the cache: a fresh tensor from ``source`` (times 2), counted."""

    def __init__(self, source):
        self.source, self.calls = source, 0

    def __call__(self):
        self.calls += 1
        return self.source * 2


def test_cache_computes_once_per_key_while_the_source_is_unchanged():
    cache, source = ResampledCache(), torch.nn.Parameter(torch.randn(5, 3))
    compute = Counting(source)
    with torch.no_grad():
        first = cache(source, (2, 2), compute)
        assert cache(source, (2, 2), compute) is first and compute.calls == 1
        cache(source, (3, 3), compute)
        assert compute.calls == 2 and len(cache) == 2
    assert torch.equal(first, source.detach() * 2)


def test_an_in_place_change_a_new_tensor_or_a_move_recomputes():
    cache, source = ResampledCache(), torch.nn.Parameter(torch.randn(5, 3))
    compute = Counting(source)
    with torch.no_grad():
        cache(source, 'grid', compute)
        source.copy_(torch.ones(5, 3))                  # as load_state_dict does
        assert torch.equal(cache(source, 'grid', compute), torch.full((5, 3), 2.0))
        assert compute.calls == 2
        other = torch.nn.Parameter(torch.zeros(5, 3))   # same key, another tensor
        assert torch.equal(cache(other, 'grid', Counting(other)), torch.zeros(5, 3))
        module = torch.nn.Linear(3, 5)
        weight_compute = Counting(module.weight)
        cache(module.weight, 'w', weight_compute)
        module.double()                                 # .data swapped: another storage
        assert cache(module.weight, 'w', weight_compute).dtype == torch.float64
        assert weight_compute.calls == 2


def test_nothing_is_cached_while_autograd_records_through_the_source():
    cache, source = ResampledCache(), torch.nn.Parameter(torch.randn(5, 3))
    compute = Counting(source)
    with torch.enable_grad():
        cache(source, 'grid', compute).sum().backward()
        cache(source, 'grid', compute)
    assert compute.calls == 2 and len(cache) == 0
    assert torch.equal(source.grad, torch.full((5, 3), 2.0))


def test_only_the_most_recent_grids_are_kept_and_copies_start_empty():
    cache, source = ResampledCache(capacity=3), torch.randn(4)
    compute = Counting(source)
    for key in (1, 2, 3, 1, 4):  # 1 used again: 2 is the oldest when 4 comes
        cache(source, key, compute)
    assert compute.calls == 4 and len(cache) == 3
    cache(source, 1, compute)
    cache(source, 2, compute)
    assert compute.calls == 5
    assert len(copy.deepcopy(cache)) == 0 and len(pickle.loads(pickle.dumps(cache))) == 0
