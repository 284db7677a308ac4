"""The plug-in benchmark (fsa_seg/analysis/benchmark.py, ``plugin``): FSA set as a config says,
the path it picks and its torch.sort path beside the official formulation, ratios computed from
the measurements, no verdicts, and grids of sizes and dtypes."""
import os
import re
import subprocess

import pytest
import torch
from cuda_checks import needs_cuda

from fsa_seg.analysis import benchmark
from fsa_seg.models.cuda_graphs import CropGraphs
from fsa_seg.models.plugins import FSA

SETTINGS = dict(plugin=dict(type='FSA', lamda=3.0, top_p=0.45, logit_scales=(20.0, 35.0)),
                beta=1.2, gamma=3.0)


def comparison(device, n, dtype, medians, peaks_mb):
    """A finished comparison as :func:`benchmark.compare` returns it, with made-up numbers."""
    variants = benchmark.PluginWorkload.variants_on(device, n)
    results = {v: dict(median_s=m, min_s=m, extra_peak_bytes=p * benchmark.MB, inputs_bytes=0,
                       method='test', reliable=True, host_syncs=None,
                       env=dict(torch='x', threads=1, device=device))
               for v, m, p in zip(variants, medians, peaks_mb)}
    params = dict(n=n, q=171, heads=12, head_dim=64, batch=1, dtype=dtype, device=device,
                  **SETTINGS)
    return dict(spec=dict(kind='plugin', params=params), repeat=1, variants=list(variants),
                results=results)


def test_each_device_runs_the_path_fsa_picks_and_forces_the_torch_sort_path(
        fused_kernel_support):
    """On CUDA FSA picks the fused kernel where Triton is there, else the torch.sort path."""
    assert benchmark.PluginWorkload.variants_on('cpu', 1764) == ('ours', 'ours-device',
                                                                 'official')
    assert benchmark.PluginWorkload.variants_on('cuda:0', 2048) == (
        'ours', 'ours-device', 'ours-graphed', 'official', 'official-graphed')
    # the official formulation's graph holds its N×N×Q tensors: too large beyond N = 2048
    assert benchmark.PluginWorkload.variants_on('cuda:0', 2049) == (
        'ours', 'ours-device', 'ours-graphed', 'official')
    assert benchmark._picked_path(dict(device='cuda', n=1764, plugin=dict(type='FSA'))) == 'fused'
    assert benchmark._picked_path(dict(device='cuda', n=1764, plugin=dict(
        type='FSA', fused_pruning=False))) == 'device'
    assert benchmark._picked_path(dict(device='cuda', n=5000, plugin={})) == 'device'
    assert benchmark._picked_path(dict(device='cpu', n=1764, plugin={})) == 'cpu'
    fused_kernel_support(False)
    assert benchmark._picked_path(dict(device='cuda', n=1764, plugin={})) == 'device'


@pytest.mark.parametrize('config, lamda', [
    ('proxyclip_fsa_vit-b16_dino-b8_voc21', 3.0),    # the paper's λ for ViT-B/16
    ('proxyclip_fsa_vit-h14_dino-b8_voc21', 2.3),    # ViT-H/14
    ('proxyclip_fsa_vit-l14_mae-b16_voc21', 4.5),    # the MAE proxy, whatever the backbone
])
def test_fsa_settings_are_read_from_the_config(config, lamda):
    settings = benchmark.fsa_settings(config)
    assert settings['plugin']['type'] == 'FSA' and settings['plugin']['lamda'] == lamda
    assert (settings['beta'], settings['gamma']) == (1.2, 3.0)  # ProxyCLIP's published values


def test_configs_the_plugin_benchmark_cannot_use_are_refused_in_one_line():
    with pytest.raises(benchmark.BenchmarkError, match=r'has no plug-in') as error:
        benchmark.fsa_settings('proxyclip_vit-b16_dino-b8_voc21')
    assert '\n' not in str(error.value)
    with pytest.raises(benchmark.BenchmarkError, match=r'not a ProxyCLIP config'):
        benchmark.fsa_settings('clearclip_fsa_vit-b16_voc21')


def test_the_variants_timed_compute_the_same_attention_output():
    """ours, its other path and the official formulation, built from one plug-in config, on
    the workload's inputs: equal in float64 (the benchmark compares like with like)."""
    workload = benchmark.PluginWorkload(
        n=36, q=5, heads=2, head_dim=4, dtype='fp64',
        plugin=dict(type='FSA', lamda=4.5, top_p=0.3, logit_scales=(10.0, 30.0)),
        beta=1.2, gamma=3.0)
    assert workload.hyper == dict(lamda=4.5, top_p=0.3, logit_scales=(10.0, 30.0))
    inputs = workload.make_inputs(workload.full_size)
    outputs = {v: workload.run(v, inputs) for v in workload.variants_on('cpu', 36)}
    for variant in ('ours', 'ours-device'):
        torch.testing.assert_close(outputs[variant], outputs['official'], rtol=0, atol=1e-12)


def test_report_gives_official_over_each_of_ours_and_no_verdict(fused_kernel_support):
    # official 1.2 s and 600 MB; ours 0.1 s and 20 MB; the other path 0.3 s and 40 MB; ours
    # replayed from a CUDA graph 0.05 s and 30 MB; the official replayed so 1.0 s and 900 MB
    report = benchmark.plugin_report(
        comparison('cuda', 1764, 'fp16', (0.1, 0.3, 0.05, 1.2, 1.0), (20, 40, 30, 600, 900)))
    assert 'ours: the fused path' in report
    assert '; ours-graphed: replayed from a CUDA graph; official-graphed: replayed from a CUDA ' \
           'graph' in report
    assert 'official / ours-graphed: latency 24.00x' in report and 'memory 20.00x' in report
    assert 'official-graphed / ours-graphed: latency 20.00x (medians; 20.00x on the minima), ' \
           'extra peak memory 30.00x' in report
    assert 'FSA(lamda=3.0, top_p=0.45, logit_scales=(20.0, 35.0))' in report
    assert 'official / ours: latency 12.00x (medians; 12.00x on the minima), ' \
           'extra peak memory 30.00x' in report
    assert 'official / ours-device: latency 4.00x' in report and 'memory 15.00x' in report
    assert not re.search(r'target|MET|MISSED', report), report
    grid = benchmark.plugin_grid_report([
        comparison('cuda', 1764, 'fp32', (0.5, 1.0, 0.25, 2.0, 1.5), (10, 20, 10, 400, 200)),
        comparison('cuda', 4096, 'fp16', (0.1, 0.3, 0.05, 1.2), (20, 40, 30, 600)),
        comparison('cpu', 64, 'fp64', (0.4, 0.2, 0.8), (2, 4, 8))])
    rows = [line.split() for line in grid.splitlines()[2:]]
    assert rows == [
        ['1764', 'fp32', 'ours', '0.50000', 'official', '4.00x', '40.00x'],
        ['1764', 'fp32', 'ours-device', '1.00000', 'official', '2.00x', '20.00x'],
        ['1764', 'fp32', 'ours-graphed', '0.25000', 'official', '8.00x', '40.00x'],
        ['1764', 'fp32', 'ours-graphed', '0.25000', 'official-graphed', '6.00x', '20.00x'],
        ['4096', 'fp16', 'ours', '0.10000', 'official', '12.00x', '30.00x'],
        ['4096', 'fp16', 'ours-device', '0.30000', 'official', '4.00x', '15.00x'],
        ['4096', 'fp16', 'ours-graphed', '0.05000', 'official', '24.00x', '20.00x'],
        ['64', 'fp64', 'ours', '0.40000', 'official', '2.00x', '4.00x'],
        ['64', 'fp64', 'ours-device', '0.20000', 'official', '4.00x', '2.00x']], grid
    assert 'CAPTURE FAILED' not in grid + report
    # a failed capture: ours-graphed ran eagerly, and the reports say so
    failed = comparison('cuda', 1764, 'fp16', (0.1, 0.3, 0.1, 1.2, 1.0), (20, 40, 20, 600, 900))
    failed['results']['ours-graphed']['graph_failures'] = ['crops of shape (1, 12, 1764, 64): x']
    line = 'CUDA GRAPH CAPTURE FAILED, so these ran eagerly: crops of shape (1, 12, 1764, 64): x'
    assert benchmark.plugin_grid_report([failed]).splitlines()[-1] == line
    assert line in benchmark.plugin_report(failed).splitlines()


def test_the_profile_of_each_variant_shows_the_operators_of_its_own_path():
    """After the timings, one profiled run per variant: the CPU path cuts each row by a binary
    search and sorts with numpy (no torch sort, inputs without ties); the torch.sort path and
    the official formulation sort every row with torch and scatter the kept entries back."""
    spec = dict(kind='plugin', params=dict(n=40, q=5, heads=2, head_dim=4, dtype='fp64',
                                           device='cpu', **SETTINGS))
    with torch.enable_grad():  # the worker turns autograd off for its process: not for ours
        times = benchmark.latency_worker(spec, ('ours', 'ours-device', 'official'), 1,
                                         profile_rows=1000)
        three = benchmark.latency_worker(spec, ('ours',), 1, profile_rows=3)['ours']['profile']
    operators = {variant: {row['name']: row for row in times[variant]['profile']}
                 for variant in times}
    assert 'aten::searchsorted' in operators['ours'] and 'aten::sort' not in operators['ours']
    for variant in ('ours-device', 'official'):
        assert 'aten::sort' in operators[variant] and 'aten::scatter' in ' '.join(
            operators[variant]) and 'aten::searchsorted' not in operators[variant]
    assert operators['official']['aten::sort']['calls'] == 1
    rows = times['ours']['profile']
    assert [row['self_ms'] for row in rows] == sorted((row['self_ms'] for row in rows),
                                                      reverse=True)
    assert len(three) == 3


@torch.no_grad()
def test_the_graphed_variant_captures_once_per_inputs_so_its_memory_counts_the_capture():
    """ours-graphed replays the plug-in captured on these inputs (a recording capture on CPU):
    repeated runs replay one capture and equal ours; new inputs (as the memory measurement makes
    for its measured run) drop the graphs, so that run captures anew and its peak holds the
    graph's memory."""
    from doubles import RecordingCapture
    workload = benchmark.PluginWorkload(n=36, q=5, heads=2, head_dim=4, dtype='fp64', **SETTINGS)
    capture = RecordingCapture()
    workload.graphs = CropGraphs(device_types=('cpu',), capture=capture)
    inputs = workload.make_inputs(workload.full_size)
    runs = [workload.run('ours-graphed', inputs) for _ in range(3)]
    assert capture.shapes == [(1, 2, 36, 4)]
    for out in runs:
        assert torch.equal(out, workload.run('ours', inputs))
    assert runs[0].data_ptr() != runs[1].data_ptr()            # copies of the static output
    inputs = workload.make_inputs(workload.full_size)
    assert len(workload.graphs) == 0
    workload.run('ours-graphed', inputs)
    assert capture.shapes == [(1, 2, 36, 4)] * 2


@torch.no_grad()
def test_the_graphed_official_formulation_is_its_own_capture_of_the_official_one():
    """official-graphed replays the official formulation (a recording capture on CPU), captured
    apart from ours on the same inputs: equal to the official output every run; where its
    capture fails it runs eagerly, and the failure names it."""
    from doubles import RecordingCapture
    workload = benchmark.PluginWorkload(n=36, q=5, heads=2, head_dim=4, dtype='fp64', **SETTINGS)
    ours, official = RecordingCapture(), RecordingCapture()
    workload.graphs, workload.official_graphs = (
        CropGraphs(device_types=('cpu',), capture=capture) for capture in (ours, official))
    inputs = workload.make_inputs(workload.full_size)
    expected = workload.run('official', inputs)
    for _ in range(2):
        assert torch.equal(workload.run('official-graphed', inputs), expected)
        torch.testing.assert_close(workload.run('ours-graphed', inputs), expected, rtol=0,
                                   atol=1e-12)
    assert ours.shapes == official.shapes == [(1, 2, 36, 4)]
    assert workload.graph_failures == []
    workload.make_inputs(workload.full_size)       # new inputs: both variants capture anew
    assert len(workload.graphs) == len(workload.official_graphs) == 0
    workload.official_graphs = CropGraphs(
        device_types=('cpu',), capture=RecordingCapture(fails_with=RuntimeError('no sort here')))
    with pytest.warns(UserWarning, match='capture failed'):
        assert torch.equal(workload.run('official-graphed', inputs), expected)
    assert workload.graph_failures == [
        'the official formulation, crops of shape (1, 2, 36, 4): no sort here']


@needs_cuda
def test_on_cuda_the_graphed_variant_replays_ours_bit_for_bit():
    """ours-graphed is ours replayed from one CUDA graph: the same output, and one capture for
    repeated runs on the same inputs; official-graphed so too for the official formulation."""
    workload = benchmark.PluginWorkload(n=256, q=5, heads=2, head_dim=8, dtype='fp16',
                                        device='cuda', **SETTINGS)
    inputs = workload.make_inputs(workload.full_size)
    with torch.no_grad():
        eager = workload.run('ours', inputs)
        replays = [workload.run('ours-graphed', inputs) for _ in range(3)]
        official = workload.run('official', inputs)
        official_replays = [workload.run('official-graphed', inputs) for _ in range(2)]
    assert len(workload.graphs) == len(workload.official_graphs) == 1
    for replayed in replays:
        assert torch.equal(replayed, eager)
    for replayed in official_replays:  # the same kernels, fp16's tolerance should cuBLAS differ
        torch.testing.assert_close(replayed, official)


@needs_cuda
def test_on_cuda_the_profile_lists_the_kernels_of_each_path():
    """On CUDA the profile lists kernels: the fused path's Triton kernel (where FSA picks it)
    and the sort kernels of the torch.sort path."""
    spec = dict(kind='plugin', params=dict(n=256, q=5, heads=2, head_dim=8, dtype='fp32',
                                           device='cuda', **SETTINGS))
    with torch.enable_grad():
        times = benchmark.latency_worker(spec, ('ours', 'ours-device'), 1, profile_rows=1000)
    kernels = {variant: ' '.join(row['name'] for row in times[variant]['profile']).lower()
               for variant in times}
    if FSA().path_on(torch.device('cuda'), 256) == 'fused':
        assert 'prune_and_sharpen_rows' in kernels['ours'], kernels['ours']
    assert 'sort' in kernels['ours-device'], kernels['ours-device']
    assert times['ours']['profile'][0]['self_ms'] > 0


def test_the_host_profile_spans_eager_runs_of_ours_per_run():
    """With a profile, each eager variant of ours also gets its host time under cProfile over
    ``HOST_PROFILE_RUNS`` runs, per run: FSA's forward and its CPU path's pruning are called
    once a run, the rows are the functions of most time of their own, in order, within the
    run's total; the official formulation gets none."""
    spec = dict(kind='plugin', params=dict(n=40, q=5, heads=2, head_dim=4, dtype='fp64',
                                           device='cpu', **SETTINGS))
    with torch.enable_grad():  # the worker turns autograd off for its process: not for ours
        times = benchmark.latency_worker(spec, ('ours', 'ours-device', 'official'), 1,
                                         profile_rows=1000)
    assert 'host_profile' not in times['official']
    for variant, pruning in (('ours', '_prune_by_threshold'),
                             ('ours-device', '_prune_in_sort_order')):
        host = times[variant]['host_profile']
        assert host['runs'] == benchmark.HOST_PROFILE_RUNS
        fsa = {row['name'].split('(')[-1].rstrip(')'): row for row in host['rows']
               if row['name'].startswith('fsa.py:')}
        assert fsa['_forward']['calls'] == fsa[pruning]['calls'] == 1.0, fsa
        # the forward includes the pruning, and is within the run
        assert fsa[pruning]['cumulative_us'] < fsa['_forward']['cumulative_us'] \
            <= host['total_us'] * 1.0001
        own = [row['self_us'] for row in host['rows']]
        assert own == sorted(own, reverse=True) and 0 < sum(own) <= host['total_us'] * 1.0001
        assert all(row['self_us'] <= row['cumulative_us'] * 1.0001 for row in host['rows'])
    assert '_prune_in_sort_order' not in str(times['ours']['host_profile'])


def test_the_report_lists_each_profiled_variant(fused_kernel_support):
    result = comparison('cuda', 1764, 'fp16', (0.1, 0.3, 0.05, 1.2, 1.0), (20, 40, 30, 600, 900))
    result['results']['ours']['profile'] = [
        dict(name='prune_and_sharpen_rows', self_ms=0.1234, calls=1),
        dict(name='sm90_xmma_gemm_f16', self_ms=0.05, calls=3)]
    lines = benchmark.plugin_report(result).splitlines()
    start = lines.index('profile of one run, ours: the 2 operators with the most device time of '
                        'their own')
    assert lines[start + 1:] == ['      0.123 ms      1x  prune_and_sharpen_rows',
                                 '      0.050 ms      3x  sm90_xmma_gemm_f16']
    assert sum(line.startswith('profile of one run') for line in lines) == 1
    result['results']['ours']['host_profile'] = dict(runs=20, total_us=1234.56, rows=[
        dict(name='<built-in method torch.bmm>', self_us=312.44, cumulative_us=312.44,
             calls=3.0),
        dict(name='fsa.py:134(_forward)', self_us=20.0, cumulative_us=1200.06, calls=1.0)])
    lines = benchmark.plugin_report(result).splitlines()
    start = lines.index('host time of ours, eager: 1234.6 µs a run (cProfile, 20 runs); the 2 '
                        'functions with the most time of their own, a run (own, and with what '
                        'they call)')
    assert lines[start + 1:] == [
        '      312.4 µs       312.4 µs    3.0x  <built-in method torch.bmm>',
        '       20.0 µs      1200.1 µs    1.0x  fsa.py:134(_forward)']
    assert lines[start - 1] == ''


def test_plugin_cli_runs_a_grid_of_sizes_from_an_installed_package(tmp_path):
    """``python -m fsa_seg.analysis`` of a non-editable install, outside the checkout: FSA's
    settings come from the config shipped in the package, found by name."""
    from test_installed_package import make_venv  # a venv over this one's dependencies
    python = make_venv(tmp_path / 'install', editable=False)
    outside = tmp_path / 'work'
    outside.mkdir()
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}  # as a user runs it
    result = subprocess.run(
        [str(python), '-m', 'fsa_seg.analysis', 'plugin', '--n', '12', '20', '--dtype', 'fp64',
         '--q', '3', '--heads', '2', '--head-dim', '4', '--repeat', '1'],
        cwd=outside, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = re.findall(r'^\s+(\d+)\s+(fp\d+) (ours\S*)\s+\d+\.\d+\s+(\S+)\s+(\d+\.\d+x|n/a)',
                      result.stdout, re.M)
    assert [row[:4] for row in rows] == [
        (n, dtype, variant, 'official') for n in ('12', '20') for dtype in ('fp64', )
        for variant in ('ours', 'ours-device')], result.stdout
    # FSA as the default config (ViT-B/16 + DINO-B/8) sets it: λ = 3.0 for ViT-B/16
    assert 'FSA(top_p=0.45, logit_scales=(20.0, 35.0), lamda=3.0), proxy attention beta=1.2, ' \
           'gamma=3.0' in result.stdout


class RecordingWorkload:
    """Records the runs a worker makes: (variant, input size)."""
    runs = []

    def __init__(self, device='cpu'):
        self.device = torch.device(device)
        self.warmup_size, self.full_size = 1, 100

    def make_inputs(self, size):
        return size

    def run(self, variant, size):
        self.runs.append((variant, size))
        return torch.zeros(size)

    def resident_bytes(self, inputs):
        return 0


def test_on_cuda_one_process_measures_every_variant_warmed_up_at_full_size(monkeypatch):
    monkeypatch.setitem(benchmark.WORKLOADS, 'recording', RecordingWorkload)
    monkeypatch.setattr(RecordingWorkload, 'runs', [])
    with torch.enable_grad():  # the worker turns autograd off for its process: not for ours
        memory, times = benchmark.cuda_worker(dict(kind='recording', params={}), ('a', 'b'), 2)
    assert RecordingWorkload.runs == [
        ('a', 100), ('a', 100), ('b', 100), ('b', 100),   # memory: warm-up, measured run
        ('a', 100), ('b', 100),                           # latency: one warm-up each
        ('a', 100), ('b', 100), ('b', 100), ('a', 100)]   # timed, interleaved
    assert set(memory) == set(times) == {'a', 'b'}
    assert [len(times[v]['latencies_s']) for v in 'ab'] == [2, 2]


@pytest.mark.parametrize('device, calls', [
    ('cuda', ['cuda_worker']),
    ('cpu', ['memory_worker', 'memory_worker', 'latency_worker'])])
def test_cpu_measures_memory_in_a_process_per_variant_cuda_in_one(monkeypatch, device, calls):
    made = []

    def fake_process(context, function, spec, *args):
        made.append(function.__name__)
        if function is benchmark.cuda_worker:
            return ({v: {} for v in args[0]},
                    {v: dict(latencies_s=[1.0], plugin_s=[]) for v in args[0]})
        if function is benchmark.latency_worker:
            return {v: dict(latencies_s=[1.0], plugin_s=[]) for v in args[0]}
        return {}

    monkeypatch.setattr(benchmark, '_in_fresh_process', fake_process)
    result = benchmark.compare(dict(kind='plugin', params=dict(device=device)), ('a', 'b'),
                               start_method='spawn')
    assert made == calls and result['results']['a']['median_s'] == 1.0


@pytest.mark.parametrize('device, said', [
    ('cuda', ['memory, then latency: a, b, interleaved, 3 runs each, in one process ...']),
    ('cpu', ['memory 1/2: a, alone in a fresh process ...',
             'memory 2/2: b, alone in a fresh process ...',
             'latency: a, b, interleaved, 3 runs each ...'])])
def test_compare_says_what_each_worker_measures_as_it_starts(monkeypatch, device, said):
    def fake_process(context, function, spec, *args):
        latencies = {v: dict(latencies_s=[1.0], plugin_s=[]) for v in ('a', 'b')}
        if function is benchmark.cuda_worker:
            return {v: {} for v in 'ab'}, latencies
        return latencies if function is benchmark.latency_worker else {}

    monkeypatch.setattr(benchmark, '_in_fresh_process', fake_process)
    log = []
    benchmark.compare(dict(kind='plugin', params=dict(device=device)), ('a', 'b'), repeat=3,
                      start_method='spawn', log=log.append)
    assert log == said
