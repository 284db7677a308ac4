"""The fused pruning kernel (fsa_seg/models/plugins/fsa_kernel.py) as an op, in Triton's
interpreter on CPU: the official selection with CUDA's tie order on rows of any sign and
ties, the similarity made from KL rows, its dtypes and limits; the KL terms' kernel; the
operand's kernel against torch's copies and sum; and, without a GPU, that the kernels compile
for an H100 (sm_90) without spilling registers."""
import importlib.util
import math
import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import fsa_seg.models.plugins.fsa_kernel as fsa_kernel
from fsa_seg.models.layout import with_padding
from fsa_seg.models.plugins.fsa_kernel import MAX_FUSED_TOKENS, fused_prune_and_sharpen
from fsa_seg.models.plugins.fsa_reference import official_prune_and_sharpen

from doubles import Kernels, record_launches

pytestmark = pytest.mark.skipif(
    os.environ.get('TRITON_INTERPRET') != '1' or importlib.util.find_spec('triton') is None,
    reason="the kernel runs on CPU tensors only in Triton's interpreter (set by conftest.py "
           'without a GPU)')


def rows_of(kind, generator, dtype=torch.float64):
    """(3, 40, 40) similarity rows: positive, of both signs, or with many ties (sevenths, zeros
    of both signs among them)."""
    x = torch.rand(3, 40, 40, generator=generator, dtype=dtype)
    if kind == 'signed':
        return x * 4 - 2
    if kind == 'ties':
        x = (x * 4).round() / 4 - 0.5
        negative_zero = torch.full_like(x, -0.0).copysign(torch.tensor(-1.0, dtype=dtype))
        return torch.where((x == 0) & (torch.arange(40) % 2 == 1), negative_zero, x)
    return x


def assert_official_rows(out, official, sim, lamda):
    """``out`` keeps the entries ``official`` keeps, each within the rounding of two softmaxes
    whose exps differ: the interpreter takes numpy's exp, the official code torch's, and they
    part by a few ulps where numpy's exp is the AVX-512 one (rows 1.1e-13 apart, relatively,
    on an AMD EPYC; within 1e-15 on the earlier AVX2 machines). An exp k ulps off moves
    s = sim·exp(λ·sim) by k·ε·|s|, and a softmax moves each output by at most twice its inputs'
    largest move, relatively: 8·ε·max|s| (k = 4), plus ε-sized roundings of its own."""
    assert torch.equal(out > 0, official > 0)
    float64 = torch.finfo(torch.float64)
    largest = (sim * torch.exp(lamda * sim)).abs().amax(dim=-1, keepdim=True)
    bound = 8 * float64.eps * (largest + 1) * official.abs() + float64.tiny   # tiny: subnormals
    assert ((out.double() - official).abs() <= bound).all()


@pytest.mark.parametrize('kind', ['positive', 'signed', 'ties'])
@pytest.mark.parametrize('lamda, top_p', [(3.0, 0.45), (2.3, 0.3), (4.5, 0.8), (3.0, 0.0),
                                          (3.0, 5.0)])
def test_rows_equal_the_official_selection_in_cuda_tie_order(kind, lamda, top_p):
    sim = rows_of(kind, torch.Generator().manual_seed(1))
    out = fused_prune_and_sharpen(sim, lamda, top_p, 'similarity', torch.float64)
    official = official_prune_and_sharpen(sim, lamda, top_p, stable=True)
    assert_official_rows(out, official, sim, lamda)
    if top_p == 0.0:
        assert torch.equal((out > 0).sum(-1), torch.ones(3, 40, dtype=torch.long))


@pytest.mark.parametrize('source', ['similarity', 'kl', 'dots'])
@pytest.mark.parametrize('lamda, top_p', [(3.0, 0.45), (2.3, 0.3), (4.5, 0.8), (3.0, 0.0),
                                          (3.0, 5.0)])
def test_fp32_rows_keep_the_official_selection_from_every_source(source, lamda, top_p):
    """fp32 rows, which FSA's fused path prunes: there the cut's group is searched with the
    snap, and only a group of several equal values takes the cumulative sum; a group of one
    entry is dropped, but for the row's maximum. Rows of distinct values (random), of one
    maximum far above the rest and of three equal maxima; the similarities the kernel makes
    from KL rows and dot products are torch's own in fp32 (the interpreter divides exactly).
    The selection, which λ does not change, is compared where no kept entry underflows
    (λ = 0); A_new within fp32's rounding of the sharpened values (see
    :func:`assert_official_rows`), the entries that underflow fp32 aside."""
    generator = torch.Generator().manual_seed(12)
    rows = torch.rand(3, 30, 50, generator=generator)
    self_terms = None
    if source == 'similarity':
        rows[1, :, 7] = 2.0                                             # one far maximum
        rows[2, :, 3:6] = 2.0                                           # three equal maxima
        sim = rows
    else:  # KL divergences, some clamped: similarities of 1, the row's maxima
        kl = rows * 3
        kl[1, :, 7] = kl[2, :, 3:6] = -1.0
        rows = kl
        if source == 'dots':  # dot products, which the kernel subtracts from the self terms
            self_terms = torch.rand(3, 30, generator=generator)
            rows = self_terms[..., None] - kl
            kl = self_terms[..., None] - rows
        sim = 1 / (1 + kl.clamp(min=0))

    def pruned(lamda):
        return fused_prune_and_sharpen(rows, lamda, top_p, source, torch.float32,
                                       self_terms=self_terms)
    selected = pruned(0.0) > 0
    assert torch.equal(selected, official_prune_and_sharpen(sim.double(), 0.0, top_p,
                                                            stable=True) > 0)
    kept = selected.sum(-1)
    if top_p == 0.0:  # the first maximum alone
        assert (kept == 1).all()
    if top_p >= 1.0:
        assert (kept == 50).all()
    official = official_prune_and_sharpen(sim.double(), lamda, top_p, stable=True)
    sharpened = (sim * torch.exp(lamda * sim)).double().abs().amax(dim=-1, keepdim=True)
    bound = 8 * torch.finfo(torch.float32).eps * (sharpened + 1) * official + 1e-37
    assert ((pruned(lamda).double() - official).abs() <= bound).all()


@pytest.mark.parametrize('kind', ['positive', 'signed', 'ties', 'wide'])
@pytest.mark.parametrize('top_p', [0.45, 0.0, 0.8, 5.0])
def test_every_split_and_snap_of_the_top_p_search_finds_the_halvings_cut(kind, top_p):
    """Cutting the search interval in 4, 8 or 16 parts a step (fp32 rows: 32-bit keys), or
    shrinking it to the keys it holds after some halvings (FSA's 13, and 1, 5: early, often,
    the interval still wide), finds the same cut as halving alone, the one smallest key whose
    mass fits: rows equal bit for bit. 'wide': magnitudes from 1e-30 to 10 of both signs, keys
    far apart (intervals of about 2^32 keys, beyond 32-bit differences)."""
    generator = torch.Generator().manual_seed(9)
    if kind == 'wide':
        sim = torch.rand(3, 40, 40, generator=generator, dtype=torch.float64)
        sim = (torch.sign(sim - 0.5) * 10 ** (31 * sim - 30)).float()
    else:
        sim = rows_of(kind, generator, torch.float32)
    halving = torch.empty_like(sim)
    fsa_kernel.run_kernel(sim, halving, 3.0, top_p, 'similarity',
                          launch=fsa_kernel.PruningLaunch(snap=0))
    assert halving.isfinite().all()
    launches = [fsa_kernel.PruningLaunch(parts=2 ** split_bits) for split_bits in (2, 3, 4)]
    launches += [fsa_kernel.PruningLaunch(snap=snap) for snap in (13, 1, 5)]
    for launch in launches:
        out = torch.empty_like(sim)
        fsa_kernel.run_kernel(sim, out, 3.0, top_p, 'similarity', launch=launch)
        assert torch.equal(out, halving), launch


def test_kl_rows_become_similarities_in_the_kernel_and_any_leading_shape_is_kept():
    generator = torch.Generator().manual_seed(2)
    kl = torch.rand(2, 3, 17, 50, generator=generator, dtype=torch.float64) * 3 - 0.5
    out = fused_prune_and_sharpen(kl, 3.0, 0.45, 'kl', torch.float64)
    sim = 1 / (1 + kl.clamp(min=0))
    official = official_prune_and_sharpen(sim, 3.0, 0.45, stable=True)
    assert out.shape == kl.shape
    assert_official_rows(out, official, sim, 3.0)


def test_more_rows_than_one_interpreted_block_holds():
    """The interpreter runs at most Triton's largest block (2^20 entries) a program: 600 rows
    of 1100 (padded to 1024 × 2048) take two programs."""
    sim = torch.rand(600, 1100, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    out = fused_prune_and_sharpen(sim, 3.0, 0.45, 'similarity', torch.float64)
    official = official_prune_and_sharpen(sim, 3.0, 0.45, stable=True)
    assert_official_rows(out, official, sim, 3.0)


def test_fp32_rows_written_in_half_precision():
    sim = rows_of('positive', torch.Generator().manual_seed(3), torch.float32)
    out = fused_prune_and_sharpen(sim, 3.0, 0.45, 'similarity', torch.float16)
    official = official_prune_and_sharpen(sim, 3.0, 0.45, stable=True)
    assert out.dtype == torch.float16 and torch.equal(out > 0, official > 0)
    assert (out.float() - official).abs().max() < 1e-3   # fp16 rounding of values ≤ 1


def test_dtypes_and_sizes_it_cannot_take_are_refused_and_empty_rows_pass():
    with pytest.raises(TypeError, match='float32 or float64, got torch.float16'):
        fused_prune_and_sharpen(torch.rand(2, 8).half(), 3.0, 0.45, 'similarity',
                                torch.float16)
    with pytest.raises(ValueError, match=f'at most {MAX_FUSED_TOKENS} tokens, got 4097'):
        fused_prune_and_sharpen(torch.rand(1, 4097), 3.0, 0.45, 'kl', torch.float32)
    assert fused_prune_and_sharpen(torch.rand(0, 8), 3.0, 0.45, 'kl', torch.float32).shape \
        == (0, 8)


COMPILE_FOR_H100 = textwrap.dedent('''
    import glob, os, subprocess, sys, tempfile
    import triton
    from triton.backends.compiler import GPUTarget
    from fsa_seg.models.plugins import fsa_kernel
    from fsa_seg.models.plugins._fsa_triton import (kl_terms_rows, operand_and_tokens_rows,
                                                    prune_and_sharpen_rows)
    ptxas = glob.glob(os.path.join(os.path.dirname(triton.__file__),
                                   'backends', 'nvidia', 'bin', 'ptxas'))
    PRUNE = ('rows_ptr', 'self_ptr', 'out_ptr', 'num_rows', 'size', 'in_stride', 'out_stride',
             'out_size', 'lamda_bits', 'top_p_bits', 'SOURCE', 'KEY_BITS', 'ROWS', 'BLOCK',
             'SPLIT_BITS', 'SNAP_AFTER', 'FAST_MATH')
    KL_TERMS = ('both_ptr', 'q_ptr', 'log_q_ptr', 'self_ptr', 'num_tokens', 'token_rows',
                'num_queries', 'both_stride', 'q_stride', 'segment', 'scale_attn_bits',
                'scale_uniform_bits', 'eps_bits', 'ROWS', 'BLOCK', 'SPLIT')
    OPERAND = ('values_ptr', 'attended_ptr', 'operand_ptr', 'tokens_ptr', 'num_tokens',
               'operand_rows', 'values_image', 'values_head', 'values_token', 'attended_image',
               'attended_head', 'attended_token', 'CHANNELS', 'HEAD_DIM', 'ROWS', 'BLOCK')
    def compiled(fn, names, types, constexprs, num_warps):
        signature = dict(zip(names, types + ('constexpr',) * len(constexprs)))
        try:
            source = triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=constexprs)
        except TypeError as error:  # another Triton's ahead-of-time API
            sys.exit(f'API: {error}')
        return triton.compile(source, target=GPUTarget('cuda', 90, 32),
                              options=dict(num_warps=num_warps))
    kernels = []
    for rows, out, bits, block, source, split in (('fp32', 'fp16', 32, 2048, 2, 1),
                                                  ('fp32', 'fp16', 32, 2048, 2, 3),
                                                  ('fp32', 'bf16', 32, 4096, 1, 2),
                                                  ('fp64', 'fp64', 64, 64, 0, 1)):
        types = ('*' + rows, '*' + rows, '*' + out, 'i32', 'i32', 'i32', 'i32', 'i32', 'i64',
                 'i64')
        kernels.append(compiled(prune_and_sharpen_rows, PRUNE, types,
                                dict(SOURCE=source, KEY_BITS=bits, ROWS=1, BLOCK=block,
                                     SPLIT_BITS=split, SNAP_AFTER=13 if bits == 32
                                     else fsa_kernel.NEVER, FAST_MATH=True),
                                fsa_kernel._num_warps(block)))
    for both, halves, work, split in (('fp16', 'fp32', 'fp32', False),
                                      ('fp16', 'fp16', 'fp32', True),
                                      ('fp64', 'fp64', 'fp64', False)):
        types = ('*' + both, '*' + halves, '*' + halves, '*' + work, 'i32', 'i32', 'i32', 'i32',
                 'i32', 'i32', 'i64', 'i64', 'i64')
        kernels.append(compiled(kl_terms_rows, KL_TERMS, types,
                                dict(ROWS=fsa_kernel.KL_TERMS_ENTRIES // 256, BLOCK=256,
                                     SPLIT=split), 4))
    for dtype in ('fp16', 'bf16', 'fp64'):  # ViT-B/16's 12 heads of 64, GPU launch
        rows, block = fsa_kernel._operand_launch(1768, 768, True)
        kernels.append(compiled(operand_and_tokens_rows, OPERAND,
                                ('*' + dtype,) * 4 + ('i32',) * 8,
                                dict(CHANNELS=768, HEAD_DIM=64, ROWS=rows, BLOCK=block), 4))
    for kernel in kernels:
        if ptxas:
            with tempfile.NamedTemporaryFile('w', suffix='.ptx', delete=False) as ptx:
                ptx.write(kernel.asm['ptx'])
            info = subprocess.run([ptxas[0], '-v', '--gpu-name', 'sm_90a', ptx.name, '-o',
                                   os.devnull], capture_output=True, text=True, check=True)
            print(kernel.name, info.stderr.replace(chr(10), ' '))
        else:
            print('no ptxas')
''')


def kl_terms_reference(branches, scales, eps):
    """q, log(q + ε), Σ q·log(q + ε) from their definitions, in float64."""
    branches = branches.double()
    isolated = scales[0] * branches[:, :-1] - scales[1] * branches[:, -1:]
    q = isolated.softmax(dim=-1)
    log_q = torch.log(q + eps)
    return q, log_q, (q * log_q).sum(dim=-1)


def test_kl_terms_equal_their_definition_in_float64_and_keep_its_epsilon():
    """Similarities of cosine scale and some far below the rest, so that q + ε is ε for some
    entries: ε reaches the kernel as the double 1e-10 (as fp32 it would move those logarithms by
    about 1e-8)."""
    generator = torch.Generator().manual_seed(6)
    branches = torch.rand(2, 14, 37, generator=generator, dtype=torch.float64) * 2 - 1
    branches[:, :-1, :5] -= 3.0                    # q ≈ e^-100 there
    q, log_q, self_terms = fsa_kernel.fused_kl_terms(branches, (20.0, 35.0), 1e-10)
    expected = kl_terms_reference(branches, (20.0, 35.0), 1e-10)
    # 13 tokens: 14 rows of q and log q, the last zeros (an aligned product's rows), 16 bytes each
    assert q.shape == log_q.shape == (2, 14, 37)
    assert torch.equal(q[:, 13:], torch.zeros(2, 1, 37, dtype=torch.float64))
    assert torch.equal(log_q[:, 13:], torch.zeros(2, 1, 37, dtype=torch.float64))
    q, log_q = q[:, :13], log_q[:, :13]
    assert q.min() < 1e-30 and (log_q - math.log(1e-10)).abs().min() < 1e-12
    for ours, reference in zip((q, log_q, self_terms), expected):
        assert ours.dtype == torch.float64 and ours.shape == reference.shape
        torch.testing.assert_close(ours, reference, rtol=0, atol=1e-13)
    assert q.stride(1) % 2 == 0 and log_q.stride(1) % 2 == 0     # rows of 16-byte multiples


def test_kl_terms_read_similarities_in_padded_rows_in_place():
    """``logits_fn`` gives similarities against queries padded to an aligned count, as a view of
    the first Q: the kernel reads them with their row stride, as it reads contiguous ones."""
    generator = torch.Generator().manual_seed(5)
    wide = torch.rand(2, 11, 40, generator=generator, dtype=torch.float64) * 2 - 1
    branches = wide[..., :37]
    assert fsa_kernel.strided_rows(branches).data_ptr() == wide.data_ptr()     # not copied
    for ours, contiguous in zip(fsa_kernel.fused_kl_terms(branches, (20.0, 35.0), 1e-10),
                                fsa_kernel.fused_kl_terms(branches.contiguous(), (20.0, 35.0),
                                                          1e-10)):
        assert torch.equal(ours, contiguous)


@pytest.mark.parametrize('split', [False, True], ids=['fp32', 'fp16_halves'])
def test_kl_terms_are_the_same_whatever_the_tokens_a_program(monkeypatch, split):
    """1 to 64 tokens a program (``benchmark.py kernel`` times such launches), which reach the
    kernel's launch: the same terms, the zero rows beyond N included; a count that is not a
    power of two is refused."""
    launches = record_launches(monkeypatch, 'kl_terms_rows')
    generator = torch.Generator().manual_seed(8)
    branches = torch.rand(2, 30, 171, generator=generator) * 2 - 1
    default = fsa_kernel.fused_kl_terms(branches, (20.0, 35.0), 1e-10, split)
    for tokens in (1, 2, 8, 64):
        terms = fsa_kernel.fused_kl_terms(branches, (20.0, 35.0), 1e-10, split, tokens)
        assert all(map(torch.equal, terms, default))
    # 29 tokens: 32 rows of q and log q, in one program in the interpreter by default
    assert [(grid, kwargs['ROWS']) for grid, kwargs in launches] == [
        ((1, 2), 32), ((32, 2), 1), ((16, 2), 2), ((4, 2), 8), ((1, 2), 64)]
    with pytest.raises(ValueError, match='tokens_per_program must be 0 or a power of two, got 3'):
        fsa_kernel.fused_kl_terms(branches, (20.0, 35.0), 1e-10, split, 3)


def test_kl_terms_of_half_precision_similarities_are_made_in_float32():
    generator = torch.Generator().manual_seed(7)
    branches = (torch.rand(1, 30, 171, generator=generator) * 2 - 1).half()
    q, log_q, self_terms = fsa_kernel.fused_kl_terms(branches, (20.0, 35.0), 1e-10)
    expected = kl_terms_reference(branches, (20.0, 35.0), 1e-10)   # of the same fp16 values
    assert q.dtype == log_q.dtype == self_terms.dtype == torch.float32
    assert q.stride(1) == 172                                  # 684 bytes a row → 688
    assert q.shape == (1, 32, 171) and not q[:, 29:].any()     # 29 tokens → 32 rows, zeros
    q, log_q = q[:, :29], log_q[:, :29]
    torch.testing.assert_close(q.double(), expected[0], rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(log_q.double(), expected[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(self_terms.double(), expected[2], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match='at most 4096 queries, got 4097'):
        fsa_kernel.fused_kl_terms(torch.rand(1, 3, 4097), (20.0, 35.0), 1e-10)


def test_kl_terms_in_fp16_halves_give_the_dot_products_of_q_and_log_q():
    """``split``: q and log q as fp16 halves, [q_hi, q_hi, q_lo] and [l_hi, l_lo, l_hi], each
    176 entries wide for Q = 171 (zeros beyond 171); the halves add up to q and log q, and
    their product with fp32 sums (``kl_dot_products``) is q·log qᵀ within 2e-5 (fp32's own
    product: about 5e-6), the self terms those of fp32."""
    generator = torch.Generator().manual_seed(9)
    branches = (torch.rand(2, 31, 171, generator=generator) * 2 - 1).half()
    lhs, rhs, self_terms = fsa_kernel.fused_kl_terms(branches, (20.0, 35.0), 1e-10, split=True)
    q, log_q, expected_self = kl_terms_reference(branches, (20.0, 35.0), 1e-10)
    # 30 tokens: 32 rows (a multiple of 8 for fp16), the last two zeros
    assert lhs.dtype == rhs.dtype == torch.float16 and lhs.shape == rhs.shape == (2, 32, 528)
    assert not lhs[:, 30:].any() and not rhs[:, 30:].any()
    lhs, rhs = lhs[:, :30], rhs[:, :30]
    q_parts, log_parts = lhs.double().split(176, -1), rhs.double().split(176, -1)
    for part in q_parts + log_parts:
        assert torch.equal(part[..., 171:], torch.zeros(2, 30, 5, dtype=torch.float64))
    assert torch.equal(q_parts[0], q_parts[1]) and torch.equal(log_parts[0], log_parts[2])
    # fp32's q and log q (the other test's bounds), less fp16 subnormal spacing (6e-8)
    torch.testing.assert_close(q_parts[0][..., :171] + q_parts[2][..., :171], q, rtol=1e-5,
                               atol=1e-7)
    torch.testing.assert_close(log_parts[0][..., :171] + log_parts[1][..., :171], log_q,
                               rtol=1e-5, atol=1e-5)
    dots = fsa_kernel.kl_dot_products(lhs, rhs.transpose(-1, -2))
    assert dots.dtype == torch.float32
    torch.testing.assert_close(dots.double(), q @ log_q.transpose(-1, -2), rtol=0, atol=2e-5)
    torch.testing.assert_close(self_terms.double(), expected_self, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match='fp16 halves of q and log q are for fp32 work'):
        fsa_kernel.fused_kl_terms(branches.double(), (20.0, 35.0), 1e-10, split=True)


def test_rows_of_dot_products_are_pruned_as_the_kl_they_give():
    """KL_ij = self_i − q_i·log q_j, the subtraction made in the kernel."""
    generator = torch.Generator().manual_seed(8)
    branches = torch.rand(2, 41, 9, generator=generator, dtype=torch.float64) * 2 - 1
    q, log_q, self_terms = kl_terms_reference(branches, (20.0, 35.0), 1e-10)
    dots = q @ log_q.transpose(-1, -2)
    out = fused_prune_and_sharpen(dots, 3.0, 0.45, 'dots', torch.float64, self_terms=self_terms)
    kl = self_terms[..., None] - dots
    sim = 1 / (1 + kl.clamp(min=0))
    official = official_prune_and_sharpen(sim, 3.0, 0.45, stable=True)
    assert_official_rows(out, official, sim, 3.0)
    # the rows of an aligned product, seen without their last columns, are read in place
    wide = torch.cat([dots, torch.full_like(dots[..., :3], float('nan'))], dim=-1)
    assert torch.equal(fused_prune_and_sharpen(wide[..., :40], 3.0, 0.45, 'dots',
                                               torch.float64, self_terms=self_terms), out)
    with pytest.raises(ValueError, match="self_terms exactly for 'dots'"):
        fused_prune_and_sharpen(dots, 3.0, 0.45, 'kl', torch.float64, self_terms=self_terms)
    with pytest.raises(ValueError, match="self_terms exactly for 'dots'"):
        fused_prune_and_sharpen(dots, 3.0, 0.45, 'dots', torch.float64)


def test_a_plain_eager_call_runs_the_kernels_without_the_dispatcher(monkeypatch):
    """Plain tensors outside autograd, compilation and dispatch modes call the implementations
    directly; fake tensors (any dispatch mode), autograd and compilation call the custom ops,
    which give the same rows."""
    kernels = ('_operand_and_tokens', '_kl_terms', '_prune_and_sharpen')
    direct = []
    for name in kernels:
        implementation = getattr(fsa_kernel, name)
        monkeypatch.setattr(fsa_kernel, name, lambda *args, _name=name, _f=implementation:
                            direct.append(_name) or _f(*args))

    def fsa_rows(branches):
        operand, _ = fsa_kernel.fused_operand_and_tokens(branches[:, None], branches[:, None])
        q, log_q, self_terms = fsa_kernel.fused_kl_terms(branches, (20.0, 35.0), 1e-10)
        dots = fsa_kernel.kl_dot_products(q, log_q.transpose(-1, -2))
        return operand, fused_prune_and_sharpen(dots, 3.0, 0.45, 'dots', torch.float32,
                                                self_terms=self_terms)

    branches = torch.rand(1, 21, 7, generator=torch.Generator().manual_seed(4)) * 2 - 1
    plain = fsa_rows(branches)
    assert direct == list(kernels)
    with Kernels() as ops:
        assert all(map(torch.equal, fsa_rows(branches), plain))
    assert direct == list(kernels)                                         # no more
    assert [name for name in ops.names if name.startswith('fsa_seg.')] == [
        'fsa_seg.operand_and_tokens', 'fsa_seg.kl_terms', 'fsa_seg.prune_and_sharpen']
    with torch.enable_grad():
        fsa_rows(branches.requires_grad_())
        assert len(direct) == 3
        with torch.no_grad():
            fsa_rows(branches)
        assert len(direct) == 6
    monkeypatch.setattr(torch.compiler, 'is_compiling', lambda: True)
    assert all(map(torch.equal, fsa_rows(branches.detach()), plain)) and len(direct) == 6


def operand_reference(values, attended):
    """[V, A·V + V] (B, N, 2·H·d) and A·V (B, N, H·d), heads side by side, by torch's ops."""
    def merged(x):
        return x.transpose(1, 2).flatten(2)
    return torch.cat([merged(values), merged(attended + values)], dim=-1), merged(attended)


def laid_out(x, layout):
    """(B, H, N, d) ``x`` with the same entries: contiguous ('head_major'), a view of token rows
    wider than the tokens with the heads side by side (ProxyCLIP's values: 'token_major'), or
    with entries of a head a stride apart ('strided', which the kernel reads from a copy)."""
    if layout == 'token_major':
        wide = x.new_full((x.shape[0], x.shape[2] + 3, x.shape[1] * x.shape[3]), float('nan'))
        wide[:, :x.shape[2]] = x.transpose(1, 2).flatten(2)
        return wide[:, :x.shape[2]].unflatten(-1, x.shape[1::2]).transpose(1, 2)
    if layout == 'strided':
        return x.transpose(-1, -2).contiguous().transpose(-1, -2)
    return x.contiguous()


@pytest.mark.parametrize('shape, launch', [((2, 3, 50, 4), 'interpreter'),
                                           ((2, 12, 50, 64), 'gpu'), ((1, 4, 7, 80), 'gpu')])
@pytest.mark.parametrize('layout', ['head_major', 'token_major', 'strided'])
@pytest.mark.parametrize('dtype, rows', [(torch.float16, 8), (torch.float32, 4),
                                         (torch.float64, 2)])
def test_the_operand_kernel_writes_torchs_copies_and_sum(monkeypatch, shape, launch, layout,
                                                         dtype, rows):
    """[V, A·V + V] with zeros from N to the aligned N (a multiple of 16 bytes: ``rows`` entries),
    and the branch tokens A·V, heads side by side, both bit for bit as torch's copies and sum
    make them; values and A·V in any layout; launched as the interpreter launches it and as a
    GPU does (8 tokens × 256 channels a program, the last of each partly masked: 4 heads of 80
    are 320 channels, ViT-H/14's head size). The outputs
    are allocated full of NaN here, so that every entry checked is one the kernel wrote."""
    allocate = fsa_kernel._operand_and_tokens_outputs
    monkeypatch.setattr(fsa_kernel, '_operand_and_tokens_outputs', lambda values: tuple(
        out.fill_(float('nan')) for out in allocate(values)))
    if launch == 'gpu':
        choose = fsa_kernel._operand_launch
        monkeypatch.setattr(fsa_kernel, '_operand_launch',
                            lambda operand_rows, channels, cuda: choose(operand_rows, channels,
                                                                        True))
    generator = torch.Generator().manual_seed(shape[-1])
    values, attended = (torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype)
                        for _ in range(2))
    values, attended = laid_out(values, layout), laid_out(attended * 3, 'token_major')
    operand, tokens = fsa_kernel.fused_operand_and_tokens(values, attended)
    batch, heads, size, head_dim = shape
    padded = -(-size // rows) * rows
    assert operand.shape == (batch, padded, 2 * heads * head_dim) and operand.is_contiguous()
    assert tokens.shape == (batch, size + 1, heads * head_dim) and tokens.is_contiguous()
    expected_operand, expected_tokens = operand_reference(values, attended)
    assert torch.equal(operand[:, :size], expected_operand)
    assert torch.equal(operand[:, size:], torch.zeros_like(operand[:, size:]))
    assert torch.equal(tokens[:, :size], expected_tokens)


def test_the_operand_kernel_in_bf16_is_torchs_within_the_interpreters_rounding():
    """bf16 sums are made in fp32 and rounded once (on a GPU bit for bit torch's, which the CUDA
    tests check); Triton's interpreter rounds that fp32 → bf16 cast toward zero: within one unit
    of the last place (2^-7 relative), the copies exact."""
    generator = torch.Generator().manual_seed(2)
    values, attended = (torch.randn(2, 3, 50, 4, generator=generator).bfloat16()
                        for _ in range(2))
    operand, tokens = fsa_kernel.fused_operand_and_tokens(values, attended)
    expected_operand, expected_tokens = operand_reference(values, attended)
    assert operand.shape == (2, 56, 24) and not operand[:, 50:].any()
    assert torch.equal(operand[:, :50, :12], expected_operand[..., :12])
    assert torch.equal(tokens[:, :50], expected_tokens)
    total, expected = operand[:, :50, 12:].double(), expected_operand[..., 12:].double()
    assert ((total - expected).abs() <= expected.abs() * 2 ** -7).all()


def test_the_operand_kernel_refuses_values_and_products_that_differ():
    values = torch.zeros(1, 2, 5, 4)
    with pytest.raises(ValueError, match=r'values and attended differ: \(1, 2, 5, 4\) '
                                         r'torch.float32, \(1, 2, 6, 4\) torch.float32'):
        fsa_kernel.fused_operand_and_tokens(values, torch.zeros(1, 2, 6, 4))
    with pytest.raises(ValueError, match='values and attended differ'):
        fsa_kernel.fused_operand_and_tokens(values, values.double())


@pytest.mark.parametrize('dtype, stride', [(torch.float16, 1768), (torch.float32, 1764),
                                           (torch.bfloat16, 1768), (torch.float64, 1764)])
def test_rows_of_a_new_start_at_multiples_of_16_bytes(dtype, stride):
    """N = 1764 fp16 entries are 3528 bytes, not a multiple of 16: the padding (zeros) lets the
    product A_new·V run over 1768 entries, which the fast fp16 GEMM kernels take."""
    with FakeTensorMode():
        rows = torch.empty(2, 7, 1764, device='cuda')
        out = fused_prune_and_sharpen(rows, 3.0, 0.45, 'kl', dtype)
    assert out.shape == (2, 7, 1764) and out.stride() == (7 * stride, stride, 1)


@pytest.mark.parametrize('dtype, size, stride', [(torch.float16, 50, 56), (torch.float32, 50, 52),
                                                 (torch.float64, 51, 52), (torch.float32, 48, 48)])
def test_the_padding_of_a_new_rows_holds_zeros(dtype, size, stride):
    """A_new's rows come with zeros from N to their row stride, which an aligned product over the
    stride reads (FSA's A_new·operand): no other entry changes."""
    generator = torch.Generator().manual_seed(6)
    work = torch.float64 if dtype == torch.float64 else torch.float32
    sim = torch.rand(2, 3, size, generator=generator, dtype=work)
    out = fused_prune_and_sharpen(sim, 3.0, 0.45, 'similarity', dtype)
    wide = with_padding(out)
    assert wide.shape == (2, 3, stride) and torch.equal(wide[..., :size], out)
    assert torch.equal(wide[..., size:], torch.zeros(2, 3, stride - size, dtype=dtype))
    official = official_prune_and_sharpen(sim.double(), 3.0, 0.45, stable=True)
    if dtype == torch.float64:
        assert_official_rows(out, official, sim, 3.0)
    else:
        tolerance = {torch.float32: 1e-5, torch.float16: 1e-3}[dtype]
        assert torch.equal(out > 0, official > 0)
        assert (out.double() - official).abs().max() < tolerance


@pytest.mark.skipif(sys.platform != 'linux', reason="Triton's CUDA compiler ships for Linux")
def test_the_kernels_compile_for_an_h100_without_register_spills():
    """Compiled ahead of time for sm_90 (no GPU needed): what the interpreter cannot check —
    types, constexpr branches, the bisection loop's carried values — and no spills."""
    env = {k: v for k, v in os.environ.items() if k != 'TRITON_INTERPRET'}
    result = subprocess.run([sys.executable, '-c', COMPILE_FOR_H100], env=env,
                            capture_output=True, text=True, timeout=300)
    if result.returncode != 0 and '\nAPI: ' in '\n' + result.stderr:
        pytest.skip(f"this Triton's ahead-of-time compile API differs ({result.stderr.strip()})")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert len(lines) == 10
    for line in lines:
        if line == 'no ptxas':
            continue
        spills = re.findall(r'(\d+) bytes spill', line)
        assert 'Used' in line and spills and set(spills) == {'0'}, line
