"""The crop benchmarks (``config``, ``proxyclip``): configs by name, the config's own plug-in,
ratios computed from the measurements, no verdicts."""
import multiprocessing
import re
import warnings

import pytest
import torch
from cuda_checks import needs_cuda

from fsa_seg.analysis import benchmark, cli
from fsa_seg.apis import resolve_config
from fsa_seg.models.backbones import tiny_clip_arch
from fsa_seg.models.cuda_graphs import CropGraphs

from doubles import TINY_VFM, RecordingCapture

WITHOUT, WITH = benchmark.SegmentorWorkload.variants


def comparison(medians, plugin_s, extra_mb, resident_mb, device='cpu', cfg_options=None):
    """A finished ``config`` comparison with made-up numbers (without, with the plug-in)."""
    results = {}
    for variant, median, extra in zip((WITHOUT, WITH), medians, extra_mb):
        results[variant] = dict(
            median_s=median, min_s=median, extra_peak_bytes=extra * benchmark.MB,
            inputs_bytes=resident_mb * benchmark.MB, method='test', reliable=True, q=171,
            plugin_repr='FSA(lamda=3.0, top_p=0.45, logit_scales=(20.0, 35.0))',
            model_bytes=resident_mb * benchmark.MB,
            model_parts=dict(clip_image=100 * benchmark.MB, vfm=50 * benchmark.MB),
            env=dict(torch='x', threads=2, device=device))
    results[WITH].update(plugin_median_s=plugin_s)
    params = dict(config='/configs/proxyclip_fsa.py', random_weights=True, crop=336, q=171,
                  batch=1, precision=None, device=device, cfg_options=cfg_options)
    return dict(spec=dict(kind='segmentor', params=params), repeat=3,
                variants=[WITHOUT, WITH], results=results)


def test_report_gives_the_plugin_share_and_the_ratios_of_the_measurements():
    # 2.00 s without, 2.10 s with (0.10 s in the plug-in); extra peak 100 → 110 MB over 890 MB
    report = benchmark.segmentor_report(comparison((2.0, 2.1), 0.1, (100, 110), 890), 'title')
    assert 'time inside the plug-in: 0.1000 s per crop (median), 4.8% of the crop' in report
    assert 'with / without the plug-in: latency 1.05x (+5.0%) (medians; 1.05x (+5.0%) on the ' \
           'minima)' in report
    # peak incl. model and crop: (890 + 110) / (890 + 100) = 1.0101
    assert 'peak memory incl. model and crop 1.01x (+1.0%)' in report
    assert 'extra peak alone 1.10x (+10.0%) (+10.0 MB)' in report
    assert re.search(rf'^{WITH}\s+2\.1000\s+2\.1000\s+110\.0\s+1000\.0$', report, re.M), report
    assert not re.search(r'target|MET|MISSED', report), report


def test_one_line_summary_for_the_gpu_session():
    line = benchmark.segmentor_line(comparison((0.0183, 0.0295), 0.0105, (100, 110), 890))
    assert line == ('proxyclip_fsa, its precision, 1 x 336^2 crop, Q=171, cpu: 18.3 ms without '
                    'the plug-in, 29.5 ms with (1.61x (+61.2%)); inside the plug-in 10.5 ms '
                    '(35.6% of the crop); peak memory 1.01x (+1.0%)')


def test_a_config_without_plugin_is_refused_before_any_worker_starts():
    with pytest.raises(benchmark.BenchmarkError, match='proxyclip_vit-b16_dino-b8_voc21 has no '
                                                       'plug-in'):
        benchmark.run_segmentor('proxyclip_vit-b16_dino-b8_voc21', random_weights=True)


@pytest.mark.parametrize('argv, message', [
    (['config', 'proxyclip_vit-b16_dino-b8_voc21'], 'has no plug-in to compare'),
    (['config', 'proxyclip_fsa_no_such_config'], 'is neither a file nor the name of a config'),
    (['plugin', '--config', 'clearclip_fsa_vit-b16_voc21'], 'not a ProxyCLIP config'),
])
def test_cli_user_mistakes_are_one_line_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert str(exit_info.value).startswith('error: ') and message in str(exit_info.value)
    assert capsys.readouterr().out == ''


GRAPHS = {'model.cuda_graphs': True}


@pytest.mark.parametrize('device, noted', [('cuda', True), ('cpu', False)])
def test_reports_say_when_crops_were_replayed_from_cuda_graphs(device, noted):
    measured = comparison((0.004, 0.0042), 0.0, (100, 110), 890, device, GRAPHS)
    report = benchmark.segmentor_report(measured, 'title')
    assert ("cuda_graphs: each crop batch replayed from a CUDA graph, inside which no hook sees "
            "the plug-in (its time reads 0: FSA's share is the latency ratio)" in report) == noted
    line = benchmark.segmentor_line(measured)
    assert line.startswith('proxyclip_fsa, its precision, 1 x 336^2 crop'
                           + (', CUDA graphs, Q=171' if noted else ', Q=171'))
    assert '4.0 ms without the plug-in, 4.2 ms with (1.05x (+5.0%))' in line


def test_reports_name_the_crops_whose_graph_capture_failed():
    """Crops whose capture failed ran eagerly: the one-line summary and the report say so
    instead of presenting the numbers as replays'."""
    measured = comparison((0.0139, 0.0158), 0.0, (100, 110), 890, 'cuda', GRAPHS)
    failure = 'crops of shape (2, 3, 336, 336): Cannot copy between CPU and CUDA tensors'
    measured['results'][WITH]['graph_failures'] = [failure]
    line = benchmark.segmentor_line(measured)
    assert ', 1 x 336^2 crop, CUDA graphs NOT CAPTURED (eager), Q=171' in line
    report = benchmark.segmentor_report(measured, 'title').splitlines()
    assert f'CUDA GRAPH CAPTURE FAILED, so these ran eagerly: {failure}' in report


@torch.no_grad()
def test_the_workload_carries_the_capture_failures_into_its_results(tmp_path):
    workload = tiny_graphed_workload(tmp_path)
    workload.segmentor.crop_graphs = CropGraphs(
        device_types=('cpu',), capture=RecordingCapture(fails_with=RuntimeError('no capture')))
    assert benchmark._workload_info(workload)['graph_failures'] == []
    with pytest.warns(UserWarning, match='capture failed'):
        workload.run(WITH, workload.make_inputs(112))
    assert benchmark._workload_info(workload)['graph_failures'] == [
        'crops of shape (2, 3, 112, 112): no capture']


def tiny_config(tmp_path, base: str, vfm_kwargs: dict = TINY_VFM) -> str:
    """The config ``base`` (a name) with a tiny CLIP and VFM, as a file of its own."""
    config = tmp_path / f'tiny_{base}.py'
    config.write_text(f"_base_ = [{str(resolve_config(base))!r}]\n"
                      f"model = dict(clip=dict(arch={tiny_clip_arch()!r}), templates='plain',\n"
                      f"             vfm=dict(model_kwargs={vfm_kwargs!r}))\n")
    return str(config)


def tiny_graphed_workload(tmp_path, device='cpu'):
    """The crop benchmark's workload over a tiny ProxyCLIP + FSA, CUDA graphs on."""
    return benchmark.SegmentorWorkload(tiny_config(tmp_path, benchmark.PROXYCLIP_CONFIG),
                                       random_weights=True, crop=112, q=5, batch=2,
                                       device=device, cfg_options=GRAPHS)


@torch.no_grad()
def test_the_crop_benchmark_times_graph_replays_one_graph_per_variant(tmp_path):
    """With cuda_graphs on, each variant is timed as replayed from its own graph (the plug-in
    is part of the graph's state), and gives what that variant computes eagerly."""
    workload = tiny_graphed_workload(tmp_path)
    capture = RecordingCapture()
    segmentor = workload.segmentor
    segmentor.crop_graphs = CropGraphs(device_types=('cpu',), capture=capture)
    crops = workload.make_inputs(112)
    for _ in range(2):
        for variant in workload.variants:
            replayed = workload.run(variant, crops)
            segmentor.plugin = workload.plugin if variant == WITH else None
            assert torch.equal(replayed, segmentor.crop_logits(crops)), variant
    assert capture.shapes == [(2, 3, 112, 112)] * 2


def test_the_proxyclip_command_passes_batch_and_config_options(monkeypatch, capsys):
    calls = []

    def run_segmentor(config, **kwargs):
        calls.append(kwargs)
        return comparison((0.004, 0.0042), 0.0, (100, 110), 890, 'cuda', GRAPHS)

    monkeypatch.setattr(benchmark, 'run_segmentor', run_segmentor)
    monkeypatch.setattr(benchmark, 'device_available', lambda device: True)  # a GPU, said
    cli.main(['proxyclip', '--device', 'cuda', '--precision', 'fp16', '--batch', '2',
              '--cfg-options', 'model.cuda_graphs=True'])
    assert calls[0]['batch'] == 2 and calls[0]['cfg_options'] == GRAPHS
    assert calls[0]['precision'] == 'fp16' and calls[0]['crop'] == 336 and calls[0]['q'] == 171
    assert 'cuda_graphs: each crop batch replayed' in capsys.readouterr().out


def test_the_plugin_timer_does_not_synchronise_while_a_graph_is_captured(tmp_path, monkeypatch):
    """A synchronisation inside a capture spoils it: the timer's hooks stand aside then."""
    workload = tiny_graphed_workload(tmp_path)
    syncs = []
    monkeypatch.setattr(benchmark, 'synchronize', syncs.append)
    workload.device = torch.device('cuda')
    for capturing in (True, False):
        monkeypatch.setattr(torch.cuda, 'is_current_stream_capturing', lambda: capturing)
        workload._enter_plugin()
        workload._leave_plugin()
    assert syncs == [torch.device('cuda')] * 2


@needs_cuda
@torch.no_grad()
def test_on_cuda_the_crop_benchmark_captures_both_variants(tmp_path):
    workload = tiny_graphed_workload(tmp_path, device='cuda')
    crops = workload.make_inputs(112)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        for variant in workload.variants * 2:
            workload.run(variant, crops)
    failed = [str(w.message) for w in caught if 'capture failed' in str(w.message)]
    assert not failed and len(workload.segmentor.crop_graphs) == 2, failed


@pytest.mark.parametrize('argv, message', [
    (['proxyclip', '--batch', '0'], "argument --batch: expected a positive integer, got '0'"),
    (['config', 'x', '--crop', 'big'], "argument --crop: expected a positive integer, got 'big'"),
    (['plugin', '--repeat', '0'], "argument --repeat: expected a positive integer, got '0'"),
    (['proxyclip', '--profile', '0'], "argument --profile: expected a positive integer, got '0'"),
    (['proxyclip', '--cfg-options', 'model.cuda_graphs'],
     "--cfg-options: expected KEY=VALUE, got 'model.cuda_graphs'"),
])
def test_cli_bad_arguments_are_usage_errors_before_any_worker(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.strip().endswith(message), err


@torch.no_grad()
def test_the_warm_up_crop_is_the_smallest_the_segmentor_takes(tmp_path):
    """The memory measurement first runs a small warm-up crop: 2 × 2 patches, or as many as the
    segmentor needs. CASS takes a rank-10 SVD of each crop's key graphs, so at least 10 patches
    of CLIP's 16-pixel grid: 4 × 4 patches (64 pixels), on which both variants run, where 3 × 3
    patches are refused."""
    workload = benchmark.SegmentorWorkload(tiny_cass_config(tmp_path), random_weights=True,
                                           crop=112, q=5)
    assert workload.warmup_size == 64
    for variant in workload.variants:
        logits = workload.run(variant, workload.make_inputs(workload.warmup_size))
        assert logits.shape == (1, 5, 64, 64) and torch.isfinite(logits).all()
    with pytest.raises(ValueError, match='at least 10 patches per crop.*this crop has 9'):
        workload.run(WITH, workload.make_inputs(48))
    assert tiny_graphed_workload(tmp_path).warmup_size == 32   # ProxyCLIP: 2 × lcm(16, 8)


def tiny_cass_config(tmp_path) -> str:
    """CASS + FSA with a tiny CLIP and DINO (DINO as wide as CLIP, which CASS needs)."""
    return tiny_config(tmp_path, 'cass_fsa_vit-b16_voc21', dict(TINY_VFM, embed_dim=64))


def test_a_crop_smaller_than_the_segmentor_takes_is_a_one_line_error(tmp_path, monkeypatch):
    """CASS needs 10 patches a crop: a 48-pixel crop (3 × 3 patches of 16) is refused by the
    workload, in the worker, and reaches the command's user as one line, not a traceback."""
    with pytest.raises(benchmark.BenchmarkError) as error:
        benchmark.SegmentorWorkload(tiny_cass_config(tmp_path), random_weights=True, crop=48,
                                    q=5)
    assert str(error.value) == ("--crop 48: CASS needs crops of at least 10 of CLIP's 16x16 "
                                'patches; the crop (48, 48) holds 3x3 (the smallest square crop: '
                                '64)')
    # a worker's user error is raised again in the parent as it was, without its traceback
    context = multiprocessing.get_context('fork')
    with pytest.raises(benchmark.BenchmarkError) as relayed:
        benchmark._in_fresh_process(context, _refuse, 'no such crop')
    assert str(relayed.value) == 'no such crop'
    monkeypatch.setattr(benchmark, 'run_segmentor',
                        lambda *args, **kwargs: _refuse('no such crop'))
    with pytest.raises(SystemExit) as exit_:
        cli.main(['config', 'x'])
    assert exit_.value.code == 'error: no such crop'


def _refuse(message):
    raise benchmark.BenchmarkError(message)
