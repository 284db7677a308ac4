"""The end-to-end benchmark (fsa_seg/analysis/e2e_benchmark.py, ``e2e``): the generated data,
the stage arithmetic, the agreement, the report's numbers, and one whole run of tools/test.py's
path on a tiny ProxyCLIP + FSA (tiny CLIP and VFM through the config) on CPU."""
import contextlib
import io
import json
import re
import statistics

import numpy as np
import pytest
import torch
from PIL import Image

from fsa_seg.analysis import cli, e2e_benchmark
from fsa_seg.analysis.benchmark import BenchmarkError
from fsa_seg.analysis.e2e_benchmark import STAGES, StageClock

from end_to_end import tiny_proxyclip_112


# ---------------------------------------------------------------------------- parts
def test_generated_dataset_has_the_size_and_labels_asked_for(tmp_path):
    e2e_benchmark.make_dataset(tmp_path, 3, (40, 56), num_classes=5)
    images = sorted((tmp_path / 'images').iterdir())
    labels = sorted((tmp_path / 'labels').iterdir())
    assert [p.name for p in images] == ['00000.jpg', '00001.jpg', '00002.jpg']
    assert [p.stem for p in labels] == [p.stem for p in images]
    for image_path, label_path in zip(images, labels):
        with Image.open(image_path) as image, Image.open(label_path) as label:
            assert (image.format, image.mode, image.size) == ('JPEG', 'RGB', (56, 40))
            assert (label.format, label.size) == ('PNG', (56, 40))
            values = set(np.unique(np.asarray(label)).tolist())
        assert values <= {0, 1, 2, 3, 4, 255} and len(values - {255}) > 1


def test_stage_seconds_split_the_model_call_into_stages_that_add_up():
    records = [('model', False, 10.0), ('CLIP trunk', False, 0.5),  # per-image context
               ('crop', False, 6.0), ('VFM', True, 2.0), ('CLIP trunk', True, 1.0),
               ('plug-in', True, 1.5), ('post-processing', False, 0.75),
               ('post-processing', False, 0.25)]
    seconds = e2e_benchmark.stage_seconds(records)
    assert seconds == {'model': 10.0, 'VFM': 2.0, 'CLIP trunk': 1.5, 'last block': 1.5,
                       'plug-in': 1.5, 'post-processing': 1.0, 'other': 2.5}
    assert sum(seconds[stage] for stage in STAGES) == seconds['model']


def test_stage_clock_counts_a_stage_inside_itself_once_and_knows_what_ran_in_a_crop():
    clock = StageClock(torch.device('cpu'))
    with clock.stage('model'):
        with clock.stage('crop'):
            with clock.stage('VFM'):
                with clock.stage('VFM'):
                    pass
        with clock.stage('CLIP trunk'):
            pass
    records = clock.records()
    assert [(name, inside) for name, inside, _ in records] == [
        ('VFM', True), ('crop', False), ('CLIP trunk', False), ('model', False)]
    seconds = dict((name, s) for name, _, s in records)
    assert 0 <= seconds['VFM'] <= seconds['crop'] <= seconds['model']


class Toy:
    def crop_logits(self, crops):
        return crops * 2


def test_probes_time_this_instance_only_and_are_removed_afterwards():
    toy, other = Toy(), Toy()
    clock = StageClock(torch.device('cpu'))
    with e2e_benchmark.probed([(toy, 'crop_logits', 'crop')], clock):
        assert torch.equal(toy.crop_logits(torch.ones(3, 2)), torch.full((3, 2), 2.0))
        other.crop_logits(torch.ones(5, 2))
    assert clock.crops == [3] and [r[0] for r in clock.records()] == ['crop']
    assert 'crop_logits' not in vars(toy) and toy.crop_logits.__func__ is Toy.crop_logits


def test_agreement_counts_equal_labels_and_the_largest_probability_difference():
    probs = torch.tensor([[[0.9, 0.2], [0.5, 0.4]], [[0.1, 0.8], [0.5, 0.6]]])  # (C=2, 2, 2)
    labels = torch.tensor([[0, 1], [0, 1]])
    shifted = probs.clone()
    shifted[:, 1, 1] = torch.tensor([0.65, 0.35])  # one label flips, |Δp| = 0.25
    result = e2e_benchmark.agreement([(probs, labels), (probs, labels)],
                                     [(probs, labels), (shifted, shifted.argmax(0))])
    assert result['pixels'] == 8 and result['equal_labels'] == 7 / 8
    assert result['max_prob_diff'] == pytest.approx(0.25, abs=1e-7)
    with pytest.raises(ValueError, match='1 outputs for 2 reference images'):
        e2e_benchmark.agreement([(probs, labels)] * 2, [(probs, labels)])


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the messages of a CPU machine')
@pytest.mark.parametrize('device, message', [('cuda', 'no CUDA device'),
                                             ('meta', "benchmarks run on 'cpu' or 'cuda")])
def test_devices_the_runner_cannot_use_are_one_line_errors(device, message):
    with pytest.raises(BenchmarkError, match=message):
        e2e_benchmark.run_e2e(device=device)


def fake_result():
    """Two precisions with and without FSA, 10 images each, made-up measurements."""
    def variant(precision, plugin, loop_s, model_s, plugin_s, **agreement):
        stages = dict(zip(STAGES, (0.010, 0.005, 0.002, plugin_s, 0.001, 0.0005)))
        stages['model'] = model_s
        return dict(precision=precision, plugin=plugin, images=10, median_loop_s=loop_s,
                    images_per_s=10 / loop_s, median_data_wait_s=0.05, stages_s=stages,
                    crops_per_batch=[2], **agreement)
    results = {'fp32 -FSA': variant('fp32', False, 0.50, 0.040, 0.0),
               'fp32 +FSA': variant('fp32', True, 0.55, 0.044, 0.004),
               'fp16 -FSA': variant('fp16', False, 0.25, 0.020, 0.0, equal_labels=0.9987,
                                    max_prob_diff=3.1e-3),
               'fp16 +FSA': variant('fp16', True, 0.40, 0.030, 0.010, equal_labels=0.9950,
                                    max_prob_diff=4.2e-3)}
    return dict(config='proxyclip_fsa_vit-b16_dino-b8_voc21', cfg_options=None, images=10,
                size=[375, 500], image_after_pipeline=[336, 448], crop_size=[336, 336],
                windows_per_image=2, crop_batch_size=16, num_classes=21, random_weights=True,
                repeat=3, stage_repeat=10, plugin='FSA(lamda=3.0)', variants=list(results),
                env=dict(torch='x', threads=16, device='cuda:0', device_name='GPU'),
                results=results)


def test_report_rows_and_ratios_are_the_measurements_in_milliseconds_and_quotients():
    report = e2e_benchmark.e2e_report(fake_result())
    # 10 images in 0.40 s: 25 img/s, 40 ms per image; data wait 5 ms; model 30 ms; stages
    assert re.search(r'^fp16 \+FSA\s+25\.00\s+40\.0\s+5\.0\s+30\.0\s+10\.0\s+5\.0\s+2\.0\s+10\.0'
                     r'\s+1\.0\s+0\.5\s+99\.50%\s+4\.2e-03$', report, re.M), report
    assert re.search(r'^fp32 -FSA\s+20\.00\s+50\.0\s+5\.0\s+40\.0\s+.*\s+-\s+-$', report, re.M)
    # with / without: (10/0.55) / (10/0.50) = 0.909, model 0.044 / 0.040 = 1.1, share 4/44
    assert 'fp32, with / without the plug-in: images/s 0.91x, model time 1.10x; the plug-in ' \
           "9.1% of the model's time" in report
    assert 'fp16, with / without the plug-in: images/s 0.62x, model time 1.50x' in report
    assert 'fp16 +FSA / fp32 +FSA: images/s 1.38x' in report  # 25 / 18.18
    assert 'fp16 -FSA / fp32 -FSA: images/s 2.00x' in report
    assert '2 windows of 336x336 per image, in crop batches of [2]' in report
    assert not re.search(r'target|MET|MISSED', report)


def test_a_failed_graph_capture_is_named_in_the_report():
    """Asked for CUDA graphs, crops whose capture failed ran eagerly: the report says which, once
    however many variants saw it, and says nothing of the kind when every capture succeeded."""
    result = fake_result()
    result['cfg_options'] = {'model.cuda_graphs': True}
    assert 'CAPTURE FAILED' not in e2e_benchmark.e2e_report(result)
    failure = 'crops of shape (2, 3, 336, 336): Cannot copy between CPU and CUDA tensors'
    for name in ('fp16 -FSA', 'fp16 +FSA'):
        result['results'][name]['graph_failures'] = [failure]
    lines = e2e_benchmark.e2e_report(result).splitlines()
    assert [line for line in lines if 'CAPTURE FAILED' in line] == [
        f'CUDA GRAPH CAPTURE FAILED, so these ran eagerly: {failure}']


@pytest.mark.parametrize('device, noted', [('cuda:0', True), ('cpu', False)])
def test_the_report_claims_graph_replays_on_cuda_only(device, noted):
    """model.cuda_graphs=True on the CPU runs every crop eagerly: no word of replays there."""
    result = fake_result()
    result['cfg_options'] = {'model.cuda_graphs': True}
    result['env']['device'] = device
    lines = e2e_benchmark.e2e_report(result).splitlines()
    assert ('cuda_graphs: crop batches replayed from CUDA graphs, whose insides no probe sees: '
            "'last block' is then the whole crop (VFM, trunk and plug-in read 0)" in lines) == noted


# ---------------------------------------------------------------------------- a whole run
@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
    """``e2e`` through the command line on a tiny ProxyCLIP + FSA: 2 images, fp32 and fp64,
    112-pixel crops (the generated 375x500 images resized to 112x149: 2 windows each)."""
    folder = tmp_path_factory.mktemp('e2e')
    config = tiny_proxyclip_112(folder)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        result = cli.main(['e2e', '--config', str(config), '--random-weights', '--images', '2',
                           '--precision', 'fp64', 'fp32', '--repeat', '2', '--stage-repeat',
                           '2', '--device', 'cpu', '--json', str(folder / 'e2e.json')])
    return result, out.getvalue(), json.loads((folder / 'e2e.json').read_text())


VARIANTS = ['fp32 -FSA', 'fp32 +FSA', 'fp64 -FSA', 'fp64 +FSA']


def test_tiny_run_measures_each_variant_over_the_generated_images(tiny_run):
    result, _, saved = tiny_run
    assert result['variants'] == VARIANTS and saved['variants'] == VARIANTS
    assert result['image_after_pipeline'] == [112, 149] and result['windows_per_image'] == 2
    for name in VARIANTS:
        r = result['results'][name]
        assert len(r['passes']) == 2 and all(p['images'] == 2 for p in r['passes'])
        assert r['median_loop_s'] == statistics.median(p['loop_s'] for p in r['passes'])
        assert r['images_per_s'] == 2 / r['median_loop_s']
        assert all(p['data_wait_s'] < p['loop_s'] < p['test_s'] for p in r['passes'])
        assert r['crops_per_batch'] == [2]  # both windows of the image in one crop batch
        for run in r['stage_runs']:
            assert sum(run[stage] for stage in STAGES) == pytest.approx(run['model'], abs=1e-9)
            assert run['VFM'] > 0 and run['CLIP trunk'] > 0 and run['post-processing'] > 0
            assert (run['plug-in'] > 0) == name.endswith('+FSA')


def test_tiny_run_fp64_agrees_with_fp32_on_the_same_random_weights(tiny_run):
    result, _, _ = tiny_run
    for name in ('fp64 -FSA', 'fp64 +FSA'):
        r = result['results'][name]
        assert r['pixels'] == 2 * 375 * 500  # probabilities at the original size
        assert r['equal_labels'] >= 0.999  # rounding alone: the same weights at both
        assert 0 < r['max_prob_diff'] < 1e-3
    assert 'equal_labels' not in result['results']['fp32 +FSA']


def test_tiny_run_report_prints_the_measured_numbers(tiny_run):
    result, printed, _ = tiny_run
    for name in VARIANTS:
        r = result['results'][name]
        cells = [f"{r['images_per_s']:.2f}", f"{r['median_loop_s'] / 2 * 1e3:.1f}",
                 f"{r['median_data_wait_s'] / 2 * 1e3:.1f}",
                 *(f"{r['stages_s'][stage] * 1e3:.1f}" for stage in ('model', *STAGES))]
        assert re.search('^' + re.escape(name) + r'\s+' + r'\s+'.join(map(re.escape, cells)),
                         printed, re.M), (name, cells, printed)
    fp32 = [result['results'][name]['images_per_s'] for name in VARIANTS[:2]]
    assert f'fp32, with / without the plug-in: images/s {fp32[1] / fp32[0]:.2f}x' in printed
    assert '2 generated images 375x500' in printed and '2 windows of 112x112' in printed
