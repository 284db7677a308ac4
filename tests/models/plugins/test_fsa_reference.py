"""The official FSA formulation (fsa_reference.official_fsa): it reproduces the golden fixture, and
our FSA plug-in equals it on random problems; the benchmark CLI runs at tiny sizes."""
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fsa_seg.models.plugins import FSA
from fsa_seg.models.plugins.fsa_reference import official_fsa, official_prune_and_sharpen

from references import random_fsa_problem

REPO = Path(__file__).resolve().parents[3]


def hyper(golden):
    return dict(lamda=golden['lamda'], top_p=golden['top_p'],
                logit_scales=golden['logit_scales'])


# ---------------------------------------------------------------------------- golden fixture
def test_reference_reproduces_the_official_code_on_the_golden_fixture(golden, golden_logits_fn):
    with torch.no_grad():
        out = official_fsa(golden['attn'], golden['values'], golden_logits_fn, **hyper(golden))
    assert out.dtype == torch.float64 and out.shape == golden['attended'].shape
    assert (out - golden['attended']).abs().max() < 1e-12


def test_fixture_output_is_far_from_the_baseline(golden):
    """The parity above is meaningful: FSA moves ProxyCLIP's output by far more than 1e-12."""
    baseline = golden['attn'] @ golden['values']
    assert (baseline - golden['attended']).abs().max() > 0.03


@pytest.mark.parametrize('grad', [False, True], ids=['no_grad', 'grad'])
def test_fsa_reproduces_the_fixture_with_and_without_autograd(golden, golden_logits_fn, grad):
    """Both paths of the plug-in (buffer-reusing without autograd, functional with it)."""
    with torch.set_grad_enabled(grad):
        out = FSA(**hyper(golden))(golden['attn'], golden['values'], golden_logits_fn)
    assert (out - golden['attended']).abs().max() < 1e-12


# ---------------------------------------------------------------------------- random problems
@pytest.mark.parametrize('attention', ['per-head', 'shared', 'identity'])
@pytest.mark.parametrize('batch, heads, n, dim, queries', [
    (1, 4, 7, 8, 3),
    (2, 3, 50, 4, 12),
    (1, 12, 196, 8, 21),
    (2, 2, 64, 16, 1),   # a single query: q is one-hot, every KL is zero
])
def test_fsa_equals_the_reference_on_random_problems(attention, batch, heads, n, dim, queries):
    attn, values, logits_fn = random_fsa_problem(batch, heads, n, dim, queries, attention,
                                                 seed=n + queries)
    kwargs = dict(lamda=3.0, top_p=0.45, logit_scales=(20.0, 35.0))
    with torch.no_grad():
        expected = official_fsa(attn, values, logits_fn, **kwargs)
        out = FSA(**kwargs)(attn, values, logits_fn)
        given = FSA(**kwargs)(attn, values, logits_fn,
                              attended=values if attn is None else attn @ values)
    assert out.shape == expected.shape == values.shape
    assert (out - expected).abs().max() < 1e-10
    assert (given - expected).abs().max() < 1e-10


@pytest.mark.parametrize('attention', ['per-head', 'shared', 'identity'])
def test_fsa_in_many_uneven_row_blocks_equals_the_reference(monkeypatch, attention):
    """A_new made a block of rows at a time (7 rows of 50 per block here) changes nothing."""
    import fsa_seg.models.plugins.fsa as fsa_module
    monkeypatch.setattr(fsa_module, 'BLOCK_ELEMENTS', 7 * 50)
    attn, values, logits_fn = random_fsa_problem(2, 3, 50, 4, 12, attention, seed=3)
    kwargs = dict(lamda=3.0, top_p=0.45, logit_scales=(20.0, 35.0))
    with torch.no_grad():
        expected = official_fsa(attn, values, logits_fn, **kwargs)
        out = FSA(**kwargs)(attn, values, logits_fn)
    assert (out - expected).abs().max() < 1e-10


@pytest.mark.parametrize('lamda, top_p', [(2.3, 0.3), (4.5, 0.8), (3.0, 0.0)])
def test_fsa_equals_the_reference_for_other_hyper_parameters(lamda, top_p):
    attn, values, logits_fn = random_fsa_problem(1, 3, 40, 8, 10, 'per-head', seed=1)
    kwargs = dict(lamda=lamda, top_p=top_p, logit_scales=(15.0, 30.0))
    with torch.no_grad():
        expected = official_fsa(attn, values, logits_fn, **kwargs)
        out = FSA(**kwargs)(attn, values, logits_fn)
    assert (out - expected).abs().max() < 1e-10


def test_reference_identity_attention_is_the_explicit_identity_matrix():
    _, values, logits_fn = random_fsa_problem(1, 2, 20, 4, 6, 'identity')
    eye = torch.eye(20, dtype=values.dtype)[None, None]
    kwargs = dict(lamda=3.0, top_p=0.45, logit_scales=(20.0, 35.0))
    assert torch.allclose(official_fsa(None, values, logits_fn, **kwargs),
                          official_fsa(eye, values, logits_fn, **kwargs), atol=1e-14)


def test_fsa_pruning_with_equal_similarities_across_the_cut_follows_the_sort():
    """Rows whose equal values straddle the top-p cut are pruned in the sort's order, exactly as
    the functional (autograd) path and the official code do."""
    generator = torch.Generator().manual_seed(0)
    sim = (torch.rand(3, 40, 40, generator=generator, dtype=torch.float64) * 6).round() / 6 + 0.1
    fsa = FSA(lamda=3.0, top_p=0.45)
    with torch.no_grad():
        fast = fsa.prune_and_sharpen(sim)
    functional = fsa.prune_and_sharpen(sim.clone().requires_grad_()).detach()
    assert torch.equal(fast, functional)
    assert torch.equal(fast, official_prune_and_sharpen(sim, 3.0, 0.45))
    # the case is exercised: some row keeps only part of a group of equal values
    kept = fast > 0
    kept_values = torch.where(kept, sim, torch.inf).amin(-1, keepdim=True)
    assert ((sim == kept_values) & ~kept).any()


# ---------------------------------------------------------------------------- benchmark CLI
NUMBER = r'(\d+\.\d+)'


def test_benchmark_plugin_subcommand_at_tiny_sizes():
    result = subprocess.run(
        [sys.executable, str(REPO / 'tools' / 'analysis' / 'benchmark.py'), 'plugin',
         '--n', '16', '--q', '5', '--heads', '2', '--head-dim', '8', '--repeat', '2'],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for variant in ('ours', 'official'):  # median, min latency and extra peak memory
        assert re.search(rf'^{variant}\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}$', out, re.M), out
    assert re.search(rf'official / ours: latency {NUMBER}x', out), out
    assert re.search(r'extra peak memory (\d+\.\d+x|n/a)', out), out
    assert 'target' not in out  # the target is only judged at its sizes
