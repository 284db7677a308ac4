"""The eight dataset configs encode the FSA/ProxyCLIP evaluation protocol."""
from pathlib import Path

import numpy as np
import pytest
from mmengine import Config
from mmengine.registry import init_default_scope
from mmseg.registry import DATASETS, TRANSFORMS

import fsa_seg.datasets  # noqa: F401  (registers PascalVOC20Dataset, COCOObjectDataset)
from fsa_seg.experiments import MATRIX
from fsa_seg.models.text import load_vocabulary

REPO = Path(__file__).resolve().parents[2]
DATASET_CONFIGS = REPO / 'configs' / '_base_' / 'datasets'
CLASS_NAMES = REPO / 'fsa_seg' / 'class_names'

# The paper's protocol for its eight benchmarks (an expectation written out from the FSA and
# ProxyCLIP protocol): (classes, short side, slide crop, slide stride, prob_thd, split size).
PAPER_PROTOCOL = {
    'voc21': (21, 336, 336, 112, 0.2, 1449),
    'context60': (60, 336, 336, 112, 0.14, 5105),
    'coco_object': (81, 336, 336, 112, 0.3, 5000),
    'voc20': (20, 336, 336, 112, 0.0, 1449),
    'context59': (59, 336, 336, 112, 0.0, 5105),
    'coco_stuff164k': (171, 336, 336, 112, 0.0, 5000),
    'cityscapes': (19, 448, 224, 80, 0.0, 500),
    'ade20k': (150, 448, 336, 112, 0.0, 2000),
}


def load(name: str) -> Config:
    return Config.fromfile(DATASET_CONFIGS / f'{name}.py')


@pytest.mark.parametrize('name', [b.name for b in MATRIX.benchmarks])
def test_every_benchmark_config_is_complete(name):
    """What every registered benchmark's base must hold, whatever its protocol."""
    cfg = load(name)
    assert isinstance(cfg.split_size, int) and cfg.split_size > 0
    dataset = cfg.test_dataloader.dataset
    assert dataset.type == cfg.dataset_type and dataset.data_root == cfg.data_root
    classes = DATASETS.get(dataset.type).METAINFO['classes']
    assert len(load_vocabulary(cfg.protocol.vocabulary)) == len(classes)
    steps = [step.type for step in dataset.pipeline]
    assert steps.index('Resize') < steps.index('LoadAnnotations')  # GT keeps its size
    assert cfg.protocol.test_cfg.mode in ('slide', 'whole')


@pytest.mark.parametrize('name', PAPER_PROTOCOL)
def test_config_follows_protocol(name):
    classes, short_side, crop, stride, prob_thd, split_size = PAPER_PROTOCOL[name]
    cfg = load(name)
    assert cfg.split_size == split_size
    assert cfg.protocol.vocabulary == name
    assert cfg.protocol.prob_thd == prob_thd
    assert cfg.protocol.test_cfg == dict(mode='slide', crop_size=(crop, crop),
                                         stride=(stride, stride))
    dataset = cfg.test_dataloader.dataset
    assert dataset.type == cfg.dataset_type and dataset.data_root == cfg.data_root
    assert len(DATASETS.get(dataset.type).METAINFO['classes']) == classes
    steps = [step.type for step in dataset.pipeline]
    assert steps.index('Resize') < steps.index('LoadAnnotations')  # GT keeps its size
    resize = dataset.pipeline[steps.index('Resize')]
    assert resize.scale == (2048, short_side) and resize.keep_ratio


@pytest.mark.parametrize('name', PAPER_PROTOCOL)
def test_vocabulary_has_one_line_per_class(name):
    lines = (CLASS_NAMES / f'{name}.txt').read_text(encoding='utf-8').splitlines()
    assert len(lines) == PAPER_PROTOCOL[name][0]
    assert all(line.strip() and all(s.strip() for s in line.split(';')) for line in lines)


def test_background_vocabularies():
    """Context60 names background literally; COCO-Object describes it with stuff words."""
    assert (CLASS_NAMES / 'context60.txt').read_text().splitlines()[0] == 'background'
    coco_background = (CLASS_NAMES / 'coco_object.txt').read_text().splitlines()[0]
    assert len(coco_background.split('; ')) == 17 and 'person' not in coco_background


@pytest.mark.parametrize('short_side', [336, 448])
@pytest.mark.parametrize('size', [(375, 500), (500, 375), (333, 500), (480, 640), (30, 30),
                                  (1024, 2048), (300, 1200)])
def test_resize_gives_short_side(short_side, size):
    """``Resize(scale=(2048, S), keep_ratio=True)`` scales the short side to S (up or down)
    unless the long side would pass 2048: aspect ratios above 2048 / S (6.1 for 336, 4.6 for
    448)."""
    init_default_scope('mmseg')
    resize = TRANSFORMS.build(dict(type='Resize', scale=(2048, short_side), keep_ratio=True))
    out = resize(dict(img=np.zeros((*size, 3), dtype=np.uint8)))['img'].shape[:2]
    assert min(out) == short_side and max(out) <= 2048
    assert abs(out[0] / out[1] - size[0] / size[1]) < 0.01


def test_resize_caps_long_side_for_panoramas():
    init_default_scope('mmseg')
    resize = TRANSFORMS.build(dict(type='Resize', scale=(2048, 336), keep_ratio=True))
    out = resize(dict(img=np.zeros((200, 1400, 3), dtype=np.uint8)))['img'].shape[:2]
    assert out == (293, 2048)  # ratio 7 > 2048 / 336: the 2048 cap wins
