"""tools/test.py --resume end to end (tiny models, generated VOC data): a resumed run reports the
metrics of the dataset it runs on now, and applies its own bad-annotation policy."""
import json
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fsa_seg.models.backbones import OpenCLIP, tiny_clip_arch

from end_to_end import (
    DIST_TEST_SH,
    assert_reports_the_iou_of_its_own_predictions,
    dist_test,
    run_test_script,
    tiny_config,
)
from synthetic_data import make_benchmark

SPLIT = 'ImageSets/Segmentation/val.txt'
BAD = 'SegmentationClass/2007_000001.png'


def tiny_voc(tmp_path: Path, images: int) -> tuple:
    """VOC21 data of ``images`` images and a ClearCLIP config over it with a tiny CLIP loaded
    from a file (every process and the hand computation load the same weights)."""
    data_root = make_benchmark('voc21', tmp_path / 'data', sizes=((40, 56), (30, 30)) * 2)
    write_split(data_root, range(images))
    weights = tmp_path / 'tiny_clip.pt'
    torch.save(OpenCLIP(arch=tiny_clip_arch(), random_init=True).model.state_dict(), weights)
    config = tiny_config(tmp_path, 'clearclip/clearclip_vit-b16_voc21.py', data_root,
                         clip_weights=weights)
    return config, data_root


def write_split(data_root: Path, numbers) -> None:
    (data_root / SPLIT).write_text(''.join(f'2007_{n:06d}\n' for n in numbers))


def test_a_resumed_run_counts_only_the_images_of_the_dataset_now(tmp_path, capfd,
                                                                 processed_images):
    """Images 0 and 1 journaled; the split now lists 1, 2, 3: image 0 is left out of the
    metrics (it was counted), 1 is taken, 2 and 3 are scored. Then ``indices`` selects image
    1 alone: the other three journaled images are left out."""
    config, data_root = tiny_voc(tmp_path, images=2)
    args = (config, '--work-dir', tmp_path / 'work', '--allow-partial-split')
    run_test_script(*args)
    write_split(data_root, (1, 2, 3))
    out = tmp_path / 'results.json'
    capfd.readouterr()
    run_test_script(*args, '--resume', '--out', out)
    log = ''.join(capfd.readouterr())
    assert re.search(r'resuming: 1 of the 3 images are scored in \S+; scoring the other 2', log)
    assert ('resuming: 1 journaled images are not in the dataset now (its split or indices '
            'changed): left out of the metrics') in log
    assert processed_images['images'][2:] == ['2007_000002.jpg', '2007_000003.jpg']
    record = json.loads(out.read_text())
    assert record['num_images'] == 3 and record['resumed_images'] == 1
    assert_reports_the_iou_of_its_own_predictions(config, data_root, out, 'voc21')
    run_test_script(*args, '--resume', '--out', out,
                    '--cfg-options', 'test_dataloader.dataset.indices=1')
    assert 'resuming: 3 journaled images are not in the dataset now' in ''.join(
        capfd.readouterr())
    record = json.loads(out.read_text())
    assert record['num_images'] == 1 and record['resumed_images'] == 0   # 1 scored again
    write_split(data_root, (1, ))   # what indices=1 selected: the expectation's images
    assert_reports_the_iou_of_its_own_predictions(config, data_root, out, 'voc21')


def test_two_processes_resume_over_the_dataset_now(tmp_path):
    """As above with two processes resuming (each scores one of images 2 and 3 of the split
    1, 2, 3): rank 0 takes journaled image 1 alone, not image 0, for the whole dataset."""
    config, data_root = tiny_voc(tmp_path, images=2)
    run_test_script(config, '--work-dir', tmp_path / 'work', '--allow-partial-split')
    write_split(data_root, (1, 2, 3))
    out = tmp_path / 'results.json'
    result = dist_test(config, '--work-dir', tmp_path / 'work', '--out', out,
                       '--allow-partial-split', '--resume', entry=DIST_TEST_SH)
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'resuming: 1 journaled images are not in the dataset now' in (result.stdout +
                                                                          result.stderr)
    record = json.loads(out.read_text())
    assert record['num_images'] == 3 and record['resumed_images'] == 1
    assert_reports_the_iou_of_its_own_predictions(config, data_root, out, 'voc21')


def set_values(path: Path, values: dict) -> None:
    label = np.array(Image.open(path))
    for (y, x), value in values.items():
        label[y, x] = value
    Image.fromarray(label).save(path)


def error_line(capfd) -> str:
    error = capfd.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and 'Traceback' not in error, error
    return error


def test_a_bad_annotation_journaled_under_the_flag_meets_the_resumed_runs_policy(
        tmp_path, capfd, processed_images):
    """Image 1's annotation has values 30 and 41; an earlier run under --allow-bad-annotations
    scored images 1 and 2 (not 0: as a process of several leaves its images). Resumed without
    the flag: the error of a new run, before image 0 is scored; with it: the warning again and
    the results of a run that never stopped; after the annotation is fixed: the numbers of the
    fixed data."""
    config, data_root = tiny_voc(tmp_path, images=3)
    original = (data_root / BAD).read_bytes()
    set_values(data_root / BAD, {(0, 0): 30, (1, 1): 41})
    args = (config, '--allow-partial-split')
    work, lenient = ('--work-dir', tmp_path / 'work'), '--allow-bad-annotations'
    run_test_script(*args, *work, lenient, '--cfg-options', 'test_dataloader.dataset.indices=[1,2]')
    capfd.readouterr()
    run_test_script(*args, '--work-dir', tmp_path / 'new', status=1)   # a new run's error
    new_run_error = error_line(capfd)
    assert re.fullmatch(r'tools/test\.py: error: \S+2007_000001\.png: label values 30, 41 lie '
                        r'outside the 21 classes .*--allow-bad-annotations.*', new_run_error)
    scored = len(processed_images['images'])
    run_test_script(*args, *work, '--resume', status=1)
    assert error_line(capfd) == new_run_error
    assert processed_images['images'][scored:] == []          # image 0 not scored
    out, uninterrupted = tmp_path / 'results.json', tmp_path / 'uninterrupted.json'
    run_test_script(*args, *work, '--resume', lenient, '--out', out)
    log = ''.join(capfd.readouterr())
    assert "1 of the journaled images had a bad annotation: scored again first" in log
    assert re.search(r'2007_000001\.png: label values 30, 41 lie outside the 21 classes.*; 2 '
                     r'pixels ignored \(--allow-bad-annotations\)', log)
    run_test_script(*args, '--work-dir', tmp_path / 'whole', lenient, '--out', uninterrupted)
    record, whole = json.loads(out.read_text()), json.loads(uninterrupted.read_text())
    assert record['bad_annotations'] == dict(policy='warn', count=1, files=[dict(
        file=str(data_root / BAD), problem='values', values=[30, 41], pixels=2)])
    assert record['num_images'] == 3 and record['resumed_images'] == 1   # image 2
    assert record['metrics'] == whole['metrics']
    assert json.dumps(record['per_class']) == json.dumps(whole['per_class'])   # NaN as NaN
    (data_root / BAD).write_bytes(original)
    run_test_script(*args, *work, '--resume', '--out', out)
    record = json.loads(out.read_text())
    assert record['bad_annotations'] == dict(policy='error', count=0, files=[])
    assert record['num_images'] == 3 and record['resumed_images'] == 2   # images 0 and 2
    assert_reports_the_iou_of_its_own_predictions(config, data_root, out, 'voc21')
