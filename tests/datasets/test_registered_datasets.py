"""The two datasets fsa_seg adds to mmseg's registry, and the split-size check."""
from pathlib import Path

import numpy as np
import pytest
from mmengine import Config
from mmengine.registry import init_default_scope
from mmseg.datasets import COCOStuffDataset, PascalVOCDataset
from mmseg.registry import DATASETS

from fsa_seg.datasets import COCOObjectDataset, PascalVOC20Dataset, check_split_size

from synthetic_data import DEFAULT_SIZES, make_benchmark

DATASET_CONFIGS = Path(__file__).resolve().parents[2] / 'configs' / '_base_' / 'datasets'


def build(name: str, data_root: Path):
    init_default_scope('mmseg')
    dataset = Config.fromfile(DATASET_CONFIGS / f'{name}.py').test_dataloader.dataset
    dataset.data_root = str(data_root)
    return DATASETS.build(dataset)


def test_registered_in_mmseg_registry():
    assert DATASETS.get('PascalVOC20Dataset') is PascalVOC20Dataset
    assert DATASETS.get('COCOObjectDataset') is COCOObjectDataset


def test_class_lists():
    voc20 = PascalVOC20Dataset.METAINFO
    assert voc20['classes'] == PascalVOCDataset.METAINFO['classes'][1:]
    assert len(voc20['classes']) == len(voc20['palette']) == 20
    coco = COCOObjectDataset.METAINFO
    assert len(coco['classes']) == len(coco['palette']) == 81
    assert coco['classes'][:3] == ('background', 'person', 'bicycle')
    assert coco['classes'][-1] == 'toothbrush'
    assert coco['classes'][1:] == COCOStuffDataset.METAINFO['classes'][:80]


@pytest.mark.parametrize('name, dataset_class, num_classes, max_label', [
    ('voc20', PascalVOC20Dataset, 20, 19),
    ('coco_object', COCOObjectDataset, 81, 80),
])
def test_loads_generated_layout(name, dataset_class, num_classes, max_label, tmp_path):
    dataset = build(name, make_benchmark(name, tmp_path))
    assert type(dataset) is dataset_class
    assert len(dataset) == len(DEFAULT_SIZES)  # the training decoy is not in the split
    assert len(dataset.metainfo['classes']) == num_classes
    labels = np.unique(np.concatenate(
        [dataset[i]['data_samples'].gt_sem_seg.data.numpy().ravel() for i in range(len(dataset))]))
    assert labels.max() <= 255 and labels[labels != 255].max() == max_label


def test_voc20_ignores_background(tmp_path):
    raw = np.array([[0, 1], [20, 255]], dtype=np.uint8)
    dataset = build('voc20', make_benchmark('voc20', tmp_path, labels=[raw]))
    gt = dataset[0]['data_samples'].gt_sem_seg.data[0].numpy()
    np.testing.assert_array_equal(gt, [[255, 0], [19, 255]])


def test_coco_object_keeps_background_as_class_0(tmp_path):
    raw = np.array([[0, 1], [80, 0]], dtype=np.uint8)
    dataset = build('coco_object', make_benchmark('coco_object', tmp_path, labels=[raw]))
    np.testing.assert_array_equal(dataset[0]['data_samples'].gt_sem_seg.data[0].numpy(), raw)


def test_check_split_size():
    assert check_split_size(1449, 1449, 'voc21') is None
    message = check_split_size(12, 1449, 'voc21')
    assert 'voc21' in message and '12' in message and '1449' in message and 'fewer' in message
    assert 'more' in check_split_size(5001, 5000, 'coco_object')


def test_check_split_size_of_a_subset_chosen_with_indices():
    """Only all the official images, each evaluated, match: a subset of them does not, nor does
    a subset of the official size picked from a wrong split."""
    assert check_split_size(1449, 1449, 'voc21', evaluated=1449) is None
    assert check_split_size(1449, 1449, 'voc21', evaluated=1) == (
        'voc21: test_dataloader.dataset.indices selects 1 of the 1449 images of the official '
        'evaluation split, so the mIoU is not comparable with published numbers.')
    assert check_split_size(1450, 1449, 'voc21', evaluated=1449).startswith(
        'voc21: found 1450 images (test_dataloader.dataset.indices selects 1449 of them), more '
        'than the 1449 of the official evaluation split')
