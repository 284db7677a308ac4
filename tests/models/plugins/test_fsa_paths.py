"""FSA's three paths, CPU (numpy sort, host-side tie test), device (torch.sort, no host
synchronisation) and fused (one Triton kernel a block, in Triton's interpreter here), all forced
on CPU: each equals the official formulation (fsa_reference) and the golden fixture, keeps the
official code's choice among tied similarities (the fused one CUDA's choice), and the CUDA paths
read no tensor on the host (checked on fake CUDA tensors)."""
import importlib.util
import os

import pytest
import torch
import torch.nn.functional as F
from cuda_checks import HostDeviceCopies, host_syncs_raise, needs_cuda
from torch._subclasses.fake_tensor import FakeTensorMode

import fsa_seg.models.plugins.fsa as fsa_module
from fsa_seg.models.plugins import FSA
from fsa_seg.models.plugins.fsa_reference import official_fsa, official_prune_and_sharpen

from doubles import Kernels, RecordedProducts, record_launches
from references import linear_logits_fn, random_fsa_problem

fused_runs_here = pytest.mark.skipif(
    os.environ.get('TRITON_INTERPRET') != '1' or importlib.util.find_spec('triton') is None,
    reason="the fused kernel runs on CPU tensors only in Triton's interpreter (conftest.py sets "
           'it without a GPU; with one, the CUDA tests run the kernel)')
PATHS = ('cpu', 'device', pytest.param('fused', marks=fused_runs_here))
OTHER_PATH = {'cpu': 'device', 'device': 'cpu', 'fused': 'device'}
HYPER = dict(lamda=3.0, top_p=0.45, logit_scales=(20.0, 35.0))


def run(path, attn, values, logits_fn, **hyper):
    with torch.no_grad():
        return FSA(**(hyper or HYPER))._forward(attn, values, logits_fn, path=path)


def reference(attn, values, logits_fn, stable=False, **hyper):
    """The official formulation; ``stable``: ties in CUDA's sort order (the fused kernel's)."""
    with torch.no_grad():
        return official_fsa(attn, values, logits_fn, **(hyper or HYPER), stable=stable)


def ties_straddle_the_cut(new_attn, sim):
    """Some row keeps only part of a group of equal similarities (the tie rule decides)."""
    kept = new_attn > 0
    smallest_kept = torch.where(kept, sim, torch.inf).amin(-1, keepdim=True)
    return bool(((sim == smallest_kept) & ~kept).any())


# ---------------------------------------------------------------------------- exactness
@pytest.mark.parametrize('path', PATHS)
def test_each_path_reproduces_the_golden_fixture(golden, golden_logits_fn, path):
    hyper = dict(lamda=golden['lamda'], top_p=golden['top_p'], logit_scales=golden['logit_scales'])
    out = run(path, golden['attn'], golden['values'], golden_logits_fn, **hyper)
    assert out.dtype == torch.float64
    assert (out - golden['attended']).abs().max() < 1e-12


@pytest.mark.parametrize('path', PATHS)
@pytest.mark.parametrize('attention', ['per-head', 'shared', 'identity'])
@pytest.mark.parametrize('batch, heads, n, dim, queries', [
    (1, 4, 7, 8, 3),
    (2, 3, 50, 4, 12),
    (1, 12, 196, 8, 21),
])
def test_each_path_equals_the_reference(path, attention, batch, heads, n, dim, queries):
    problem = random_fsa_problem(batch, heads, n, dim, queries, attention, seed=n + queries)
    assert (run(path, *problem) - reference(*problem)).abs().max() < 1e-12


@pytest.mark.parametrize('path', PATHS)
@pytest.mark.parametrize('attention', ['shared', 'per-head'])
def test_values_laid_out_token_by_token_give_the_reference(path, attention):
    """Values as ProxyCLIP lays them out (the heads of merged rows, wider than the tokens: a
    view of its zero-padded buffer), whose uniform branch's mean FSA makes as a product."""
    attn, values, logits_fn = random_fsa_problem(2, 3, 50, 4, 12, attention, seed=4)
    merged = torch.zeros(2, 52, 3 * 4, dtype=values.dtype)
    merged[:, :50] = values.transpose(1, 2).flatten(2)
    token_major = merged[:, :50].unflatten(-1, (3, 4)).transpose(1, 2)
    assert torch.equal(token_major, values) and token_major.stride(2) == 12
    expected = reference(attn, values, logits_fn)
    assert (run(path, attn, token_major, logits_fn) - expected).abs().max() < 1e-12


@pytest.mark.parametrize('path', PATHS[1:])
@pytest.mark.parametrize('lamda, top_p', [(2.3, 0.3), (4.5, 0.8), (3.0, 0.0), (3.0, 2.0)])
def test_cuda_paths_equal_the_reference_for_other_hyper_parameters(path, lamda, top_p):
    """Including top_p = 0 (each row keeps its maximum only) and top_p > 1 (everything)."""
    problem = random_fsa_problem(1, 3, 40, 8, 10, 'per-head', seed=1)
    hyper = dict(lamda=lamda, top_p=top_p, logit_scales=(15.0, 30.0))
    assert (run(path, *problem, **hyper) - reference(*problem, **hyper)).abs().max() < 1e-12


@pytest.mark.parametrize('path', PATHS[1:])
@pytest.mark.parametrize('attention', ['per-head', 'shared', 'identity'])
def test_cuda_paths_in_uneven_row_blocks_equal_the_reference(monkeypatch, path, attention):
    """A batch of 2 × 50 rows under a budget of 2 × 7 × 50 entries: 8 blocks of 7 rows, the last
    of 1; the block boundaries change nothing."""
    monkeypatch.setattr(fsa_module, 'DEVICE_BLOCK_ELEMENTS', 2 * 7 * 50)
    assert [(b.start, b.stop) for b in fsa_module._row_blocks(2, 50, 'device')] == [
        (0, 7), (7, 14), (14, 21), (21, 28), (28, 35), (35, 42), (42, 49), (49, 50)]
    problem = random_fsa_problem(2, 3, 50, 4, 12, attention, seed=3)
    assert (run(path, *problem) - reference(*problem)).abs().max() < 1e-12


@fused_runs_here
@pytest.mark.parametrize('attention', ['per-head', 'shared', 'identity'])
def test_fused_path_beyond_the_queries_of_its_kl_kernel_equals_the_reference(monkeypatch,
                                                                           attention):
    """More queries than the KL terms' kernel takes: the KL terms made by torch, their KL rows
    pruned by the fused kernel."""
    def refused(*args):
        raise AssertionError('the KL terms kernel ran')
    monkeypatch.setattr(fsa_module, 'MAX_FUSED_QUERIES', 11)
    monkeypatch.setattr(fsa_module, 'fused_kl_terms', refused)
    problem = random_fsa_problem(2, 3, 50, 4, 12, attention, seed=4)
    assert (run('fused', *problem) - reference(*problem, stable=True)).abs().max() < 1e-12


@fused_runs_here
def test_a_configured_pruning_launch_reaches_the_kernel_and_keeps_the_result(monkeypatch):
    """``pruning_launch`` (2 rows and 4 warps a program, the cut's interval cut in 8 parts a
    step) is how the pruning kernel is launched; in fp32 the rows equal the default launch's
    (the interpreter sums each row alike) and the reference's."""
    launches = record_launches(monkeypatch, 'prune_and_sharpen_rows')
    attn, values, logits_fn = random_fsa_problem(1, 3, 50, 4, 12, 'shared', seed=5)
    attn, values = attn.float(), values.float()
    with torch.no_grad():
        configured = FSA(**HYPER, pruning_launch=dict(rows=2, warps=4, parts=8))._forward(
            attn, values, logits_fn, path='fused')
        assert [(grid, kwargs['ROWS'], kwargs['num_warps'], kwargs['SPLIT_BITS'])
                for grid, kwargs in launches] == [((25,), 2, 4, 3)]  # 50 rows, 2 a program
        default = FSA(**HYPER)._forward(attn, values, logits_fn, path='fused')
    assert torch.equal(configured, default)
    expected = reference(attn.double(), values.double(), logits_fn, stable=True)
    assert (configured.double() - expected).abs().max() < 1e-5


@pytest.mark.parametrize('attention', ['per-head', 'shared'])
@pytest.mark.parametrize('needs_grad', ['values', 'attn', 'both'])
def test_gradients_equal_the_references(attention, needs_grad):
    """Autograd through FSA (its differentiable chain, whatever the device) gives the official
    formulation's gradients, for the values, the baseline's attention, or both."""
    attn, values, logits_fn = random_fsa_problem(1, 3, 20, 4, 6, attention, seed=6)
    weights = torch.randn(values.shape, generator=torch.Generator().manual_seed(7),
                          dtype=values.dtype)

    def gradients(function):
        inputs = [x.detach().clone().requires_grad_(needs_grad in (name, 'both'))
                  for name, x in (('attn', attn), ('values', values))]
        (function(*inputs, logits_fn) * weights).sum().backward()
        return [x.grad for x in inputs]
    ours = gradients(FSA(**HYPER))
    official = gradients(lambda a, v, f: official_fsa(a, v, f, **HYPER))
    for mine, expected in zip(ours, official):
        assert (mine is None) == (expected is None)
        if expected is not None:
            assert (mine - expected).abs().max() < 1e-10


@fused_runs_here
@pytest.mark.parametrize('kl_kernel', [True, False], ids=['kl_kernel', 'torch_kl'])
@pytest.mark.parametrize('dtype, padded', [(torch.float32, 52), (torch.float16, 56)])
def test_the_fused_product_runs_over_the_aligned_length_and_equals_the_narrow_one(
        monkeypatch, dtype, padded, kl_kernel):
    """N = 50: the fused path's operand [V, A·V + V] has 52 rows in fp32 (56 in fp16), zeros
    after the 50th, and A_new·operand is the product over that length with A_new's zero padding
    (on a GPU the aligned kernels take it); the result equals the product of the N-wide A_new
    with the N-row operand (fp32, fp16 to its rounding) and the reference. Also where torch
    makes the KL terms (more queries than their kernel takes) and the kernel prunes KL rows."""
    if not kl_kernel:
        monkeypatch.setattr(fsa_module, 'MAX_FUSED_QUERIES', 11)
    attn, values, logits_fn = random_fsa_problem(1, 3, 50, 4, 12, 'shared', seed=8,
                                                 dtype=torch.float32)
    attn, values = attn.to(dtype), values.to(dtype)
    fsa = FSA(**HYPER)
    with torch.no_grad():
        operand, tokens = fsa._operand_and_tokens(attn @ values, values, 'fused')
    assert operand.shape == (1, padded, 24) and tokens.shape == (1, 51, 12)
    assert torch.equal(tokens[:, :50], (attn @ values).transpose(1, 2).flatten(2))
    assert torch.equal(operand[:, 50:], torch.zeros(1, padded - 50, 24, dtype=dtype))
    assert torch.equal(operand[:, :50].unflatten(-1, (2, 3, 4)), torch.stack(
        [values.transpose(1, 2), (attn @ values + values).transpose(1, 2)], dim=2))
    products = []
    real_matmul = torch.matmul
    monkeypatch.setattr(fsa_module.torch, 'matmul', lambda a, b, **kw: (
        products.append((a.shape, b.shape)), real_matmul(a, b, **kw))[1])
    out = run('fused', attn, values, logits_fn)
    assert products == [((1, 50, padded), (1, padded, 24))]
    monkeypatch.setattr(fsa_module.torch, 'matmul', real_matmul)
    narrow = run('device', attn, values, logits_fn)
    expected = reference(attn.double(), values.double(), logits_fn)
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    assert (out.double() - expected).abs().max() < tolerance
    assert (out.double() - narrow.double()).abs().max() < tolerance


def with_zero_padding(attn, width):
    """``attn`` (…, N, N) seen with zero row padding to ``width`` columns, (…, N, width)."""
    padded = attn.new_full((*attn.shape[:-1], width), float('nan'))
    padded[..., :attn.shape[-1]] = attn
    padded[..., attn.shape[-1]:] = 0
    return padded


@pytest.mark.parametrize('path', PATHS)
@pytest.mark.parametrize('attention', ['per-head', 'shared'])
@pytest.mark.parametrize('needs_grad', [False, True], ids=['no_grad', 'grad'])
def test_an_attention_with_zero_padding_gives_the_reference_output(path, attention, needs_grad):
    """A segmentor's padded attention (N = 50 tokens, rows of 56 with zeros beyond 50, what a
    plug-in that ``reads_padding`` gets): the ensemble product contracts over 56 rows, A_new·V
    given 56 rows, zeros beyond 50; the output and its gradient are the reference's on the
    unpadded attention."""
    attn, values, logits_fn = random_fsa_problem(2, 3, 50, 4, 12, attention, seed=11)
    padded = with_zero_padding(attn, 56)
    outputs = []
    for given, with_products in ((padded, True), (attn, False)):
        leaf = values.clone().requires_grad_(needs_grad)
        with torch.set_grad_enabled(needs_grad), RecordedProducts() as products:
            out = FSA(**HYPER)._forward(given, leaf, logits_fn, path=path)
        if with_products:
            assert (((2, 50, 56), (2, 56, 12)) if attention == 'shared' else
                    ((2, 3, 50, 56), (2, 3, 56, 4))) in products.shapes
        grad = torch.autograd.grad(out.square().sum(), leaf)[0] if needs_grad else None
        outputs.append((out.detach(), grad))
    assert (outputs[0][0] - reference(attn, values, logits_fn)).abs().max() < 1e-12
    if needs_grad:
        assert (outputs[0][1] - outputs[1][1]).abs().max() < 1e-12


@fused_runs_here
@pytest.mark.parametrize('dtype, operands', [(torch.float16, ((1, 50, 48), torch.float16)),
                                             (torch.bfloat16, ((1, 50, 48), torch.float16)),
                                             (torch.float32, ((1, 50, 12), torch.float32))])
def test_half_precision_models_take_the_kl_product_from_fp16_halves(monkeypatch, dtype,
                                                                    operands):
    """The fused path of an fp16 or bf16 model multiplies the fp16 halves of q and log q
    (3 × 16 entries for Q = 12); fp32 work keeps its fp32 product. Either equals the reference
    on the same inputs within the model's precision."""
    seen = []
    real = fsa_module.kl_dot_products
    monkeypatch.setattr(fsa_module, 'kl_dot_products', lambda q, log_q_t: (
        seen.append((tuple(q.shape), q.dtype)), real(q, log_q_t))[1])
    attn, values, logits_fn = random_fsa_problem(1, 3, 50, 4, 12, 'shared', seed=12,
                                                 dtype=torch.float32)
    attn, values = attn.to(dtype), values.to(dtype)
    out = run('fused', attn, values, logits_fn)
    assert seen == [operands]
    expected = reference(attn.double(), values.double(), logits_fn)
    tolerance = {torch.float32: 1e-5, torch.float16: 2e-2, torch.bfloat16: 1e-1}[dtype]
    assert (out.double() - expected).abs().max() < tolerance


@pytest.mark.parametrize('dtype, halves', [(torch.float16, True), (torch.bfloat16, True),
                                           (torch.float32, False), (torch.float64, False)])
def test_only_half_precision_models_make_the_kl_product_from_halves(dtype, halves):
    """The rule the fused path follows (above) and the kernel benchmark times by."""
    assert fsa_module.kl_terms_in_halves(dtype) is halves


@fused_runs_here
def test_with_a_head_that_records_grad_the_fused_path_applies_a_new_to_the_n_rows():
    """Values without grad (a padded operand) but a head with grad: the similarities record
    grad, so A_new is made by autograd, N wide, and meets the operand's first N rows."""
    attn, values, _ = random_fsa_problem(1, 2, 50, 4, 6, 'shared', seed=9)
    generator = torch.Generator().manual_seed(9)
    head = torch.randn(8, 8, generator=generator, dtype=torch.float64).requires_grad_(True)
    text = F.normalize(torch.randn(6, 8, generator=generator, dtype=torch.float64), dim=-1)
    out = FSA(**HYPER)._forward(attn, values, linear_logits_fn(head, text), path='fused')
    out.sum().backward()
    with torch.no_grad():
        expected = reference(attn, values, linear_logits_fn(head, text))
    assert (out - expected).abs().max() < 1e-12 and head.grad is not None


def test_device_row_blocks_follow_the_shapes_only():
    """2^23 entries at most: N = 1764 (DINO-B/8 at 336) whole, in a batch of 2 too; N = 4096
    (SAM) in 2 × 2048 rows; a batch of 4 at N = 1764 in 2 × 882 rows. The CPU path keeps its
    2^19-entry blocks."""
    def spans(batch, n, path):
        return [(b.start, min(b.stop, n)) for b in fsa_module._row_blocks(batch, n, path)]
    assert spans(1, 1764, 'device') == [(0, 1764)]
    assert spans(2, 1764, 'device') == [(0, 1764)]
    assert spans(1, 4096, 'device') == [(0, 2048), (2048, 4096)]
    assert spans(4, 1764, 'device') == [(0, 882), (882, 1764)]
    assert spans(1, 1764, 'cpu')[:2] == [(0, 297), (297, 594)] and len(spans(1, 1764, 'cpu')) == 6


def test_forward_picks_the_path_by_device_and_rejects_unknown_paths():
    problem = random_fsa_problem(1, 2, 30, 4, 5, 'shared')
    fsa = FSA(**HYPER)
    with torch.no_grad():
        assert torch.equal(fsa(*problem), fsa._forward(*problem, path='cpu'))
    with pytest.raises(ValueError, match='path must be one of'):
        fsa._forward(*problem, path='gpu')


def test_on_cuda_the_fused_kernel_is_picked_where_it_can_run(fused_kernel_support):
    """A GPU Triton compiles for: fused up to N = 4096, the torch.sort chain above it, on other
    GPUs or without Triton, or with fused_pruning=False."""
    with FakeTensorMode():
        values = {n: torch.empty(1, 2, n, 4, device='cuda') for n in (1764, 4096, 4097)}
    fsa, unfused = FSA(**HYPER), FSA(**HYPER, fused_pruning=False)
    assert [fsa._path_for(v, -2) for v in values.values()] == ['fused', 'fused', 'device']
    assert unfused._path_for(values[1764], -2) == 'device'
    assert fsa._path_for(torch.empty(1, 2, 30, 4), -2) == 'cpu'
    fused_kernel_support(False)
    assert fsa._path_for(values[1764], -2) == 'device'


# ---------------------------------------------------------------------------- ties
@pytest.mark.parametrize('path', PATHS)
def test_one_query_vocabulary_keeps_what_the_official_code_keeps(path):
    """One query: q ≡ 1, every KL is 0, every similarity 1; each row keeps ⌊0.45 · 50⌋ = 22 of 50
    equal entries, and the official code's sort decides which (on CUDA: the first 22, as the
    fused kernel keeps)."""
    problem = random_fsa_problem(1, 2, 50, 4, 1, 'shared', seed=5)
    fsa = FSA(**HYPER)
    attn, values, logits_fn = problem
    with torch.no_grad():
        sim = fsa.patch_similarity(fsa._isolated_logits(attn @ values, values, logits_fn))
        new_attn = fsa._prune_and_sharpen(sim.clone(), False, path)
    assert torch.equal(sim, torch.ones_like(sim))
    assert torch.equal((new_attn > 0).sum(-1), torch.full((1, 50), 22))
    if path == 'fused':
        assert torch.equal(new_attn[0] > 0, (torch.arange(50) < 22).expand(50, 50))
    out = run(path, *problem)
    assert (out - reference(*problem, stable=path == 'fused')).abs().max() < 1e-12
    if path != 'fused':
        assert (out - run(OTHER_PATH[path], *problem)).abs().max() < 1e-12


def padded_problem(seed=0):
    """A crop whose last 30 of 48 patches are padding: equal values and equal proxy features, so
    equal ProxyCLIP attention rows and equal q rows; each row's similarities to them tie."""
    generator = torch.Generator().manual_seed(seed)
    n, pad, heads, dim = 48, 30, 2, 4
    values = torch.randn(1, heads, n, dim, generator=generator, dtype=torch.float64)
    values[..., n - pad:, :] = values[..., n - pad:n - pad + 1, :]
    feats = torch.randn(1, n, 16, generator=generator, dtype=torch.float64)
    feats[:, n - pad:] = feats[:, n - pad:n - pad + 1]
    feats = F.normalize(feats, dim=-1)
    attn = (3 * feats @ feats.transpose(1, 2)).softmax(-1).unsqueeze(1)
    head = torch.randn(heads * dim, 8, generator=generator, dtype=torch.float64)
    text = F.normalize(torch.randn(6, 8, generator=generator, dtype=torch.float64), dim=-1)
    return attn, values, linear_logits_fn(head, text)


@pytest.mark.parametrize('path', PATHS)
def test_identical_padded_patches_keep_what_the_official_code_keeps(path):
    """Tied padded patches straddle the cut; since they are exact duplicates (values and attention
    rows), which of them are kept does not change the output."""
    problem = padded_problem()
    attn, values, logits_fn = problem
    fsa = FSA(**HYPER)
    with torch.no_grad():
        sim = fsa.patch_similarity(fsa._isolated_logits(attn @ values, values, logits_fn))
        new_attn = fsa._prune_and_sharpen(sim.clone(), False, path)
    assert ties_straddle_the_cut(new_attn, sim)  # the case is exercised
    out = run(path, *problem)
    assert (out - reference(*problem)).abs().max() < 1e-12
    assert (out - run(OTHER_PATH[path], *problem)).abs().max() < 1e-12


@pytest.mark.parametrize('path', PATHS)
def test_pruning_of_straddling_ties_equals_the_official_selection(path):
    """Similarities rounded to sevenths: many rows keep only part of a group of equal values. The
    selection is the official code's (sorted, cumulative mass, scattered back: the autograd path
    computes exactly that) on the device it runs on: CPU's sort order for the CPU and device
    paths forced here, CUDA's (equal values by index) for the fused kernel. The fused kernel
    sums in its own order, so its values are equal to rounding."""
    generator = torch.Generator().manual_seed(0)
    sim = (torch.rand(3, 40, 40, generator=generator, dtype=torch.float64) * 6).round() / 6 + 0.1
    fsa = FSA(**HYPER)
    with torch.no_grad():
        pruned = fsa._prune_and_sharpen(sim.clone(), False, path)
    official = official_prune_and_sharpen(sim.clone(), HYPER['lamda'], HYPER['top_p'],
                                          stable=path == 'fused')
    assert ties_straddle_the_cut(pruned, sim)
    if path == 'fused':
        assert torch.equal(pruned > 0, official > 0)
        assert not torch.equal(official > 0, official_prune_and_sharpen(
            sim.clone(), HYPER['lamda'], HYPER['top_p']) > 0)  # CPU's order would differ
        assert (pruned - official).abs().max() < 1e-15
    else:
        assert torch.equal(pruned, official)


@pytest.mark.parametrize('dtype', [torch.float32, torch.float16, torch.bfloat16],
                         ids=['fp32', 'fp16', 'bf16'])
def test_cpu_pruning_equals_the_official_rows_bit_for_bit_in_lower_precisions(dtype):
    """The CPU path drops entries by adding the lowest float where its float mask is 1 instead of
    filling −inf; the softmax's exp makes 0 of both, so every row, straddling ties included,
    equals the official one bit for bit in each precision."""
    generator = torch.Generator().manual_seed(1)
    sim = ((torch.rand(3, 40, 40, generator=generator) * 6).round() / 6 + 0.1).to(dtype)
    with torch.no_grad():
        pruned = FSA(**HYPER)._prune_and_sharpen(sim.clone(), False, 'cpu')
    official = official_prune_and_sharpen(sim.clone(), HYPER['lamda'], HYPER['top_p'])
    assert ties_straddle_the_cut(pruned, sim)
    assert pruned.dtype == dtype and torch.equal(pruned, official)


# ---------------------------------------------------------------------------- no host sync
def cuda_problem(batch=1, heads=12, n=1764, dim=64, queries=171, attention='shared',
                 dtype=torch.float16):
    """An FSA input of real sizes on CUDA. Under FakeTensorMode these are fake CUDA tensors
    (shapes, no data): any read of a value on the host (.item(), bool(), .nonzero(), .tolist(),
    numpy) raises."""
    values = torch.randn(batch, heads, n, dim, device='cuda', dtype=dtype)
    attn = None if attention == 'identity' else torch.rand(
        batch, heads if attention == 'per-head' else 1, n, n, device='cuda', dtype=dtype)
    head = torch.randn(heads * dim, 512, device='cuda', dtype=dtype)
    text = torch.randn(queries, 512, device='cuda', dtype=dtype)
    return attn, values, linear_logits_fn(head, text)


@pytest.mark.parametrize('fused', [True, False], ids=['fused', 'torch_sort'])
@pytest.mark.parametrize('grad', [False, True], ids=['no_grad', 'grad'])
@pytest.mark.parametrize('attention', ['per-head', 'shared', 'identity'])
def test_forward_on_cuda_makes_no_host_synchronisation(fused_kernel_support, attention, grad,
                                                       fused):
    """By construction: FSA.forward on fake CUDA tensors of real sizes (N = 1764, Q = 171, fp16)
    takes a CUDA path (the fused kernel's op has a shape-only fake), branches on no value and
    copies nothing to the host."""
    fsa = FSA(**HYPER, fused_pruning=fused)
    with FakeTensorMode(), HostDeviceCopies() as copies, torch.set_grad_enabled(grad):
        attn, values, logits_fn = cuda_problem(attention=attention)
        assert fsa._path_for(values, -2) == ('fused' if fused else 'device')
        out = fsa(attn, values.requires_grad_(grad), logits_fn)
        new_attn = fsa.feedback_attention(values, values, logits_fn)
    assert out.device.type == 'cuda' and out.dtype == torch.float16
    assert out.shape == values.shape and new_attn.shape == (1, 1, 1764, 1764)
    assert copies.found == []


@pytest.mark.parametrize('padded', [False, True], ids=['attention', 'padded_attention'])
@pytest.mark.parametrize('token_major', [False, True], ids=['head_major', 'token_major'])
def test_the_fused_path_launches_only_what_its_formula_needs(fused_kernel_support, padded,
                                                             token_major):
    """On CUDA (fake tensors, N = 1764, Q = 171, fp16, ProxyCLIP's shared attention, A·V given):
    one kernel writes [V, A·V + V] (the operand of one product, zeros in its 4 padding rows) and
    the attention branch's tokens (A·V), V's mean is written in place after them (the head
    merge of ``logits_fn`` is a view),
    ``logits_fn``'s own three kernels of its normalise and two products, the KL terms in one
    kernel, q·log qᵀ, the pruning, A_new·operand and the ensemble product with its division by
    3: nothing else (no copy, no broadcast input of the KL product, no division). With
    ProxyCLIP's padded attention (1768 columns, zeros beyond 1764), one kernel more: the zeros
    of A_new·V's 4 rows beyond N, over which the ensemble product then contracts. Values laid
    out token by token (ProxyCLIP's: the heads side by side) have their mean made as a product
    with a vector of ones (a fill, then a GEMV), where a reduction over the tokens runs on few
    SMs."""
    fsa = FSA(**HYPER)
    with FakeTensorMode():
        attn, values, logits_fn = cuda_problem()
        if token_major:
            values = values.transpose(1, 2).contiguous().transpose(1, 2)
        if padded:
            attn = torch.empty(1, 1, 1764, 1768, device='cuda', dtype=torch.float16)
        attended = (attn[:, 0, :, :1764] @ values.transpose(1, 2).flatten(2)).unflatten(
            -1, (12, 64))
        attended = attended.transpose(1, 2)
        with torch.no_grad(), Kernels() as kernels:
            fsa(attn, values, logits_fn, attended=attended)
    mean = ['new_ones', 'baddbmm_'] if token_major else ['mean']
    assert kernels.names == [
        'fsa_seg.operand_and_tokens', *mean,                       # operand, both branches' tokens
        'mm', 'linalg_vector_norm', 'clamp_min', 'div', 'mm',      # logits_fn
        'fsa_seg.kl_terms', *(['zero_'] if padded else []),
        'bmm', 'fsa_seg.prune_and_sharpen', 'bmm', 'baddbmm']


def test_the_host_sync_check_catches_the_cpu_path():
    """The check above bites: the CPU path's tie test reads a value on the host."""
    from torch._subclasses.fake_tensor import DataDependentOutputException
    with FakeTensorMode(), torch.no_grad():
        problem = cuda_problem(n=64, queries=5)
        with pytest.raises(DataDependentOutputException):
            FSA(**HYPER)._forward(*problem, path='cpu')


# ---------------------------------------------------------------------------- precision
# fp16/bf16 against fp32 on the same problem (values ~ N(0, 1), N = 196, Q = 21): measured
# max |Δ| 0.010–0.015 (fp16) and 0.09–0.11 (bf16), mean |Δ| 1e-3 (fp16) and 1e-2 (bf16); the
# largest ones where the rounding moves the top-p cut of a row by one entry.
HALF_TOLERANCE = {torch.float16: dict(max=0.05, mean=3e-3),
                  torch.bfloat16: dict(max=0.3, mean=3e-2)}


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16], ids=['fp16', 'bf16'])
@pytest.mark.parametrize('path', PATHS)
def test_half_precision_agrees_with_fp32_within_the_stated_tolerance(path, dtype):
    attn, values, logits_fn = random_fsa_problem(1, 3, 196, 8, 21, 'shared', seed=1,
                                                 dtype=torch.float32)
    expected = run(path, attn, values, logits_fn)
    out = run(path, attn.to(dtype), values.to(dtype), logits_fn)
    assert out.dtype == dtype and torch.isfinite(out).all()
    error = (out.float() - expected).abs()
    assert error.max() < HALF_TOLERANCE[dtype]['max']
    assert error.mean() < HALF_TOLERANCE[dtype]['mean']


# ---------------------------------------------------------------------------- on a real GPU
def on_cuda(attn, values, head_and_text):
    head, text = head_and_text
    return (None if attn is None else attn.cuda(), values.cuda(),
            linear_logits_fn(head.cuda(), text.cuda()))


@needs_cuda
@pytest.mark.parametrize('attention', ['per-head', 'shared'])
def test_on_cuda_fsa_equals_the_reference_at_real_sizes_in_fp64(attention):
    """The path CUDA picks, N = 1764, Q = 171, 12 heads of 64: the CPU reference to 1e-12."""
    generator = torch.Generator().manual_seed(5)
    attn, values, _ = random_fsa_problem(1, 12, 1764, 64, 171, attention, seed=3)
    head_and_text = (torch.randn(768, 8, generator=generator, dtype=torch.float64),
                     F.normalize(torch.randn(171, 8, generator=generator, dtype=torch.float64),
                                 dim=-1))
    expected = reference(attn, values, linear_logits_fn(*head_and_text))
    with torch.no_grad():
        out = FSA(**HYPER)(*on_cuda(attn, values, head_and_text))
    assert out.device.type == 'cuda'
    assert (out.cpu() - expected).abs().max() < 1e-12


@needs_cuda
def test_on_cuda_the_kl_product_of_fp16_halves_is_near_fp32s():
    """N = 1764, Q = 171 from fp16 similarities: q·log qᵀ from the fp16 halves on tensor cores
    (fp32 sums) is within 1e-4 of the fp64 product of the kernel's own q and log q, below the
    7.9e-5 that fp16 similarities put into the KL. Measured on an H100: 3.4e-5 (the kernel
    benchmark's rows 5.3e-5, fp32's own product 1.1e-5); the CPU's exact emulation 1.0e-5:
    tensor cores' fp32 sums round less closely."""
    from fsa_seg.models.plugins.fsa_kernel import fused_kl_terms, kl_dot_products
    assert FSA(**HYPER)._path_for(torch.empty(1, 1, 1764, 1, device='cuda'), -2) == 'fused'
    generator = torch.Generator().manual_seed(13)
    branches = (torch.rand(1, 1765, 171, generator=generator) * 0.6 - 0.3).half().cuda()
    with torch.no_grad():
        q, log_q, _ = fused_kl_terms(branches, HYPER['logit_scales'], 1e-10)
        lhs, rhs, _ = fused_kl_terms(branches, HYPER['logit_scales'], 1e-10, split=True)
        # as FSA makes it: q's 1764 rows against log q's 1768 (zeros beyond 1764)
        dots = kl_dot_products(lhs[:, :1764], rhs.transpose(-1, -2))
    assert lhs.shape == (1, 1768, 528) and dots.shape == (1, 1764, 1768)
    assert not dots[..., 1764:].any()
    dots = dots[..., :1764]
    expected = q.double() @ log_q.double().transpose(-1, -2)
    assert dots.dtype == torch.float32
    assert (dots.double() - expected).abs().max() < 1e-4


@needs_cuda
@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16, torch.float32],
                         ids=['fp16', 'bf16', 'fp32'])
def test_on_cuda_the_operand_kernel_writes_torchs_copies_and_sum_bit_for_bit(dtype):
    """ProxyCLIP's layout at N = 1764, 12 heads of 64 (values a view of 1768 token rows, A·V a
    product's output): [V, A·V + V] with zeros in its padding rows, and the branch tokens A·V,
    equal torch's copies and sum bit for bit, bf16 included (rounded to nearest on a GPU)."""
    from fsa_seg.models.plugins.fsa_kernel import fused_operand_and_tokens
    generator = torch.Generator().manual_seed(6)
    merged = torch.randn(2, 1768, 768, generator=generator).to('cuda', dtype)
    attended = (torch.randn(2, 1764, 768, generator=generator) * 3).to('cuda', dtype)
    values = merged[:, :1764].unflatten(-1, (12, 64)).transpose(1, 2)
    attended = attended.unflatten(-1, (12, 64)).transpose(1, 2)
    operand, tokens = fused_operand_and_tokens(values, attended)
    rows = 1768 if dtype != torch.float32 else 1764
    assert operand.shape == (2, rows, 1536) and tokens.shape == (2, 1765, 768)
    assert torch.equal(operand[:, :1764], torch.cat(
        [merged[:, :1764], (attended + values).transpose(1, 2).flatten(2)], dim=-1))
    assert not operand[:, 1764:].any()
    assert torch.equal(tokens[:, :1764], attended.transpose(1, 2).flatten(2))


@needs_cuda
def test_on_cuda_fsa_reproduces_the_golden_fixture(golden, golden_logits_fn):
    hyper = dict(lamda=golden['lamda'], top_p=golden['top_p'], logit_scales=golden['logit_scales'])
    attn, values = golden['attn'].cuda(), golden['values'].cuda()
    with torch.no_grad():
        out = FSA(**hyper)(attn, values, lambda o: golden_logits_fn(o.cpu()).cuda())
    assert (out.cpu() - golden['attended']).abs().max() < 1e-12


@needs_cuda
@pytest.mark.parametrize('fused', [True, False], ids=['fused', 'torch_sort'])
@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16, torch.float32],
                         ids=['fp16', 'bf16', 'fp32'])
@pytest.mark.parametrize('attention', ['per-head', 'shared', 'identity'])
def test_on_cuda_fsa_never_synchronises_with_the_host(attention, dtype, fused):
    """CUDA's own check (sync debug mode 'error') over a whole forward at real sizes."""
    problem = cuda_problem(attention=attention, dtype=dtype)
    fsa = FSA(**HYPER, fused_pruning=fused)
    fsa(*problem)  # the first call compiles the kernel
    with host_syncs_raise(), torch.no_grad():
        out = fsa(*problem)
    assert out.dtype == dtype and bool(torch.isfinite(out).all())


@needs_cuda
@pytest.mark.parametrize('n', [1764, 4096])
def test_on_cuda_the_fused_kernel_keeps_the_official_selection_in_fp32(n):
    """Real sizes in fp32: the fused kernel against the official pruning on the same CUDA rows
    (256 rows of KL divergences between random query distributions). Its sums run in another
    order, so a row's cut may move by one entry where its cumulative mass lies within rounding
    of top_p (none in these rows in the interpreter on CPU); every other row agrees to 1e-5
    (measured 8e-7 in the interpreter: fp32 rounding of sim·exp(λ·sim) before the softmax)."""
    assert FSA(**HYPER)._path_for(torch.empty(1, 1, n, 1, device='cuda'), -2) == 'fused'
    generator = torch.Generator(device='cuda').manual_seed(n)
    q = torch.rand(n, 171, device='cuda', generator=generator).mul_(6).softmax(-1)
    log_q = torch.log(q + 1e-10)
    kl = (q[:256] * log_q[:256]).sum(-1, keepdim=True) - q[:256] @ log_q.t()   # (256, n)
    sim = 1 / (1 + kl.clamp(min=0))
    with torch.no_grad():
        fused = FSA(**HYPER)._prune_and_sharpen(sim.clone(), False, 'fused')
    official = official_prune_and_sharpen(sim, HYPER['lamda'], HYPER['top_p'])
    moved = ((fused > 0) != (official > 0)).sum(-1)
    assert moved.max() <= 1 and (moved > 0).sum() <= 5
    assert (fused - official)[moved == 0].abs().max() < 1e-5
