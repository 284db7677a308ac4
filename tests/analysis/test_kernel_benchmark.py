"""The fused pruning kernel's launch benchmark (fsa_seg/analysis/kernel_benchmark.py): KL rows as
FSA makes them, other launch settings computing FSA's rows, the report's ratios, bad settings."""
import argparse
import importlib.util
import json
import os
import re

import pytest
import torch

from fsa_seg.analysis import kernel_benchmark
from fsa_seg.analysis.benchmark import fsa_settings
from fsa_seg.models.plugins import FSA
from fsa_seg.models.plugins.fsa_kernel import PruningLaunch

interpreted = pytest.mark.skipif(
    os.environ.get('TRITON_INTERPRET') != '1' or importlib.util.find_spec('triton') is None,
    reason="the kernel runs on CPU tensors only in Triton's interpreter (set by conftest.py "
           'without a GPU)')


def test_the_rows_give_the_kl_divergences_of_the_query_distributions():
    """KL(q_i ‖ q_j) = Σ_c q_ic (log(q_ic + ε) − log(q_jc + ε)), from the definition in float64,
    q = softmax(20·P − 35·P_u) of the branches' similarities (P_u last)."""
    branches = kernel_benchmark.branch_similarities(12, 5, seed=3).double()
    assert branches.shape == (1, 13, 5) and branches.abs().max() <= 1
    dots, self_terms = kernel_benchmark.kernel_rows(branches, FSA())
    rows = self_terms[:, None] - dots
    q = (20 * branches[0, :12] - 35 * branches[0, 12:]).softmax(dim=-1)
    log_q = torch.log(q + 1e-10)
    expected = (q[:, None, :] * (log_q[:, None, :] - log_q[None, :, :])).sum(-1)
    torch.testing.assert_close(rows, expected, rtol=0, atol=1e-12)
    assert rows.shape == (12, 12) and rows.diagonal().abs().max() < 1e-12


@interpreted
def test_every_launch_writes_fsas_rows_and_the_report_gives_the_ratios():
    settings = fsa_settings()
    result = kernel_benchmark.run_kernel_benchmark(
        n_values=(16,), q=5, launches=(PruningLaunch(4, 2, 2), PruningLaunch(8, 4, 4)),
        device='cpu', out_dtype='fp32',
        repeat=1, settings=settings)
    assert (result['lamda'], result['top_p']) == (settings['plugin']['lamda'],
                                                  settings['plugin']['top_p'])
    run, = result['runs']
    assert [(launch['rows'], launch['warps'], launch['parts'])
            for launch in run['launches']] == [(4, 2, 2), (8, 4, 4)]
    for launch in run['launches']:  # the interpreter sums each row alike, whatever the launch
        assert launch['max_abs_diff'] == 0.0 and launch['rows_differing'] == 0
        assert launch['rows_selecting_differently'] == 0
    # q·log qᵀ over Q = 5 (fp32) and over 3 fp16 segments of 8, near the fp64 product
    products = run['kl_products']
    assert (products['fp32']['contracted'], products['fp16_halves']['contracted']) == (5, 24)
    assert products['fp32']['max_abs_diff_fp64'] < 5e-6
    assert products['fp16_halves']['max_abs_diff_fp64'] < 2e-5
    # as FSA makes it, against log q's rows padded to a multiple of 8 (16 stay 16, 13 become
    # 16), and the halves once more against its unpadded n rows: the same n × n entries
    unpadded = products['fp16_halves_unpadded']
    assert (products['fp16_halves']['columns'], unpadded['columns']) == (16, 16)
    assert unpadded['max_abs_diff_fp64'] == products['fp16_halves']['max_abs_diff_fp64']
    odd = kernel_benchmark.kl_products(kernel_benchmark.branch_similarities(13, 5), FSA(), 1)
    assert {p['rows'] for p in odd.values()} == {13}
    assert (odd['fp16_halves']['columns'], odd['fp16_halves_unpadded']['columns']) == (16, 13)
    assert odd['fp16_halves_unpadded']['max_abs_diff_fp64'] == \
        odd['fp16_halves']['max_abs_diff_fp64']
    # the operand and branch tokens of a batch of 2 × 16 tokens of 12 heads of 64, from the
    # kernel as from torch's copies and sum
    assert run['operand']['equal'] and (run['operand']['batch'], run['operand']['heads']) == (2, 12)
    run['operand']['kernel_s'], run['operand']['torch_s'] = 1e-5, 2.5e-5
    # the KL terms in fp32 (an fp32 model's), 2 to 16 tokens a program: the same terms
    kl_terms = run['kl_terms']
    assert not kl_terms['split'] and [launch['tokens'] for launch in kl_terms['launches']] == [
        2, 4, 8, 16]
    assert all(launch['max_abs_diff'] == 0.0 for launch in kl_terms['launches'])
    kl_terms['fsa_s'] = 8e-6
    for launch, seconds in zip(kl_terms['launches'], (1e-5, 4e-6, 8e-6, 1.6e-5)):
        launch['median_s'] = seconds
    run['fsa_launch_s'] = 0.003
    run['launches'][0]['median_s'] = 0.002
    products['fp32']['median_s'], products['fp16_halves']['median_s'] = 4e-5, 1e-5
    unpadded['median_s'] = 2e-5
    lines = kernel_benchmark.kernel_report(result).splitlines()
    assert re.search(r'^q·log qᵀ \(16 x 16\): fp32 \(contracted over 5\) 0\.0400 ms, .*; '
                     r'fp16 halves \(over 24, .*\) 0\.0100 ms, .*; fp32 / halves 4\.00x$',
                     '\n'.join(lines), re.M)
    assert re.search(r"^  the halves' product against 16 rows of log q \(not padded, as "
                     r'before\) 0\.0200 ms, .*; unpadded / padded 2\.00x$', '\n'.join(lines),
                     re.M)
    assert "N=16: FSA's launch 3.0000 ms" in lines
    assert ("[V, A·V + V] and the branch tokens (2 x 16 tokens, 12 heads of 64, fp32): kernel "
            "0.0100 ms, torch's copies and sum 0.0250 ms; torch / kernel 2.50x; equal: yes"
            in lines)
    assert ("KL terms (fp32, a batch of 2): FSA's launch 0.0080 ms; tokens a program (FSA / "
            "this): 2: 0.0100 ms (0.80x, max|diff| 0.0e+00), 4: 0.0040 ms (2.00x, max|diff| "
            "0.0e+00), 8: 0.0080 ms (1.00x, max|diff| 0.0e+00), 16: 0.0160 ms (0.50x, "
            "max|diff| 0.0e+00)" in lines)
    assert re.search(r'^\s+4\s+2\s+2\s+13\s+2\.0000\s+1\.50x\s+0\.0e\+00\s+0\s+0$',
                     '\n'.join(lines), re.M)
    assert re.search(r'^\s+8\s+4\s+4\s+13\s+', '\n'.join(lines), re.M)   # cut in 4 parts


@pytest.mark.parametrize('text', ['3x8', '1x6', 'x4', '0x4', 'fast', '1x8x3', '1x8x1',
                                  '1x8x4x-2', '1x8x4x2x1', '1x64'])
def test_launch_settings_are_powers_of_two(text):
    with pytest.raises(argparse.ArgumentTypeError, match='all but SNAP powers of two'):
        kernel_benchmark.parse_launch(text)
    assert kernel_benchmark.parse_launch('2X8') == (2, 8, 2, 13)   # halving, FSA's snap
    assert kernel_benchmark.parse_launch('1x16x8') == (1, 16, 8, 13)
    assert kernel_benchmark.parse_launch('1x16x8').split_bits == 3
    assert kernel_benchmark.parse_launch('1x4x2x0') == (1, 4, 2, 0)     # never
    assert kernel_benchmark.parse_launch('1x4x2x11') == (1, 4, 2, 11)


def _launch(rows, warps, parts, seconds, selecting_differently=0):
    return dict(rows=rows, warps=warps, parts=parts, median_s=seconds,
                rows_selecting_differently=selecting_differently)


def test_the_fastest_launch_is_one_that_keeps_fsas_entries_and_beats_fsas_launch():
    result = dict(runs=[dict(n=1764, fsa_launch_s=0.05, launches=[
        _launch(1, 8, 2, 0.06), _launch(1, 8, 8, 0.02, selecting_differently=1),
        _launch(1, 16, 4, 0.03), _launch(2, 8, 2, 0.04)])])
    assert kernel_benchmark.fastest_launch(result, 1764) == PruningLaunch(1, 16, 4)
    result['runs'][0]['launches'].append(dict(_launch(1, 4, 2, 0.028), snap=0))
    assert kernel_benchmark.fastest_launch(result, 1764) == PruningLaunch(1, 4, 2, 0)
    assert kernel_benchmark.fastest_launch(result, 4096) is None            # not measured
    result['runs'][0]['fsa_launch_s'] = 0.025                               # FSA's is fastest
    assert kernel_benchmark.fastest_launch(result, 1764) is None


def test_the_fastest_launch_becomes_the_cfg_options_of_fsas_launch(tmp_path):
    result = dict(runs=[dict(n=1764, fsa_launch_s=0.05, launches=[_launch(1, 16, 8, 0.01)])])
    path = tmp_path / 'kernel.json'
    path.write_text(json.dumps(result))
    assert kernel_benchmark.fastest_launch_options(str(path), 1764) == (
        'model.plugin.pruning_launch.rows=1 model.plugin.pruning_launch.warps=16 '
        'model.plugin.pruning_launch.parts=8 model.plugin.pruning_launch.snap=13')
    assert kernel_benchmark.fastest_launch_options(str(path), 4096) == ''


@pytest.fixture
def threads_restored():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@interpreted
def test_fp64_output_times_the_kl_terms_in_fp32_on_the_threads_asked(threads_restored):
    result = kernel_benchmark.run_kernel_benchmark(n_values=(16,), q=5, launches=(),
                                                   device='cpu', out_dtype='fp64', repeat=1,
                                                   threads=1)
    assert result['runs'][0]['kl_terms']['split'] is False
    assert result['env']['threads'] == torch.get_num_threads() == 1
    lines = kernel_benchmark.kernel_report(result).splitlines()
    assert lines[2].endswith(', 1 threads')
    assert [line[:31] for line in lines if line.startswith('KL terms')] == [
        'KL terms (fp32, a batch of 2): ']
