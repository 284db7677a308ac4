"""The plug-in benchmark (fsa_seg/analysis/benchmark.py, ``plugin``): both of FSA's paths beside
the official formulation, the issue's CPU and GPU targets, and grids of sizes and dtypes."""
import re
import subprocess
import sys
from pathlib import Path

from fsa_seg.analysis import benchmark

REPO = Path(__file__).resolve().parents[2]


def comparison(device, n, dtype, medians, peaks_mb):
    """A finished comparison as :func:`benchmark.compare` returns it, with made-up numbers."""
    variants = benchmark.PluginWorkload.variants_on(device)
    results = {v: dict(median_s=m, min_s=m, extra_peak_bytes=p * benchmark.MB, inputs_bytes=0,
                       method='test', reliable=True, host_syncs=None,
                       env=dict(torch='x', threads=1, device=device))
               for v, m, p in zip(variants, medians, peaks_mb)}
    params = dict(n=n, q=171, heads=12, head_dim=64, batch=1, dtype=dtype, device=device)
    return dict(spec=dict(kind='plugin', params=params), repeat=1, variants=list(variants),
                results=results)


def test_each_device_runs_the_path_fsa_picks_and_forces_the_other():
    assert benchmark.PluginWorkload.variants_on('cpu') == ('ours', 'ours-device', 'official')
    assert benchmark.PluginWorkload.variants_on('cuda:0') == ('ours', 'ours-cpu', 'official')


def test_gpu_target_is_judged_at_both_sizes_and_precisions_the_cpu_one_at_its_own():
    def target(device, n, dtype):
        return benchmark.plugin_target(comparison(device, n, dtype, (1, 1, 1), (1, 1, 1))
                                       ['spec']['params'])
    assert target('cuda', 4096, 'fp16')['speedup'] == 10.0
    assert target('cuda', 1764, 'fp32')['memory_reduction'] == 15.0
    assert target('cuda', 1764, 'bf16') is None
    assert target('cpu', 1764, 'fp32')['speedup'] == 15.0
    assert target('cpu', 4096, 'fp32') is None


def test_report_gives_official_over_each_of_ours():
    # official 1.2 s and 600 MB; ours 0.1 s and 20 MB; the other path 0.3 s and 40 MB
    report = benchmark.plugin_report(
        comparison('cuda', 4096, 'fp16', (0.1, 0.3, 1.2), (20, 40, 600)))
    assert 'ours: the device path' in report
    assert 'official / ours: latency 12.00x (medians; 12.00x on the minima), ' \
           'extra peak memory 30.00x' in report
    assert 'official / ours-cpu: latency 4.00x' in report and 'memory 15.00x' in report
    assert 'target: >= 10x faster and >= 15x less extra peak memory (ours, medians): MET' \
        in report
    grid = benchmark.plugin_grid_report([
        comparison('cuda', 1764, 'fp32', (0.5, 1.0, 2.0), (10, 20, 400)),
        comparison('cuda', 4096, 'fp16', (0.1, 0.3, 1.2), (20, 40, 600))])
    assert re.search(r'^\s+1764\s+fp32 ours\s+0\.50000\s+4\.00x\s+40\.00x$', grid, re.M), grid
    assert re.search(r'^\s+4096\s+fp16 ours-cpu\s+0\.30000\s+4\.00x\s+15\.00x$', grid, re.M), grid


def test_plugin_cli_runs_a_grid_of_sizes():
    result = subprocess.run(
        [sys.executable, str(REPO / 'tools' / 'analysis' / 'benchmark.py'), 'plugin',
         '--n', '12', '20', '--dtype', 'fp64', '--q', '3', '--heads', '2',
         '--head-dim', '4', '--repeat', '1'],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = re.findall(r'^\s+(\d+)\s+(fp\d+) (ours\S*)\s+\d+\.\d+\s+(\d+\.\d+x|n/a)',
                      result.stdout, re.M)
    assert [row[:3] for row in rows] == [
        (n, dtype, variant) for n in ('12', '20') for dtype in ('fp64', )
        for variant in ('ours', 'ours-device')], result.stdout
