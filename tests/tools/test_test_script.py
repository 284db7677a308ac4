"""tools/test.py end to end on generated datasets with tiny random models."""
import json
import os
import re
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from fsa_seg import cli
from fsa_seg.experiments import MATRIX
from fsa_seg.models.backbones import OpenCLIP, tiny_clip_arch
from fsa_seg.models.text import load_vocabulary

from end_to_end import (
    DIST_TEST_SH,
    REPO,
    TINY_ARCH,
    assert_reports_the_iou_of_its_own_predictions,
    dist_test,
    run_test_script,
    tiny_config,
)
from synthetic_data import LAYOUTS, make_benchmark


def test_voc21_end_to_end_in_a_fresh_process(tmp_path):
    data_root = make_benchmark('voc21', tmp_path / 'data')
    config = tiny_config(tmp_path, 'clearclip/clearclip_vit-b16_voc21.py', data_root)
    out = tmp_path / 'results.json'
    result = subprocess.run(
        [sys.executable, 'tools/test.py', str(config), '--work-dir', str(tmp_path / 'work'),
         '--out', str(out), '--allow-partial-split',
         '--cfg-options', 'default_hooks.logger.interval=1'],
        cwd=REPO, capture_output=True, text=True, timeout=600,
        env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert 'mIoU' in log and 'per class results' in log
    assert 'Iter(test) [1/3]' in log and 'eta: ' in log  # progress with an ETA
    results = json.loads(out.read_text())
    assert results['num_images'] == 3 and results['complete'] is False
    assert set(results['metrics']) >= {'aAcc', 'mIoU', 'mAcc'}
    assert len(results['per_class']) == 21 and 'aeroplane' in results['per_class']


@pytest.mark.parametrize('config,proxy', [
    ('vanilla_clip/vanilla_clip_fsa_vit-b16_voc21.py', False),
    ('maskclip/maskclip_fsa_vit-b16_voc21.py', False),
    ('sclip/sclip_fsa_vit-b16_voc21.py', False),
    ('clearclip/clearclip_fsa_vit-b16_voc21.py', False),
    ('naclip/naclip_fsa_vit-b16_voc21.py', False),
    ('proxyclip/proxyclip_vit-b16_dino-b16_voc21.py', True),
    ('proxyclip/proxyclip_fsa_vit-b16_dino-b16_voc21.py', True),
])
def test_every_baseline_with_fsa_and_proxyclip_run_end_to_end(tmp_path, config, proxy):
    data_root = make_benchmark('voc21', tmp_path / 'data', sizes=((40, 56), (30, 30)))
    out = tmp_path / 'results.json'
    config = tiny_config(tmp_path, config, data_root, proxy)
    run_test_script(config, '--work-dir', tmp_path / 'work', '--out', out,
                    '--allow-partial-split', '--cfg-options', 'randomness.seed=0')
    assert_reports_the_iou_of_its_own_predictions(config, data_root, out, 'voc21')


def test_a_config_name_works_as_well_as_a_path():
    from fsa_seg.apis import load_test_config
    name = 'clearclip_fsa_vit-b16_voc21'
    cfg = load_test_config(name)
    assert cfg.model.type == 'ClearCLIP'
    assert cfg.filename.endswith(f'{name}.py')
    assert cfg.work_dir == os.path.join('./work_dirs', name)


def test_missing_dataset_folder_says_where_and_how(tmp_path, capsys):
    config = tiny_config(tmp_path, 'clearclip/clearclip_vit-b16_voc21.py',
                         tmp_path / 'nowhere' / 'VOC2012')
    assert cli.test_main([str(config), '--work-dir', str(tmp_path / 'work')], 'fsa-seg test') == 1
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and 'Traceback' not in error
    assert re.search(r'^fsa-seg test: error: .*nowhere/VOC2012/JPEGImages.*data/README.md', error)


def test_incomplete_dataset_is_refused_without_the_flag(tmp_path, capsys):
    data_root = make_benchmark('voc21', tmp_path / 'data', sizes=((30, 30), ))
    config = tiny_config(tmp_path, 'clearclip/clearclip_vit-b16_voc21.py', data_root)
    assert cli.test_main([str(config), '--work-dir', str(tmp_path / 'work')], 'fsa-seg test') == 1
    assert re.search('found 1 images.*1449.*--allow-partial-split', capsys.readouterr().err)


def test_two_processes_give_the_same_metrics_as_one_and_draw_every_image(tmp_path, capfd,
                                                                         processed_images):
    data_root = make_benchmark('voc21', tmp_path / 'data', sizes=((40, 56), (30, 30), (36, 28)))
    weights = tmp_path / 'tiny_clip.pt'  # every process loads the same weights
    torch.save(OpenCLIP(arch=tiny_clip_arch(), random_init=True).model.state_dict(), weights)
    config = tiny_config(tmp_path, 'clearclip/clearclip_vit-b16_voc21.py', data_root,
                         clip_weights=weights)
    single, double = tmp_path / 'single.json', tmp_path / 'double.json'
    run_test_script(config, '--work-dir', tmp_path / 'w1', '--out', single,
                    '--allow-partial-split')
    show_dir = tmp_path / 'show'
    result = dist_test(config, '--work-dir', tmp_path / 'w2', '--out', double,
                       '--allow-partial-split', '--show-dir', show_dir, entry=DIST_TEST_SH)
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = json.loads(single.read_text()), json.loads(double.read_text())
    assert two['num_images'] == one['num_images'] == 3
    assert two['metrics'] == pytest.approx(one['metrics'], abs=1e-6)
    for name, metrics in one['per_class'].items():
        assert two['per_class'][name] == pytest.approx(metrics, nan_ok=True), name
    # rank 0 draws its own image and the ones rank 1 gathered to it: all three
    drawn = sorted(path.name for path in show_dir.rglob('*.png'))
    assert drawn == ['test_2007_000000.jpg_0.png', 'test_2007_000001.jpg_0.png',
                     'test_2007_000002.jpg_0.png'], drawn
    # one process resumes from both processes' journals: all scored, the last image again
    resumed = tmp_path / 'resumed.json'
    capfd.readouterr()
    run_test_script(config, '--work-dir', tmp_path / 'w2', '--out', resumed,
                    '--allow-partial-split', '--resume')
    log = ''.join(capfd.readouterr())
    assert re.search(r'resuming: 3 of the 3 images are scored in .*; scoring the last one again '
                     'to run the evaluation', log), log[-3000:]
    assert processed_images['images'][-1:] == ['2007_000002.jpg']
    assert len(processed_images['images']) == 4   # 3 in the single run, 1 resumed
    again = json.loads(resumed.read_text())
    assert again['num_images'] == 3 and again['metrics'] == two['metrics']
    assert json.dumps(again['per_class']) == json.dumps(two['per_class'])   # NaN as NaN
    # and two processes resume too
    result = dist_test(config, '--work-dir', tmp_path / 'w2', '--out', resumed,
                       '--allow-partial-split', '--resume', entry=DIST_TEST_SH)
    assert result.returncode == 0, result.stderr[-3000:]
    again = json.loads(resumed.read_text())
    assert again['resumed_images'] == 2 and again['metrics'] == two['metrics']


def test_a_batch_of_images_of_several_sizes_gives_the_numbers_of_one_at_a_time(tmp_path):
    """mmseg's data preprocessor refuses a test batch of several image sizes; ours pads it, and
    each image is still segmented on its own area."""
    data_root = make_benchmark('voc21', tmp_path / 'data', sizes=((40, 56), (30, 30), (36, 28)))
    config = tiny_config(tmp_path, 'clearclip/clearclip_vit-b16_voc21.py', data_root)
    results = {}
    for batch_size in (1, 3):
        out = tmp_path / f'batch{batch_size}.json'
        run_test_script(config, '--work-dir', tmp_path / f'work{batch_size}', '--out', out,
                        '--allow-partial-split', '--cfg-options',
                        f'test_dataloader.batch_size={batch_size}')
        results[batch_size] = json.loads(out.read_text())
    assert results[3]['num_images'] == 3
    assert results[3]['metrics'] == pytest.approx(results[1]['metrics'], abs=1e-9)
    for name, metrics in results[1]['per_class'].items():
        assert results[3]['per_class'][name] == pytest.approx(metrics, nan_ok=True), name


@pytest.mark.parametrize('dataset', [b.name for b in MATRIX.benchmarks])
def test_each_benchmark_config_runs(tmp_path, dataset):
    if dataset not in LAYOUTS:
        pytest.skip(f'no synthetic layout for {dataset}: add one to tests/synthetic_data.py')
    data_root = make_benchmark(dataset, tmp_path / 'data', sizes=((40, 56), (30, 30)))
    out = tmp_path / 'results.json'
    config = tiny_config(tmp_path, f'sclip/sclip_vit-b16_{dataset}.py', data_root)
    run_test_script(config, '--work-dir', tmp_path / 'work', '--out', out,
                    '--allow-partial-split')
    results = json.loads(out.read_text())
    classes = len(load_vocabulary(dataset))
    assert results['num_images'] == 2 and len(results['per_class']) == classes


def test_show_dir_saves_prediction_beside_ground_truth(tmp_path):
    data_root = make_benchmark('voc21', tmp_path / 'data', sizes=((40, 56), (30, 30)))
    config = tiny_config(tmp_path, 'clearclip/clearclip_vit-b16_voc21.py', data_root)
    show_dir = tmp_path / 'show'
    run_test_script(config, '--work-dir', tmp_path / 'work', '--show-dir', show_dir,
                    '--allow-partial-split')
    drawn = sorted(show_dir.rglob('*.png'))
    assert len(drawn) == 2
    from PIL import Image
    width, height = Image.open(drawn[0]).size
    # ground truth and prediction side by side at the original size (one of 40x56, 30x30)
    assert (height, width) in ((40, 112), (30, 60))


TINY_DINO_FOR_CASS = ("dict(_delete_=True, type='TimmVFM', name='dino_vitb8', random_init=True, "
                      "model_kwargs=dict(embed_dim=64, depth=1, num_heads=4))")  # CLIP's width


def test_cass_with_fsa_end_to_end_scores_its_own_predictions(tmp_path):
    """CASS + FSA through tools/test.py (its own protocol: VOC20, 224 crops)."""
    data_root = make_benchmark('voc20', tmp_path / 'data', sizes=((64, 80), (72, 64)))
    config = tiny_config(tmp_path, 'cass/cass_fsa_vit-b16_voc20.py', data_root)
    config.write_text(config.read_text().replace(
        'model = dict(clip=', f'model = dict(vfm={TINY_DINO_FOR_CASS}, clip='))
    out = tmp_path / 'results.json'
    run_test_script(config, '--work-dir', tmp_path / 'work', '--out', out,
                    '--allow-partial-split', '--cfg-options', 'randomness.seed=0')
    assert_reports_the_iou_of_its_own_predictions(config, data_root, out, 'voc20')


def test_a_config_on_mmseg_own_bases_runs_as_it_is(tmp_path):
    """mmseg's dataset and runtime bases (through mmseg::, which needs pkg_resources or our
    stand-in) carry training and validation parts; a test run needs no manual Nones."""
    data_root = make_benchmark('voc21', tmp_path / 'data', sizes=((40, 56), (30, 30)))
    config = tmp_path / 'on_mmseg_bases.py'
    config.write_text(
        "_base_ = ['mmseg::_base_/datasets/pascal_voc12.py', "
        "'mmseg::_base_/default_runtime.py']\n"
        "custom_imports = dict(imports=['fsa_seg'], allow_failed_imports=False)\n"
        f"model = dict(type='ClearCLIP', clip=dict(random_init=True, arch={TINY_ARCH}),\n"
        "             vocabulary='voc21', templates='plain',\n"
        "             test_cfg=dict(mode='slide', crop_size=(224, 224), stride=(112, 112)))\n"
        'test_dataloader = dict(num_workers=0, persistent_workers=False,\n'
        f"                       dataset=dict(data_root='{data_root}'))\n")
    out = tmp_path / 'results.json'
    run_test_script(config, '--work-dir', tmp_path / 'work', '--out', out)
    results = json.loads(out.read_text())
    assert results['num_images'] == 2 and len(results['per_class']) == 21  # IoUMetric kept


def test_undefined_predictions_are_named_in_the_log_and_listed_in_the_results(tmp_path, capfd):
    """ProxyCLIP with β = 1e6: mean(S) = ‖Σ f_i‖² / N² exceeds 1/β unless the VFM features sum
    to zero, so every crop's proxy attention is masked entirely and every pixel is undefined."""
    data_root = make_benchmark('voc21', tmp_path / 'data', sizes=((40, 56), (30, 30)))
    config = tiny_config(tmp_path, 'proxyclip/proxyclip_vit-b16_dino-b16_voc21.py', data_root,
                         proxy=True)
    out = tmp_path / 'results.json'
    run_test_script(config, '--work-dir', tmp_path / 'work', '--out', out,
                    '--allow-partial-split', '--cfg-options', 'model.beta=1e6')
    log = ''.join(capfd.readouterr())
    record = json.loads(out.read_text())['undefined_predictions']
    assert record['count'] == 2 and sorted(e['pixels'] for e in record['files']) == [900, 2240]
    for entry in record['files']:
        assert f"{entry['pixels']} of the {entry['pixels']} pixels of {entry['file']}" in log
    assert '1/beta = 1e-06' in log and '2 of the scored images had pixels (3140 in all)' in log


def test_an_interrupted_evaluation_resumes_where_it_stopped(tmp_path, capfd, processed_images):
    """Ctrl-C after two images: they stay in the work dir's journal; --resume scores only the
    third, and reports the IoU of all three images' own predictions (computed by hand)."""
    data_root = make_benchmark('voc21', tmp_path / 'data',
                               sizes=((40, 56), (30, 30), (36, 44)))
    config = tiny_config(tmp_path, 'clearclip/clearclip_fsa_vit-b16_voc21.py', data_root)
    out = tmp_path / 'results.json'
    args = (config, '--work-dir', tmp_path / 'work', '--out', out, '--allow-partial-split')
    processed_images['stop_after'] = 2
    run_test_script(*args, status=130)
    assert not out.exists()
    assert 'run again with --resume to score only the others' in ''.join(capfd.readouterr())
    run_test_script(*args, '--resume')
    assert processed_images['images'] == ['2007_000000.jpg', '2007_000001.jpg',
                                          '2007_000002.jpg']
    assert 'resuming: 2 of the 3 images are scored' in ''.join(capfd.readouterr())
    record = json.loads(out.read_text())
    assert record['num_images'] == 3 and record['resumed_images'] == 2
    assert_reports_the_iou_of_its_own_predictions(config, data_root, out, 'voc21')


def test_resuming_under_other_settings_is_refused_in_one_line(tmp_path, capfd,
                                                              processed_images):
    data_root = make_benchmark('voc21', tmp_path / 'data', sizes=((40, 56), (30, 30)))
    config = tiny_config(tmp_path, 'clearclip/clearclip_vit-b16_voc21.py', data_root)
    args = (config, '--work-dir', tmp_path / 'work', '--allow-partial-split')
    processed_images['stop_after'] = 1
    run_test_script(*args, status=130)
    capfd.readouterr()
    run_test_script(*args, '--resume', '--cfg-options', 'model.prob_thd=0.5', status=1)
    error = capfd.readouterr().err.strip()
    assert re.fullmatch(r'tools/test\.py: error: \S+work holds journals of other settings only '
                        r'\(changed: model\.prob_thd\); leave out --resume to start again, or '
                        r'give another --work-dir', error), error
    assert processed_images['images'] == ['2007_000000.jpg']   # nothing run


def test_random_weights_are_loud_seeded_and_recorded(tmp_path, capfd):
    """--random-weights switches the config's CLIP (here: a weights file) to random weights,
    warns, and seeds them: two runs give the same numbers."""
    data_root = make_benchmark('voc21', tmp_path / 'data', sizes=((40, 56), (30, 30)))
    weights = tmp_path / 'tiny_clip.pt'
    torch.save(OpenCLIP(arch=tiny_clip_arch(), random_init=True).model.state_dict(), weights)
    config = tiny_config(tmp_path, 'clearclip/clearclip_fsa_vit-b16_voc21.py', data_root,
                         clip_weights=weights)
    runs = []
    for run in ('a', 'b'):
        out = tmp_path / f'{run}.json'
        torch.manual_seed(int.from_bytes(run.encode(), 'little'))  # what came before: no matter
        run_test_script(config, '--work-dir', tmp_path / run, '--out', out,
                        '--allow-partial-split', '--random-weights')
        runs.append(json.loads(out.read_text()))
        assert 'RANDOM WEIGHTS' in capfd.readouterr().out
    assert runs[0]['metrics'] == runs[1]['metrics'] and runs[0]['per_class'] == runs[1]['per_class']
    assert runs[0]['random_weights'] is True and runs[0]['settings']['seed'] == 0
    clip = runs[0]['settings']['model']['clip']
    assert clip['random_init'] is True and 'pretrained' not in clip


def test_compare_reads_what_test_writes(tmp_path, capsys):
    data_root = make_benchmark('voc21', tmp_path / 'data', sizes=((30, 30), ))
    config = tiny_config(tmp_path, 'clearclip/clearclip_fsa_vit-b16_voc21.py', data_root)
    out = tmp_path / 'results.json'
    run_test_script(config, '--work-dir', tmp_path / 'work', '--out', out,
                    '--allow-partial-split')
    capsys.readouterr()
    assert cli.main(['compare', str(out)]) == 0
    text = capsys.readouterr().out
    assert 'ClearCLIP + FSA, CLIP custom, voc21' in text  # a tiny custom CLIP: no row matches
    assert 'RANDOM WEIGHTS: not comparable; partial split: not comparable' in text
    assert 'no published number for this setting' in text


def test_precision_option_runs_every_part_in_it(tmp_path):
    """--precision bf16: CLIP and the VFM (which follows CLIP's) compute in bf16, as the results
    JSON records; labels agree with the fp32 run on almost every pixel."""
    data_root = make_benchmark('voc21', tmp_path / 'data', sizes=((40, 56), (30, 30)))
    config = tiny_config(tmp_path, 'proxyclip/proxyclip_fsa_vit-b16_dino-b16_voc21.py',
                         data_root, proxy=True)
    runs = {}
    for precision in ('fp32', 'bf16'):
        out = tmp_path / f'{precision}.json'
        run_test_script(config, '--work-dir', tmp_path / precision, '--out', out,
                        '--allow-partial-split', '--precision', precision,
                        '--cfg-options', 'randomness.seed=0')
        runs[precision] = json.loads(out.read_text())
    dtypes = runs['bf16']['settings']['model_dtypes']
    assert dtypes['clip'] == dtypes['vfm'] == 'torch.bfloat16'
    assert runs['fp32']['settings']['model_dtypes']['vfm'] == 'torch.float32'
    assert runs['bf16']['metrics']['aAcc'] == pytest.approx(runs['fp32']['metrics']['aAcc'],
                                                            abs=5.0)


def test_a_process_that_stops_ends_dist_test_in_one_line_each(tmp_path):
    """Rank 1 meets an annotation of the wrong size (images 1, 3, 5 are its): it says so; rank 0,
    left alone in a collective, says it lost the others; the launcher names both ranks. And a
    rendezvous port in use is one line too. No traceback anywhere."""
    data_root = make_benchmark('voc21', tmp_path / 'data', sizes=((40, 56), ) * 6)
    bad = data_root / 'SegmentationClass' / '2007_000005.png'
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(bad)
    config = tiny_config(tmp_path, 'clearclip/clearclip_vit-b16_voc21.py', data_root)
    result = dist_test(config, '--work-dir', tmp_path / 'work', '--allow-partial-split')
    assert result.returncode == 1 and 'Traceback' not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if ': error: ' in line]
    # rank 0 either meets the failed collective and says so, or the launcher stops it first
    annotation, *lost, launcher = errors
    assert re.fullmatch(r'fsa-seg test: error: .*2007_000005.png: annotation is 10x10 \(HxW\) '
                        r'but its image .* is 40x56\..*', annotation), errors
    assert all(line.startswith('fsa-seg test: error: lost the other processes (')
               for line in lost) and len(lost) <= 1, errors
    assert re.fullmatch(r'fsa-seg dist-test: error: process\(es\) of rank (0, )?1 failed '
                        r'\(their messages are above\)', launcher), errors
    with socket.socket() as taken:
        taken.bind(('127.0.0.1', 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = dist_test(config, '--work-dir', tmp_path / 'work', port=port)
    assert result.returncode == 1 and 'Traceback' not in result.stderr, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1].startswith(
        f'fsa-seg dist-test: error: the processes cannot meet at 127.0.0.1:{port} (')


def test_ctrl_c_stops_dist_test_in_one_line_and_resume_goes_on(tmp_path):
    """SIGINT to the terminal's process group once the first batch is logged: no traceback, the
    launcher says it was interrupted, exit status 130; --resume then scores the rest."""
    data_root = make_benchmark('voc21', tmp_path / 'data', sizes=((200, 300), ) * 40)
    config = tiny_config(tmp_path, 'clearclip/clearclip_vit-b16_voc21.py', data_root)
    args = ('--work-dir', tmp_path / 'work', '--allow-partial-split', '--out',
            tmp_path / 'results.json', '--cfg-options', 'default_hooks.logger.interval=1')
    run = dist_test(config, *args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                    start_new_session=True)
    lines = []
    for line in run.stdout:
        lines.append(line)
        if 'Iter(test) [ 1/20]' in line:
            os.killpg(run.pid, signal.SIGINT)
            break
    output = ''.join(lines) + run.communicate(timeout=300)[0]
    assert run.returncode == 130 and 'Traceback' not in output, output[-3000:]
    # each process says it was interrupted, unless the launcher stopped it first
    said = [line for line in output.splitlines() if line.startswith('fsa-seg test: ')]
    assert all(line == 'fsa-seg test: interrupted'
               or line.startswith('fsa-seg test: error: lost the other processes (')
               for line in said) and len(said) <= 2, said
    assert output.strip().splitlines()[-1] == ('fsa-seg dist-test: interrupted (SIGINT); the '
                                               'same command with --resume goes on')
    assert not (tmp_path / 'results.json').exists()
    result = dist_test(config, *args, '--resume')
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / 'results.json').read_text())['num_images'] == 40
