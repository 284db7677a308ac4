"""The fused pruning kernel (fsa_seg/models/plugins/fsa_kernel.py) as an op, in Triton's
interpreter on CPU: the official selection with CUDA's tie order on rows of any sign and
ties, the similarity made from KL rows, its dtypes and limits; and, without a GPU, that the
kernel compiles for an H100 (sm_90) without spilling registers."""
import importlib.util
import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch
from cuda_checks import HostDeviceCopies
from torch._subclasses.fake_tensor import FakeTensorMode

import fsa_seg.models.plugins.fsa_kernel as fsa_kernel
from fsa_seg.models.plugins.fsa_kernel import MAX_FUSED_TOKENS, fused_prune_and_sharpen
from fsa_seg.models.plugins.fsa_reference import official_prune_and_sharpen

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


@pytest.mark.parametrize('kind', ['positive', 'signed', 'ties'])
@pytest.mark.parametrize('lamda, top_p', [(3.0, 0.45), (2.3, 0.3), (4.5, 0.8), (3.0, 0.0),
                                          (3.0, 5.0)])
def test_rows_equal_the_official_selection_in_cuda_tie_order(kind, lamda, top_p):
    sim = rows_of(kind, torch.Generator().manual_seed(1))
    out = fused_prune_and_sharpen(sim, lamda, top_p, False, torch.float64)
    official = official_prune_and_sharpen(sim, lamda, top_p, stable=True)
    assert torch.equal(out > 0, official > 0)
    assert (out - official).abs().max() < 1e-15
    if top_p == 0.0:
        assert torch.equal((out > 0).sum(-1), torch.ones(3, 40, dtype=torch.long))


def test_kl_rows_become_similarities_in_the_kernel_and_any_leading_shape_is_kept():
    generator = torch.Generator().manual_seed(2)
    kl = torch.rand(2, 3, 17, 50, generator=generator, dtype=torch.float64) * 3 - 0.5
    out = fused_prune_and_sharpen(kl, 3.0, 0.45, True, torch.float64)
    official = official_prune_and_sharpen(1 / (1 + kl.clamp(min=0)), 3.0, 0.45, stable=True)
    assert out.shape == kl.shape and torch.equal(out > 0, official > 0)
    assert (out - official).abs().max() < 1e-15


def test_more_rows_than_one_interpreted_block_holds():
    """The interpreter runs at most Triton's largest block (2^20 entries) a program: 600 rows
    of 1100 (padded to 1024 × 2048) take two programs."""
    sim = torch.rand(600, 1100, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    out = fused_prune_and_sharpen(sim, 3.0, 0.45, False, torch.float64)
    official = official_prune_and_sharpen(sim, 3.0, 0.45, stable=True)
    assert torch.equal(out > 0, official > 0) and (out - official).abs().max() < 1e-15


def test_fp32_rows_written_in_half_precision():
    sim = rows_of('positive', torch.Generator().manual_seed(3), torch.float32)
    out = fused_prune_and_sharpen(sim, 3.0, 0.45, False, torch.float16)
    official = official_prune_and_sharpen(sim, 3.0, 0.45, stable=True)
    assert out.dtype == torch.float16 and torch.equal(out > 0, official > 0)
    assert (out.float() - official).abs().max() < 1e-3   # fp16 rounding of values ≤ 1


def test_dtypes_and_sizes_it_cannot_take_are_refused_and_empty_rows_pass():
    with pytest.raises(TypeError, match='float32 or float64, got torch.float16'):
        fused_prune_and_sharpen(torch.rand(2, 8).half(), 3.0, 0.45, False, torch.float16)
    with pytest.raises(ValueError, match=f'at most {MAX_FUSED_TOKENS} tokens, got 4097'):
        fused_prune_and_sharpen(torch.rand(1, 4097), 3.0, 0.45, False, torch.float32)
    assert fused_prune_and_sharpen(torch.rand(0, 8), 3.0, 0.45, False, torch.float32).shape \
        == (0, 8)


COMPILE_FOR_H100 = textwrap.dedent('''
    import glob, os, subprocess, sys, tempfile
    import triton
    from triton.backends.compiler import GPUTarget
    from fsa_seg.models.plugins import fsa_kernel
    from fsa_seg.models.plugins._fsa_triton import prune_and_sharpen_rows
    ptxas = glob.glob(os.path.join(os.path.dirname(triton.__file__),
                                   'backends', 'nvidia', 'bin', 'ptxas'))
    for rows, out, bits, block, from_kl in (('fp32', 'fp16', 32, 2048, True),
                                            ('fp32', 'bf16', 32, 4096, True),
                                            ('fp64', 'fp64', 64, 64, False)):
        signature = dict(rows_ptr='*' + rows, out_ptr='*' + out, hyper_ptr='*' + rows,
                         num_rows='i32', size='i32', FROM_KL='constexpr', KEY_BITS='constexpr',
                         ROWS='constexpr', BLOCK='constexpr')
        try:
            source = triton.compiler.ASTSource(
                fn=prune_and_sharpen_rows, signature=signature,
                constexprs=dict(FROM_KL=from_kl, KEY_BITS=bits, ROWS=1, BLOCK=block))
        except TypeError as error:  # another Triton's ahead-of-time API
            sys.exit(f'API: {error}')
        kernel = triton.compile(source, target=GPUTarget('cuda', 90, 32),
                                options=dict(num_warps=fsa_kernel._num_warps(block)))
        if ptxas:
            with tempfile.NamedTemporaryFile('w', suffix='.ptx', delete=False) as ptx:
                ptx.write(kernel.asm['ptx'])
            info = subprocess.run([ptxas[0], '-v', '--gpu-name', 'sm_90a', ptx.name, '-o',
                                   os.devnull], capture_output=True, text=True, check=True)
            print(block, info.stderr.replace(chr(10), ' '))
        else:
            print('no ptxas')
''')


def test_the_hyperparameters_reach_the_device_without_a_host_copy():
    """λ and top_p are filled on the device in the rows' dtype: no CPU scalar copied into a CUDA
    tensor (a host synchronisation, and a CUDA graph capture fails on it), as the check sees
    ``hyper[0] = lamda`` do."""
    with FakeTensorMode(), HostDeviceCopies() as copies:
        rows = torch.empty(4, 1764, device='cuda', dtype=torch.float64)
        hyper = fsa_kernel.hyperparameters(rows, 3.0, 0.45)
        assert copies.found == []
        hyper[0] = 3.0
    assert hyper.device.type == 'cuda' and hyper.dtype == torch.float64 and hyper.shape == (2,)
    assert copies.found == ['aten.copy_.default']
    rows = torch.empty(2, 8, dtype=torch.float64)
    assert fsa_kernel.hyperparameters(rows, 3.0, 0.45).tolist() == [3.0, 0.45]


@pytest.mark.skipif(sys.platform != 'linux', reason="Triton's CUDA compiler ships for Linux")
def test_the_kernel_compiles_for_an_h100_without_register_spills():
    """Compiled ahead of time for sm_90 (no GPU needed): what the interpreter cannot check —
    types, constexpr branches, the bisection loop's carried values — and no spills."""
    env = {k: v for k, v in os.environ.items() if k != 'TRITON_INTERPRET'}
    result = subprocess.run([sys.executable, '-c', COMPILE_FOR_H100], env=env,
                            capture_output=True, text=True, timeout=300)
    if result.returncode != 0 and '\nAPI: ' in '\n' + result.stderr:
        pytest.skip(f"this Triton's ahead-of-time compile API differs ({result.stderr.strip()})")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert len(lines) == 3
    for line in lines:
        if line == 'no ptxas':
            continue
        spills = re.findall(r'(\d+) bytes spill', line)
        assert 'Used' in line and spills and set(spills) == {'0'}, line
